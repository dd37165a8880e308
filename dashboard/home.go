package dashboard

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/storage"
)

// The home page: projects with their jobsets' latest evaluations, the queue by
// system, connected agents, running builds, recent evaluations and builds, and the
// signed-in person's starred jobs. static/browse.js keeps its running states current
// from /home/live.json; without it the page is right as of its loading.

func (d *Dashboard) homeRoutes(r chi.Router) {
	r.Get("/", d.home)
	r.Get("/home/live.json", d.homeLive)
}

// Sizes of the home page's lists (each pages on its own parameter).
const (
	homeProjects      = 10
	homeJobsets       = 10 // per project; the project's page has them all
	homeRunning       = 10
	homeEvals         = 10
	homeBuilds        = 20
	homeStarred       = 20
	homeAgents        = 20
	liveMaxIDs        = 200
	liveRefreshMillis = 5000
)

func (d *Dashboard) home(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var (
		pp, rp, bp, ep, sp = listPage(r, "projects", homeProjects), listPage(r, "running", homeRunning),
			listPage(r, "builds", homeBuilds), listPage(r, "evals", homeEvals), listPage(r, "starred", homeStarred)
		projects                                  []storage.ProjectBrief
		queue                                     []storage.SystemLoad
		agents                                    []string
		running, builds                           []storage.BuildBrief
		evals                                     []storage.EvalBrief
		starred                                   []storage.StarredLatest
		nProjects, nAgents, nRunning, nEvals, nSt int64
		more                                      bool
		uid                                       = userID(r)
	)
	err := parallel(func() (err error) {
		projects, nProjects, err = d.db.DashProjects(ctx, pp, homeJobsets)
		return err
	}, func() (err error) {
		queue, err = d.db.DashQueue(ctx)
		if err == nil {
			agents, nAgents, err = d.db.DashConnectedAgents(ctx, homeAgents)
		}
		return err
	}, func() (err error) {
		running, nRunning, err = d.db.DashBuilds(ctx, "running", rp)
		if err == nil {
			builds, more, err = d.db.DashRecentBuilds(ctx, bp)
		}
		return err
	}, func() (err error) {
		evals, nEvals, err = d.db.DashEvaluations(ctx, 0, ep)
		if err == nil && uid != 0 {
			starred, nSt, err = d.db.DashStarredJobs(ctx, uid, sp)
		}
		return err
	})
	if err != nil {
		d.fail(w, r, err)
		return
	}
	d.render(w, r, http.StatusOK, "home", view{"Title": "Overview", "Crumbs": []Crumb{{Name: "Home"}}, "LiveMillis": liveRefreshMillis,
		"Projects": projects, "ProjectsPager": listPager(r, "projects", pp, nProjects),
		"Queue": queue, "Agents": agents, "NrAgents": nAgents,
		"Running": running, "RunningPager": listPager(r, "running", rp, nRunning),
		"Builds": builds, "BuildsPager": morePager(r, "builds", bp, more),
		"Evals": evals, "EvalsPager": listPager(r, "evals", ep, nEvals),
		"SignedInUser": uid != 0, "Starred": starred, "StarredPager": listPager(r, "starred", sp, nSt)})
}

// liveJobset is a jobset's latest evaluation in /home/live.json.
type liveJobset struct {
	EvalID    int64  `json:"eval_id"`
	Status    string `json:"status"`
	Succeeded int64  `json:"succeeded"`
	Failed    int64  `json:"failed"`
	Queued    int64  `json:"queued"`
	Running   int64  `json:"running"`
}

type liveQueue struct {
	System  string `json:"system"`
	Queued  int64  `json:"queued"`
	Running int64  `json:"running"`
}

// liveState is /home/live.json: the statuses of the builds and jobsets the page
// asks about (?builds=1,2&jobsets=3), the queue, and how many agents are connected
// and builds running.
type liveState struct {
	Builds  map[string]string     `json:"builds"`
	Jobsets map[string]liveJobset `json:"jobsets"`
	Queue   []liveQueue           `json:"queue"`
	Agents  int64                 `json:"agents"`
	Running int64                 `json:"running"`
}

// homeLive answers the home page's script with what changes while builds run.
func (d *Dashboard) homeLive(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	out := liveState{Builds: map[string]string{}, Jobsets: map[string]liveJobset{}, Queue: []liveQueue{}}
	if ids := idList(r.URL.Query().Get("builds")); len(ids) > 0 {
		st, err := d.db.DashBuildStatuses(ctx, ids)
		if err != nil {
			d.liveFail(w, r, err)
			return
		}
		for id, s := range st {
			out.Builds[strconv.FormatInt(id, 10)] = s
		}
	}
	if ids := idList(r.URL.Query().Get("jobsets")); len(ids) > 0 {
		js, err := d.db.DashJobsetsByID(ctx, ids)
		if err != nil {
			d.liveFail(w, r, err)
			return
		}
		for _, j := range js {
			if e := j.Latest; e != nil {
				out.Jobsets[strconv.FormatInt(j.ID, 10)] = liveJobset{EvalID: e.ID, Status: e.Status,
					Succeeded: e.Builds.Succeeded, Failed: e.Builds.Failed, Queued: e.Builds.Queued, Running: e.Builds.Running}
			}
		}
	}
	q, err := d.db.DashQueue(ctx)
	if err != nil {
		d.liveFail(w, r, err)
		return
	}
	for _, s := range q {
		out.Queue = append(out.Queue, liveQueue(s))
	}
	if _, out.Agents, err = d.db.DashConnectedAgents(ctx, 1); err != nil {
		d.liveFail(w, r, err)
		return
	}
	if _, out.Running, err = d.db.DashBuilds(ctx, "running", storage.Page{Limit: 0}); err != nil {
		d.liveFail(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(out)
}

func (d *Dashboard) liveFail(w http.ResponseWriter, r *http.Request, err error) {
	d.log.Error("home live state", "err", err)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusInternalServerError)
	_, _ = w.Write([]byte(`{"error":"the server log says what went wrong"}` + "\n"))
}

// idList parses "1,2,3" into ids, ignoring what is not one, at most liveMaxIDs.
func idList(s string) []int64 {
	var ids []int64
	for f := range strings.SplitSeq(s, ",") {
		if id, err := strconv.ParseInt(strings.TrimSpace(f), 10, 64); err == nil && id > 0 {
			ids = append(ids, id)
			if len(ids) == liveMaxIDs {
				break
			}
		}
	}
	return ids
}
