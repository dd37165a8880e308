// Package evalapi serves the evaluations under /api/v1 (the list, one evaluation
// with its errors, how two compare, the trigger) and the forges' webhooks (pushes and
// pull requests of GitHub, Gitea, Forgejo and GitLab). The evaluation scheduler
// (evalqueue) and the pull request jobsets (pullrequests) do the work; this package
// only answers HTTP.
package evalapi

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/evalqueue"
	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/coordinator/pullrequests"
	"github.com/fc-ci/fc/storage"
)

// Scheduler is what the trigger and the webhooks need of the evaluation scheduler
// (evalqueue.Evals).
type Scheduler interface {
	// Wake makes it look for due jobsets now.
	Wake()
	// TriggerNow checks a jobset at once and says whether it created an evaluation.
	TriggerNow(ctx context.Context, jobsetID int64, force bool) (evalqueue.CheckResult, error)
}

// Config is what the evaluations API serves from.
type Config struct {
	// Scheduler is woken by triggers; required.
	Scheduler Scheduler
	// PullRequests makes the pull requests' jobsets and knows repositories' default
	// branches; nil: pull request webhooks are ignored.
	PullRequests *pullrequests.PullRequests
	// Pushed is told of a push to a project that has a declarative file (its
	// .fc.toml is read at once); nil: it waits for evaluator.declarative_interval.
	Pushed func(projectID int64)
	Logger *slog.Logger
}

// Evals is the evaluations API.
type Evals struct {
	db    *storage.DB
	log   *slog.Logger
	sched Scheduler
	prs   *pullrequests.PullRequests
	// pushed: see Config.Pushed.
	pushed func(projectID int64)
}

// New returns the evaluations API over db.
func New(cfg Config, db *storage.DB) *Evals {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Pushed == nil {
		cfg.Pushed = func(int64) {}
	}
	return &Evals{db: db, log: cfg.Logger, sched: cfg.Scheduler, prs: cfg.PullRequests, pushed: cfg.Pushed}
}

// Routes registers the evaluations API and the webhooks.
func (e *Evals) Routes(r chi.Router) {
	r.Get("/evaluations", e.listEvaluations)
	r.Get("/evaluations/{id}", e.getEvaluation)
	r.Get("/evaluations/{id}/compare", e.compare)
	r.With(httpkit.Require(auth.PermEvalJobset)).Post("/evaluations/trigger", e.trigger)
	r.Post("/webhooks/{project}/github", e.webhook(github))
	r.Post("/webhooks/{project}/gitea", e.webhook(gitea))
	r.Post("/webhooks/{project}/forgejo", e.webhook(forgejo))
	r.Post("/webhooks/{project}/gitlab", e.webhook(gitlab))
}

type evaluationJSON struct {
	ID              int64      `json:"id"`
	JobsetID        int64      `json:"jobset_id"`
	ProjectID       int64      `json:"project_id"`
	Status          string     `json:"status"`
	Commit          string     `json:"commit"`
	Trigger         string     `json:"trigger"`
	Forced          bool       `json:"forced"`
	Error           string     `json:"error"`
	NrJobs          int        `json:"nr_jobs"`
	NrNewBuilds     int        `json:"nr_new_builds"`
	NrErrors        int        `json:"nr_errors"`
	CheckoutSeconds *float64   `json:"checkout_seconds"`
	EvalSeconds     *float64   `json:"eval_seconds"`
	AgentID         *int64     `json:"agent_id"`
	Attempts        int        `json:"attempts"`
	CreatedAt       time.Time  `json:"created_at"`
	StartedAt       *time.Time `json:"started_at"`
	FinishedAt      *time.Time `json:"finished_at"`
	// NrBuilds and BuildsByStatus count the evaluation's builds, new and reused.
	NrBuilds       int64            `json:"nr_builds"`
	BuildsByStatus map[string]int64 `json:"builds_by_status"`
	Errors         []attrErrorJSON  `json:"errors,omitempty"`
}

type attrErrorJSON struct {
	Attr    string `json:"attr"`
	Message string `json:"message"`
}

func toEvaluationJSON(ev storage.Evaluation) evaluationJSON {
	return evaluationJSON{ID: ev.ID, JobsetID: ev.JobsetID, ProjectID: ev.ProjectID, Status: ev.Status, Commit: ev.Commit,
		Trigger: ev.Trigger, Forced: ev.Forced, Error: ev.Error, NrJobs: ev.NrJobs, NrNewBuilds: ev.NrNewBuilds,
		NrErrors: ev.NrErrors, CheckoutSeconds: ev.CheckoutSeconds, EvalSeconds: ev.EvalSeconds, AgentID: ev.AgentID,
		Attempts: ev.Attempts, CreatedAt: ev.CreatedAt.UTC(), StartedAt: ev.StartedAt, FinishedAt: ev.FinishedAt}
}

func (e *Evals) listEvaluations(w http.ResponseWriter, r *http.Request) {
	page, err := httpkit.PageOf(r)
	if err != nil {
		httpkit.Fail(e.log, w, r, err)
		return
	}
	var f storage.EvaluationFilter
	if f.ProjectID, err = httpkit.PositiveQuery(r, "project_id"); err == nil {
		f.JobsetID, err = httpkit.JobsetQuery(r, e.db, "jobset_id")
	}
	if err != nil {
		httpkit.Fail(e.log, w, r, err)
		return
	}
	f.Status = r.URL.Query().Get("status")
	switch f.Status {
	case "", "queued", "running", "succeeded", "failed", "cancelled":
	default:
		httpkit.Fail(e.log, w, r, httpkit.Unprocessable("status", "status must be queued, running, succeeded, failed or cancelled"))
		return
	}
	evs, total, err := e.db.ListEvaluations(r.Context(), f, page)
	if err != nil {
		httpkit.Fail(e.log, w, r, err)
		return
	}
	ids := make([]int64, len(evs))
	for i, ev := range evs {
		ids[i] = ev.ID
	}
	counts, err := e.db.BuildStatusCounts(r.Context(), ids)
	if err != nil {
		httpkit.Fail(e.log, w, r, err)
		return
	}
	out := make([]evaluationJSON, len(evs))
	for i, ev := range evs {
		out[i] = withCounts(toEvaluationJSON(ev), counts[ev.ID])
	}
	httpkit.WriteJSON(w, http.StatusOK, httpkit.NewList(out, total, page))
}

func (e *Evals) evaluation(ctx context.Context, r *http.Request, param string) (storage.Evaluation, error) {
	id, err := strconv.ParseInt(chi.URLParam(r, param), 10, 64)
	if err != nil {
		return storage.Evaluation{}, storage.ErrNotFound
	}
	return e.db.GetEvaluation(ctx, id)
}

func (e *Evals) getEvaluation(w http.ResponseWriter, r *http.Request) {
	ev, err := e.evaluation(r.Context(), r, "id")
	if err != nil {
		httpkit.Fail(e.log, w, r, err)
		return
	}
	errs, err := e.db.EvaluationErrors(r.Context(), ev.ID)
	if err != nil {
		httpkit.Fail(e.log, w, r, err)
		return
	}
	counts, err := e.db.BuildStatusCounts(r.Context(), []int64{ev.ID})
	if err != nil {
		httpkit.Fail(e.log, w, r, err)
		return
	}
	out := withCounts(toEvaluationJSON(ev), counts[ev.ID])
	out.Errors = make([]attrErrorJSON, len(errs))
	for i, er := range errs {
		out.Errors[i] = attrErrorJSON{Attr: er.Attr, Message: er.Message}
	}
	httpkit.WriteJSON(w, http.StatusOK, out)
}

// trigger checks the jobset at once (see evalqueue.TriggerNow): 202 with the
// evaluation it created; 200 with evaluation_id null and reason "unchanged" when the
// inputs are those of the newest evaluation; 202 with evaluation_id null, a reason
// and waiting_for when it waits for the newest evaluation, or reason "check_failed"
// and the error when the repository could not be read (the trigger is kept for the
// scheduler either way).
func (e *Evals) trigger(w http.ResponseWriter, r *http.Request) {
	var in struct {
		JobsetID httpkit.JobsetField `json:"jobset_id"`
		Force    bool                `json:"force"`
	}
	if err := httpkit.Decode(r, &in); err != nil {
		httpkit.Fail(e.log, w, r, err)
		return
	}
	if in.JobsetID == "" {
		httpkit.Fail(e.log, w, r, httpkit.Unprocessable("jobset_id", "jobset_id is required"))
		return
	}
	id, err := httpkit.JobsetRef(r.Context(), e.db, "jobset_id", string(in.JobsetID))
	if err != nil {
		httpkit.Fail(e.log, w, r, err)
		return
	}
	res, err := e.sched.TriggerNow(r.Context(), id, in.Force)
	switch {
	case errors.Is(err, evalqueue.ErrJobsetDisabled):
		err = httpkit.Errorf(http.StatusConflict, "jobset_id", "%v", err)
	}
	if err != nil {
		httpkit.Fail(e.log, w, r, err)
		return
	}
	out := map[string]any{"jobset_id": id, "force": in.Force, "evaluation_id": nil}
	code := http.StatusAccepted
	switch {
	case res.EvaluationID != 0:
		out["evaluation_id"] = res.EvaluationID
	case res.Reason == evalqueue.ReasonUnchanged:
		out["reason"], code = res.Reason, http.StatusOK
	case res.Reason == evalqueue.ReasonCheckFailed:
		out["reason"], out["error"] = res.Reason, res.Error
	default:
		out["reason"], out["waiting_for"] = res.Reason, res.WaitingFor
	}
	httpkit.WriteJSON(w, code, out)
}
