// Package dashboard serves the web pages: server-rendered HTML (html/template, so
// every value is escaped) on a base layout, with small static scripts for what must be
// live (the build log). Pages read the same storage as the API; writes go through the
// API.
package dashboard

import (
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/storage"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Config configures the dashboard.
type Config struct {
	Version string
	Logger  *slog.Logger
}

// Dashboard is the web UI.
type Dashboard struct {
	cfg   Config
	db    *storage.DB
	log   *slog.Logger
	pages map[string]*template.Template
}

// New parses the templates.
func New(cfg Config, db *storage.DB) (*Dashboard, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	d := &Dashboard{cfg: cfg, db: db, log: cfg.Logger, pages: map[string]*template.Template{}}
	funcs := template.FuncMap{
		"since":    since,
		"ago":      ago,
		"rfc3339":  func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
		"duration": duration,
		"statusClass": func(s string) string {
			switch s {
			case "succeeded":
				return "ok"
			case "queued", "running":
				return s
			default:
				return "bad"
			}
		},
	}
	for _, page := range []string{"home", "build", "error"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+page+".html")
		if err != nil {
			return nil, fmt.Errorf("dashboard template %s: %w", page, err)
		}
		d.pages[page] = t
	}
	return d, nil
}

// Handler serves the pages and /static/.
func (d *Dashboard) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Scripts and styles come only from here; nothing inline.
			w.Header().Set("Content-Security-Policy", "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
			next.ServeHTTP(w, r)
		})
	})
	static, _ := fs.Sub(staticFS, "static")
	r.Handle("/static/*", http.StripPrefix("/static/", http.FileServerFS(static)))
	r.Get("/", d.home)
	r.Get("/build/{id}", d.build)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/api/") { // an API client: a JSON error, as the API gives
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "no such route: " + r.URL.Path})
			return
		}
		d.render(w, r, http.StatusNotFound, "error", map[string]any{"Title": "Not found", "Message": "There is no page at " + r.URL.Path + "."})
	})
	return r
}

func (d *Dashboard) render(w http.ResponseWriter, r *http.Request, status int, page string, data map[string]any) {
	data["Version"] = d.cfg.Version
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := d.pages[page].Execute(w, data); err != nil {
		d.log.Warn("render page", "page", page, "path", r.URL.Path, "err", err)
	}
}

func (d *Dashboard) fail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, storage.ErrNotFound) {
		d.render(w, r, http.StatusNotFound, "error", map[string]any{"Title": "Not found", "Message": "No such thing here."})
		return
	}
	d.log.Error("dashboard page", "path", r.URL.Path, "err", err)
	d.render(w, r, http.StatusInternalServerError, "error", map[string]any{"Title": "Error", "Message": "Something went wrong; the server log says what."})
}

func (d *Dashboard) home(w http.ResponseWriter, r *http.Request) {
	recent, _, err := d.db.ListBuilds(r.Context(), storage.BuildFilter{}, storage.Page{Limit: 50})
	if err != nil {
		d.fail(w, r, err)
		return
	}
	stats, err := d.db.GetBuildStats(r.Context())
	if err != nil {
		d.fail(w, r, err)
		return
	}
	d.render(w, r, http.StatusOK, "home", map[string]any{"Title": "Recent builds", "Builds": recent, "Stats": stats})
}

func (d *Dashboard) build(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil {
		d.fail(w, r, storage.ErrNotFound)
		return
	}
	b, err := d.db.GetBuild(r.Context(), id)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	steps, err := d.db.BuildSteps(r.Context(), id)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	data := map[string]any{"Title": fmt.Sprintf("Build %d: %s", b.ID, b.Job), "Build": b, "Steps": steps}
	// The log shown is the build's own step's (listed first), or the ?step= asked for.
	if len(steps) > 0 {
		step, own := &steps[0], true
		if s := r.URL.Query().Get("step"); s != "" {
			for i := range steps {
				if strconv.FormatInt(steps[i].ID, 10) == s {
					step, own = &steps[i], i == 0
				}
			}
		}
		raw := fmt.Sprintf("/api/v1/builds/%d/log", b.ID)
		if !own {
			raw += fmt.Sprintf("?step=%d", step.ID)
		}
		data["Step"], data["OwnStep"], data["RawLog"] = step, own, raw
	}
	d.render(w, r, http.StatusOK, "build", data)
}

func since(t *time.Time) string {
	if t == nil {
		return ""
	}
	return time.Since(*t).Round(time.Second).String() + " ago"
}

// ago is since for a time or a pointer to one.
func ago(t any) string {
	switch t := t.(type) {
	case time.Time:
		return since(&t)
	case *time.Time:
		return since(t)
	}
	return ""
}

func duration(from, to *time.Time) string {
	if from == nil {
		return ""
	}
	end := time.Now()
	if to != nil {
		end = *to
	}
	return end.Sub(*from).Round(100 * time.Millisecond).String()
}
