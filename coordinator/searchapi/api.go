// Package searchapi serves GET /api/v1/search: projects, jobsets and jobs by a part
// of their name, builds by a .drv or output path, its hash part or a prefix of it.
// It is a public read, like the API's other reads.
package searchapi

import (
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

// Limits of ?limit=, the number of hits of each kind.
const (
	DefaultLimit = 10
	MaxLimit     = 100
)

// Config configures the API.
type Config struct {
	Logger *slog.Logger
}

// API serves the search.
type API struct {
	db  *storage.DB
	log *slog.Logger
}

// New returns the search API over db.
func New(cfg Config, db *storage.DB) *API {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &API{db: db, log: log}
}

// Routes registers GET /search under /api/v1.
func (a *API) Routes(r chi.Router) {
	r.Get("/search", a.search)
}

// Result is the answer: up to limit hits of each kind; a kind with none is [].
type Result struct {
	Projects []Project `json:"projects"`
	Jobsets  []Jobset  `json:"jobsets"`
	Jobs     []Job     `json:"jobs"`
	Builds   []Build   `json:"builds"`
}

// Project is a project found by its name or display name.
type Project struct {
	ID          int64  `json:"id"`
	Name        string `json:"name"`
	DisplayName string `json:"display_name"`
	Description string `json:"description"`
	Enabled     bool   `json:"enabled"`
}

// Jobset is a jobset found by its name.
type Jobset struct {
	ID          int64  `json:"id"`
	ProjectID   int64  `json:"project_id"`
	Project     string `json:"project"`
	Name        string `json:"name"`
	Description string `json:"description"`
}

// Job is a job (a jobset's attribute) found by its name.
type Job struct {
	JobsetID int64  `json:"jobset_id"`
	Project  string `json:"project"`
	Jobset   string `json:"jobset"`
	Job      string `json:"job"`
}

// Build is a build found by its .drv path or an output path.
type Build struct {
	ID           int64  `json:"id"`
	EvaluationID int64  `json:"evaluation_id"`
	Project      string `json:"project"`
	Jobset       string `json:"jobset"`
	Job          string `json:"job"`
	System       string `json:"system"`
	Status       string `json:"status"`
	DrvPath      string `json:"drv_path"`
	// MatchedPath is the path that matched: the .drv path, or the output named
	// MatchedOutput ("" for the .drv path).
	MatchedPath   string     `json:"matched_path"`
	MatchedOutput string     `json:"matched_output"`
	CreatedAt     time.Time  `json:"created_at"`
	FinishedAt    *time.Time `json:"finished_at"`
}

func (a *API) search(w http.ResponseWriter, r *http.Request) {
	limit := DefaultLimit
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxLimit {
			httpkit.Fail(a.log, w, r, httpkit.Unprocessable("limit", "limit must be an integer from 1 to %d", MaxLimit))
			return
		}
		limit = n
	}
	terms, err := storage.ParseSearch(r.URL.Query().Get("q"))
	if errors.Is(err, storage.ErrSearchTooShort) {
		httpkit.Fail(a.log, w, r, httpkit.Unprocessable("q", "q must hold at least %d characters", storage.MinSearchLength))
		return
	}
	res, err := a.db.Search(r.Context(), terms, storage.Page{Limit: limit})
	if err != nil {
		httpkit.Fail(a.log, w, r, err)
		return
	}
	httpkit.WriteJSON(w, http.StatusOK, toResult(res))
}

func toResult(res storage.SearchResults) Result {
	out := Result{Projects: make([]Project, len(res.Projects)), Jobsets: make([]Jobset, len(res.Jobsets)),
		Jobs: make([]Job, len(res.Jobs)), Builds: make([]Build, len(res.Builds))}
	for i, p := range res.Projects {
		out.Projects[i] = Project{ID: p.ID, Name: p.Name, DisplayName: p.DisplayName, Description: p.Description, Enabled: p.Enabled}
	}
	for i, j := range res.Jobsets {
		out.Jobsets[i] = Jobset{ID: j.ID, ProjectID: j.ProjectID, Project: j.Project, Name: j.Name, Description: j.Description}
	}
	for i, j := range res.Jobs {
		out.Jobs[i] = Job{JobsetID: j.JobsetID, Project: j.Project, Jobset: j.Jobset, Job: j.Job}
	}
	for i, b := range res.Builds {
		var fin *time.Time
		if b.FinishedAt != nil {
			t := b.FinishedAt.UTC()
			fin = &t
		}
		out.Builds[i] = Build{ID: b.ID, EvaluationID: b.EvaluationID, Project: b.Project, Jobset: b.Jobset, Job: b.Job,
			System: b.System, Status: b.Status, DrvPath: b.DrvPath, MatchedPath: b.Path, MatchedOutput: b.Output,
			CreatedAt: b.CreatedAt.UTC(), FinishedAt: fin}
	}
	return out
}
