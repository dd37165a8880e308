package dashboard

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/storage"
)

// queuePerPage is how many steps a page of the queue shows.
const queuePerPage = 50

// queueRoutes serves /queue: queued and running steps by system. Hydra's /status
// and /queue-summary lead here, its /machines to /agents.
func (d *Dashboard) queueRoutes(r chi.Router) {
	r.Get("/queue", d.queue)
	for _, old := range []string{"/status", "/queue-summary"} {
		r.Get(old, permanent("/queue"))
	}
	r.Get("/machines", permanent("/agents"))
}

// permanent redirects (301) to to, keeping the query.
func permanent(to string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		u := url.URL{Path: to, RawQuery: r.URL.RawQuery}
		http.Redirect(w, r, u.String(), http.StatusMovedPermanently)
	}
}

// queueGroup is one system's steps on a page of the queue.
type queueGroup struct {
	System          string
	Queued, Running int64
	Steps           []queueRow
}

// queueRow is a step with its derivation's name for reading.
type queueRow struct {
	storage.QueueStep
	Name string
}

// drvName is a store path without its directory and hash ("hello-2.12.drv").
func drvName(p string) string {
	base := p[strings.LastIndexByte(p, '/')+1:]
	if _, name, ok := strings.Cut(base, "-"); ok && len(base) > 33 {
		return name
	}
	return base
}

func (d *Dashboard) queue(w http.ResponseWriter, r *http.Request) {
	system := r.URL.Query().Get("system")
	systems, err := d.db.QueueBySystem(r.Context())
	if err != nil {
		d.fail(w, r, err)
		return
	}
	var total, queued, running int64
	counts := map[string]storage.QueueSystem{}
	for _, s := range systems {
		counts[s.System] = s
		queued += s.Queued
		running += s.Running
		if system == "" || s.System == system {
			total += s.Queued + s.Running
		}
	}
	page := pageOf(r, queuePerPage)
	steps, err := d.db.QueuePage(r.Context(), system, page)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	var groups []*queueGroup
	for _, s := range steps {
		if len(groups) == 0 || groups[len(groups)-1].System != s.System {
			c := counts[s.System]
			groups = append(groups, &queueGroup{System: s.System, Queued: c.Queued, Running: c.Running})
		}
		g := groups[len(groups)-1]
		g.Steps = append(g.Steps, queueRow{QueueStep: s, Name: drvName(s.DrvPath)})
	}
	crumbs := []Crumb{{Name: "Home", URL: "/"}, {Name: "Queue"}}
	title := "Queue"
	if system != "" {
		crumbs = []Crumb{{Name: "Home", URL: "/"}, {Name: "Queue", URL: "/queue"}, {Name: system}}
		title = "Queue for " + system
	}
	d.render(w, r, http.StatusOK, "queue", view{"Title": title, "Crumbs": crumbs, "System": system,
		"Systems": systems, "Queued": queued, "Running": running, "Groups": groups,
		"Pager": pagerOf(r, page, total)})
}
