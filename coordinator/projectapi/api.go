// Package projectapi serves the projects, jobsets and API keys under /api/v1, and
// who may manage a project (its owner or an admin).
package projectapi

import (
	"log/slog"
	"net/http"
	"slices"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

// Config configures the API.
type Config struct {
	Logger *slog.Logger
	// AllowedInputPaths are the directories path inputs may name
	// (evaluator.allowed_input_paths); none: path inputs are refused.
	AllowedInputPaths []string
}

// API holds the REST handlers.
type API struct {
	db                *storage.DB
	log               *slog.Logger
	allowedInputPaths []string
}

// New returns the API over db.
func New(cfg Config, db *storage.DB) *API {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &API{db: db, log: log, allowedInputPaths: slices.Clone(cfg.AllowedInputPaths)}
}

func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) { httpkit.Fail(a.log, w, r, err) }

// Routes registers the API's routes on r, which is mounted at /api/v1 and already
// authenticates requests. GETs are public unless they show admin data.
func (a *API) Routes(r chi.Router) {
	r.Get("/projects", a.listProjects)
	r.With(httpkit.Require(auth.PermCreateProjects)).Post("/projects", a.createProject)
	r.Get("/projects/{id}", a.getProject)
	// Managing a project is for admins and the create-projects key that owns it.
	r.With(httpkit.Require(auth.PermCreateProjects), a.ownerOnly("id")).Put("/projects/{id}", a.updateProject)
	r.With(httpkit.Require(auth.PermCreateProjects), a.ownerOnly("id")).Delete("/projects/{id}", a.deleteProject)

	r.Get("/projects/{pid}/jobsets", a.listJobsets)
	r.With(httpkit.Require(auth.PermCreateProjects), a.ownerOnly("pid")).Post("/projects/{pid}/jobsets", a.createJobset)
	r.Get("/projects/{pid}/jobsets/{id}", a.getJobset)
	r.With(httpkit.Require(auth.PermCreateProjects), a.ownerOnly("pid")).Put("/projects/{pid}/jobsets/{id}", a.updateJobset)
	r.With(httpkit.Require(auth.PermCreateProjects), a.ownerOnly("pid")).Delete("/projects/{pid}/jobsets/{id}", a.deleteJobset)

	r.With(httpkit.Require(auth.PermAdmin)).Get("/api-keys", a.listKeys)
	r.With(httpkit.Require(auth.PermAdmin)).Post("/api-keys", a.createKey)
	r.With(httpkit.Require(auth.PermAdmin)).Delete("/api-keys/{id}", a.deleteKey)
}
