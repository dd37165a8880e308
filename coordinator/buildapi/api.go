// Package buildapi serves the builds under /api/v1: the list, the queue and the
// statistics, one build with its steps and products, product downloads out of the
// cache, a step's log (plain, or followed live over a WebSocket), and the actions on
// builds and evaluations (cancel, restart, bump, keep). The step scheduler
// (buildqueue) does the work; this package only answers HTTP.
package buildapi

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/coordinator/logs"
	"github.com/fc-ci/fc/storage"
)

// FileOpener streams a regular file out of a store path in the cache.
type FileOpener func(ctx context.Context, path string) (io.ReadCloser, int64, error)

// Scheduler is what the actions need of the step scheduler (buildqueue.Builds).
type Scheduler interface {
	// Wake makes it look for work now: an action queued or freed steps.
	Wake()
	// StopOnAgents tells the agents holding these step leases to stop (a cancel).
	StopOnAgents(ctx context.Context, leases []storage.Lease)
}

// Config is what the builds API serves from.
type Config struct {
	// Scheduler is woken by the actions and stops cancelled steps; required.
	Scheduler Scheduler
	// Logs are the stored step logs; Hub is the scheduler's, which wakes live log
	// viewers as a log grows or its step changes (nil: a private one, so viewers
	// notice only on their periodic recheck).
	Logs logs.Store
	Hub  *logs.Hub
	// Files reads product files out of the cache; nil: no product can be downloaded.
	Files FileOpener
	// ReadKeys, when set (cache.private), makes product downloads need an API key as
	// the private cache does: products are files out of the cache.
	ReadKeys auth.KeyStore
	Logger   *slog.Logger
	// Route, in a cluster, is the API address of the coordinator holding a session of
	// the agent when another one does: the live log of a step running there is
	// served through it. Nil: one coordinator.
	Route func(agentID int64) (apiAddress string, ok bool)
}

// Builds is the builds API.
type Builds struct {
	cfg   Config
	db    *storage.DB
	log   *slog.Logger
	sched Scheduler
	files FileOpener
}

// New returns the builds API over db.
func New(cfg Config, db *storage.DB) *Builds {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Hub == nil {
		cfg.Hub = logs.NewHub()
	}
	return &Builds{cfg: cfg, db: db, log: cfg.Logger, sched: cfg.Scheduler, files: cfg.Files}
}

// Routes registers the builds API, the queue and the build actions.
func (b *Builds) Routes(r chi.Router) {
	r.Get("/builds", b.listBuilds)
	r.Get("/builds/stats", b.stats)
	r.Get("/builds/recent", b.recent)
	r.Get("/builds/{id}", b.getBuild)
	r.Get("/builds/{id}/steps", b.steps)
	r.Get("/builds/{id}/log", b.buildLog)
	r.Get("/builds/{id}/log/stream", b.streamLog)
	if b.cfg.ReadKeys != nil {
		r.With(auth.RequireKey(b.cfg.ReadKeys, b.refuseDownload)).Get("/builds/{id}/products/{nr}/download", b.download)
	} else {
		r.Get("/builds/{id}/products/{nr}/download", b.download)
	}
	r.With(httpkit.Require(auth.PermCancelBuild)).Post("/builds/{id}/cancel", b.action(b.cancel))
	r.With(httpkit.Require(auth.PermRestartJobs)).Post("/builds/{id}/restart", b.action(b.restart))
	r.With(httpkit.Require(auth.PermBumpToFront)).Post("/builds/{id}/bump", b.action(b.bump))
	r.With(httpkit.Require(auth.PermCancelBuild)).Post("/evaluations/{id}/cancel", b.action(b.cancelEvaluation))
	r.With(httpkit.Require(auth.PermRestartJobs)).Post("/evaluations/{id}/restart-failed", b.action(b.restartFailed))
	r.With(httpkit.Require(auth.PermAdmin)).Put("/builds/{id}/keep/{keep}", b.setKeep)
	r.Get("/queue", b.queue)
}

type buildJSON struct {
	ID             int64             `json:"id"`
	EvaluationID   int64             `json:"evaluation_id"`
	JobsetID       int64             `json:"jobset_id,omitempty"`
	ProjectID      int64             `json:"project_id,omitempty"`
	Project        string            `json:"project,omitempty"`
	Jobset         string            `json:"jobset,omitempty"`
	Job            string            `json:"job"`
	DrvPath        string            `json:"drv_path"`
	System         string            `json:"system"`
	Status         string            `json:"status"`
	StatusCode     *int              `json:"status_code"`
	IsAggregate    bool              `json:"is_aggregate"`
	NixName        string            `json:"nix_name,omitempty"`
	Description    string            `json:"description,omitempty"`
	License        string            `json:"license,omitempty"`
	Homepage       string            `json:"homepage,omitempty"`
	ReleaseName    string            `json:"release_name,omitempty"`
	Priority       int               `json:"scheduling_priority,omitempty"`
	Keep           bool              `json:"keep"`
	PropagatedFrom *int64            `json:"propagated_from"`
	CreatedAt      *time.Time        `json:"created_at,omitempty"`
	StartedAt      *time.Time        `json:"started_at,omitempty"`
	FinishedAt     *time.Time        `json:"finished_at,omitempty"`
	Outputs        map[string]string `json:"outputs,omitempty"`
	// Reason says why an aborted build ended: its attempts and the last error.
	Reason string `json:"reason,omitempty"`
}

// buildDetailJSON is one build as GET /builds/{id} answers it: its lists are [] when
// empty, never null or absent.
type buildDetailJSON struct {
	buildJSON
	Products     []productJSON `json:"products"`
	Metrics      []metricJSON  `json:"metrics"`
	Steps        []stepJSON    `json:"steps"`
	Constituents []int64       `json:"constituents"`
}

type productJSON struct {
	Nr          int    `json:"nr"`
	Type        string `json:"type"`
	Subtype     string `json:"subtype"`
	Name        string `json:"name"`
	Path        string `json:"path"`
	DefaultPath string `json:"default_path,omitempty"`
	FileSize    *int64 `json:"file_size,omitempty"`
	SHA256      string `json:"sha256,omitempty"`
	DownloadURL string `json:"download_url,omitempty"`
}

type metricJSON struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit,omitempty"`
}

type stepJSON struct {
	ID               int64      `json:"id"`
	DrvPath          string     `json:"drv_path"`
	System           string     `json:"system"`
	Status           string     `json:"status"`
	StatusCode       *int       `json:"status_code"`
	Error            string     `json:"error,omitempty"`
	ExitCode         *int       `json:"exit_code,omitempty"`
	AgentID          *int64     `json:"agent_id"`
	Agent            string     `json:"agent,omitempty"`
	Attempts         int        `json:"attempts"`
	LogSize          int64      `json:"log_size"`
	RequiredFeatures []string   `json:"required_features"`
	CreatedAt        time.Time  `json:"created_at"`
	StartedAt        *time.Time `json:"started_at"`
	FinishedAt       *time.Time `json:"finished_at"`
	Seconds          *float64   `json:"seconds,omitempty"`
}

func toStepJSON(s storage.StepInfo) stepJSON {
	j := stepJSON{ID: s.ID, DrvPath: s.DrvPath, System: s.System, Status: s.Status, StatusCode: s.StatusCode, Error: s.Error,
		ExitCode: s.ExitCode, AgentID: s.AgentID, Agent: s.AgentName, Attempts: s.Attempts, LogSize: s.LogSize,
		RequiredFeatures: s.RequiredFts, CreatedAt: s.CreatedAt.UTC(), StartedAt: s.StartedAt, FinishedAt: s.FinishedAt}
	if j.RequiredFeatures == nil {
		j.RequiredFeatures = []string{}
	}
	if s.StartedAt != nil && s.FinishedAt != nil {
		secs := s.FinishedAt.Sub(*s.StartedAt).Seconds()
		j.Seconds = &secs
	}
	return j
}

func idParam(r *http.Request, name string) (int64, error) {
	id, err := strconv.ParseInt(chi.URLParam(r, name), 10, 64)
	if err != nil || id <= 0 {
		return 0, storage.ErrNotFound
	}
	return id, nil
}

func (b *Builds) listBuilds(w http.ResponseWriter, r *http.Request) {
	page, err := httpkit.PageOf(r)
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	var f storage.BuildFilter
	for _, p := range []struct {
		name string
		dst  *int64
	}{{"evaluation_id", &f.EvaluationID}, {"project_id", &f.ProjectID}, {"before_id", &f.BeforeID}} {
		if *p.dst, err = httpkit.PositiveQuery(r, p.name); err != nil {
			httpkit.Fail(b.log, w, r, err)
			return
		}
	}
	if f.JobsetID, err = httpkit.JobsetQuery(r, b.db, "jobset_id"); err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	q := r.URL.Query()
	f.Status, f.System, f.Job = q.Get("status"), q.Get("system"), q.Get("job")
	if f.Status != "" && !knownStatus(f.Status) {
		httpkit.Fail(b.log, w, r, httpkit.Unprocessable("status", "unknown status %q", f.Status))
		return
	}
	b.writePage(w, r, f, page)
}

// buildList is a page of builds; total_exact false says total is a lower bound:
// builds are counted no further than storage.BuildCountCap past the page's first.
type buildList struct {
	httpkit.List[buildJSON]
	TotalExact bool `json:"total_exact"`
}

func (b *Builds) writePage(w http.ResponseWriter, r *http.Request, f storage.BuildFilter, page storage.Page) {
	l, err := b.db.BuildPage(r.Context(), f, page)
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	httpkit.WriteJSON(w, http.StatusOK, buildList{List: httpkit.NewList(summaries(l.Items), l.Total, page), TotalExact: l.TotalExact})
}

func knownStatus(s string) bool {
	_, ok := storage.StatusCodes[s]
	return ok || s == "queued" || s == "running"
}

func summaries(bs []storage.BuildSummary) []buildJSON {
	out := make([]buildJSON, len(bs))
	for i, x := range bs {
		out[i] = buildJSON{ID: x.ID, EvaluationID: x.EvaluationID, Job: x.Job, DrvPath: x.DrvPath, System: x.System,
			Status: x.Status, StatusCode: x.StatusCode, IsAggregate: x.IsAggregate, PropagatedFrom: x.PropagatedFrom,
			FinishedAt: x.FinishedAt, JobsetID: x.JobsetID, ProjectID: x.ProjectID, Project: x.Project, Jobset: x.Jobset}
	}
	return out
}

func (b *Builds) getBuild(w http.ResponseWriter, r *http.Request) {
	id, err := idParam(r, "id")
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	x, err := b.db.GetBuild(r.Context(), id)
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	steps, err := b.db.BuildSteps(r.Context(), id)
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	created := x.CreatedAt.UTC()
	out := buildDetailJSON{buildJSON: buildJSON{ID: x.ID, EvaluationID: x.EvaluationID, JobsetID: x.JobsetID, ProjectID: x.ProjectID, Project: x.Project,
		Jobset: x.Jobset, Job: x.Job, DrvPath: x.DrvPath, System: x.System, Status: x.Status, StatusCode: x.StatusCode,
		IsAggregate: x.IsAggregate, NixName: x.NixName, Description: x.Description, License: x.License, Homepage: x.Homepage,
		ReleaseName: x.ReleaseName, Priority: x.SchedulingPriority, Keep: x.Keep, PropagatedFrom: x.PropagatedFrom,
		CreatedAt: &created, StartedAt: x.StartedAt, FinishedAt: x.FinishedAt, Outputs: x.Outputs},
		Products: []productJSON{}, Metrics: []metricJSON{}, Steps: []stepJSON{}, Constituents: x.Constituents}
	if out.Constituents == nil {
		out.Constituents = []int64{}
	}
	for _, p := range x.Products {
		pj := productJSON{Nr: p.Nr, Type: p.Type, Subtype: p.Subtype, Name: p.Name, Path: p.Path, DefaultPath: p.DefaultPath,
			FileSize: p.FileSize, SHA256: p.SHA256}
		if p.FileSize != nil {
			pj.DownloadURL = fmt.Sprintf("/api/v1/builds/%d/products/%d/download", x.ID, p.Nr)
		}
		out.Products = append(out.Products, pj)
	}
	for _, m := range x.Metrics {
		out.Metrics = append(out.Metrics, metricJSON(m))
	}
	for _, s := range steps {
		out.Steps = append(out.Steps, toStepJSON(s))
	}
	out.Reason = abortReason(x.Status, x.DrvPath, steps)
	httpkit.WriteJSON(w, http.StatusOK, out)
}

func (b *Builds) steps(w http.ResponseWriter, r *http.Request) {
	id, err := idParam(r, "id")
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	if _, err := b.db.GetBuild(r.Context(), id); err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	steps, err := b.db.BuildSteps(r.Context(), id)
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	out := make([]stepJSON, len(steps))
	for i, s := range steps {
		out[i] = toStepJSON(s)
	}
	httpkit.WriteJSON(w, http.StatusOK, map[string]any{"items": out})
}

func (b *Builds) stats(w http.ResponseWriter, r *http.Request) {
	st, err := b.db.GetBuildStats(r.Context())
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	httpkit.WriteJSON(w, http.StatusOK, map[string]any{"total": st.Total, "by_status": st.ByStatus,
		"steps_queued": st.StepsQueued, "steps_running": st.StepsRunning})
}

func (b *Builds) recent(w http.ResponseWriter, r *http.Request) {
	page, err := httpkit.PageOf(r)
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	b.writePage(w, r, storage.BuildFilter{Finished: true}, page)
}

func (b *Builds) queue(w http.ResponseWriter, r *http.Request) {
	q, err := b.db.GetQueue(r.Context(), 200)
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	type sys struct {
		System  string `json:"system"`
		Queued  int64  `json:"queued"`
		Running int64  `json:"running"`
	}
	out := struct {
		Queued  int64      `json:"queued"`
		Running int64      `json:"running"`
		Systems []sys      `json:"systems"`
		Steps   []stepJSON `json:"steps"`
	}{Systems: []sys{}, Steps: []stepJSON{}}
	for _, s := range q.Systems {
		out.Queued += s.Queued
		out.Running += s.Running
		out.Systems = append(out.Systems, sys(s))
	}
	for _, s := range q.Steps {
		out.Steps = append(out.Steps, toStepJSON(s))
	}
	httpkit.WriteJSON(w, http.StatusOK, out)
}

// abortReason says why a build with status ended aborted: how many times its step
// was tried and the last infrastructure error. "" for any other status.
func abortReason(status, drvPath string, steps []storage.StepInfo) string {
	if status != "aborted" {
		return ""
	}
	var st *storage.StepInfo
	for i := range steps {
		if steps[i].Status == "aborted" && (st == nil || steps[i].DrvPath == drvPath) {
			st = &steps[i]
		}
	}
	if st == nil {
		return "aborted"
	}
	msg := st.Error
	if msg == "" {
		msg = "no error was reported"
	}
	return fmt.Sprintf("aborted after %d attempt(s) failed for reasons of the infrastructure; last error: %s", st.Attempts, msg)
}
