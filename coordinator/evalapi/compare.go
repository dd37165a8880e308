package evalapi

import (
	"net/http"
	"strconv"

	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

// withCounts adds an evaluation's builds counted by status.
func withCounts(ev evaluationJSON, byStatus map[string]int64) evaluationJSON {
	if byStatus == nil {
		byStatus = map[string]int64{}
	}
	ev.BuildsByStatus = byStatus
	for _, n := range byStatus {
		ev.NrBuilds += n
	}
	return ev
}

// compareCategories names the comparison's tabs in the API; "unchanged" is Hydra's
// name for jobs that succeeded in both.
var compareCategories = map[string]string{
	storage.TabNew: "new", storage.TabRemoved: "removed", storage.TabNewlyFailing: "newly_failing",
	storage.TabNewlySucceeding: "newly_succeeding", storage.TabStillFailing: "still_failing",
	storage.TabStillSucceeding: "unchanged", storage.TabQueued: "queued", storage.TabAborted: "aborted",
}

// comparedBuildJSON is one job of a comparison: its build here (id null: removed)
// and in the other evaluation (previous_id null: new). The same id on both sides is
// one build reused by both evaluations.
type comparedBuildJSON struct {
	Job            string `json:"job"`
	System         string `json:"system"`
	ID             *int64 `json:"id"`
	Status         string `json:"status"`
	PreviousID     *int64 `json:"previous_id"`
	PreviousStatus string `json:"previous_status"`
}

const (
	defaultCompareLimit = 500
	maxCompareLimit     = 5000
)

// compare answers how an evaluation's builds differ from another's, per category
// (each with its count and its first ?limit= builds by job name), and which
// attribute errors are new here and which were fixed.
func (e *Evals) compare(w http.ResponseWriter, r *http.Request) {
	ev, err := e.evaluation(r.Context(), r, "id")
	if err != nil {
		httpkit.Fail(e.log, w, r, err)
		return
	}
	otherID, err := httpkit.PositiveQuery(r, "with")
	if err != nil || otherID == 0 {
		httpkit.Fail(e.log, w, r, httpkit.Unprocessable("with", "with must name another evaluation's id"))
		return
	}
	limit := defaultCompareLimit
	if s := r.URL.Query().Get("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 || limit > maxCompareLimit {
			httpkit.Fail(e.log, w, r, httpkit.Unprocessable("limit", "limit must be an integer from 1 to %d", maxCompareLimit))
			return
		}
	}
	if _, err := e.db.GetEvaluation(r.Context(), otherID); err != nil {
		httpkit.Fail(e.log, w, r, err)
		return
	}
	c, err := e.db.CompareAll(r.Context(), ev.ID, otherID, limit)
	if err != nil {
		httpkit.Fail(e.log, w, r, err)
		return
	}
	counts := map[string]int64{"errors_new": c.NrNewErr, "errors_fixed": c.NrFixed}
	builds := map[string][]comparedBuildJSON{}
	for tab, name := range compareCategories {
		counts[name] = c.Counts[tab]
		list := make([]comparedBuildJSON, len(c.Jobs[tab]))
		for i, j := range c.Jobs[tab] {
			list[i] = comparedBuildJSON{Job: j.Job, System: j.System, ID: j.ID, Status: j.Status, PreviousID: j.PrevID, PreviousStatus: j.PrevStatus}
		}
		builds[name] = list
	}
	errs := func(in []storage.AttrError) []attrErrorJSON {
		out := make([]attrErrorJSON, len(in))
		for i, a := range in {
			out[i] = attrErrorJSON{Attr: a.Attr, Message: a.Message}
		}
		return out
	}
	httpkit.WriteJSON(w, http.StatusOK, map[string]any{"evaluation_id": ev.ID, "with": otherID, "limit": limit,
		"counts": counts, "builds": builds, "errors": map[string]any{"new": errs(c.NewErrors), "fixed": errs(c.Fixed)}})
}
