package dashboard

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/storage"
)

// evalRowsPerPage is the length of a page of a comparison tab.
const evalRowsPerPage = 50

// tabNames are the comparison tabs as people read them.
var tabNames = map[string]string{
	storage.TabNewlyFailing:    "Newly failing",
	storage.TabNewlySucceeding: "Newly succeeding",
	storage.TabStillFailing:    "Still failing",
	storage.TabStillSucceeding: "Still succeeding",
	storage.TabNew:             "New jobs",
	storage.TabRemoved:         "Removed jobs",
	storage.TabQueued:          "Queued",
	storage.TabAborted:         "Aborted",
	storage.TabErrors:          "Evaluation errors",
}

// evalRoutes serves /eval/{id}: an evaluation and its comparison with the previous one.
func (d *Dashboard) evalRoutes(r chi.Router) {
	r.Get("/eval/{id}", d.eval)
}

// evalTab is one tab's link.
type evalTab struct {
	Key, Name, URL string
	Count          int64
	Current        bool
}

func (d *Dashboard) eval(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil {
		d.fail(w, r, storage.ErrNotFound)
		return
	}
	q := r.URL.Query()
	tab, filter := q.Get("tab"), q.Get("filter")
	if tab != "" && !slices.Contains(storage.CompareTabs, tab) {
		d.refuse(w, r, http.StatusNotFound, "There is no tab "+tab+".")
		return
	}
	s, err := d.db.EvalSummary(r.Context(), id)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	var prev int64
	if s.PreviousID != nil {
		prev = *s.PreviousID
	}
	page := pageOf(r, evalRowsPerPage)
	cmp, err := d.db.CompareEvaluations(r.Context(), id, prev, tab, filter, page)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	tabs := make([]evalTab, 0, len(storage.CompareTabs))
	for _, t := range storage.CompareTabs {
		v := url.Values{"tab": {t}}
		if filter != "" {
			v.Set("filter", filter)
		}
		tabs = append(tabs, evalTab{Key: t, Name: tabNames[t], Count: cmp.Counts[t], Current: t == cmp.Tab,
			URL: fmt.Sprintf("/eval/%d?%s", id, v.Encode())})
	}
	d.render(w, r, http.StatusOK, "eval", view{
		"Title": fmt.Sprintf("Evaluation %d of %s:%s", s.ID, s.Project, s.Jobset),
		"Crumbs": []Crumb{
			{Name: "Projects", URL: "/projects"},
			{Name: s.Project, URL: "/project/" + url.PathEscape(s.Project)},
			{Name: s.Jobset, URL: "/jobset/" + url.PathEscape(s.Project) + "/" + url.PathEscape(s.Jobset)},
			{Name: fmt.Sprintf("Evaluation %d", s.ID)},
		},
		"Eval":     s,
		"Tabs":     tabs,
		"Tab":      cmp.Tab,
		"TabName":  tabNames[cmp.Tab],
		"Filter":   filter,
		"Jobs":     cmp.Jobs,
		"Errors":   cmp.Errors,
		"Pager":    pagerOf(r, page, cmp.Counts[cmp.Tab]),
		"Finished": s.FinishedAt != nil,
	})
}
