// Package dashboard serves the web pages: server-rendered HTML (html/template, so
// every value is escaped) on one layout, with small static scripts only where a page
// must be live (the build log, running states). Links and forms work without
// JavaScript.
//
// Pages read storage directly, each with a fixed number of queries whatever the number
// of rows. Writes never do: a form is turned into the API request it stands for and
// sent to the API in-process as the signed-in person (submit), so a write has one set
// of rules, the API's.
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
	"path"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
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
	// API is the coordinator's HTTP handler (it serves /api/v1). Forms are submitted
	// to it in-process; nil refuses every form (tests of read-only pages).
	API http.Handler
	// CachePublicKey is the binary cache's public key ("name:base64"), shown with
	// outputs and on the admin page.
	CachePublicKey string
	// PublicURL is where people reach the coordinator ("https://ci.example.org"), for
	// commands a page tells them to copy; empty: taken from each request's Host.
	PublicURL string
	// Accounts signs people in and out (/login, /logout); nil: nobody can sign in.
	Accounts Accounts
	// The coordinator's build limits, which a build page names when a build ran into
	// one: the timeout and max-silent time of steps whose job sets none, and the most
	// log a step may write. Zero: not named.
	BuildTimeout, MaxSilent time.Duration
	MaxLogSize              int64
}

// Dashboard is the web UI.
type Dashboard struct {
	cfg   Config
	db    *storage.DB
	log   *slog.Logger
	pages map[string]*template.Template
}

// shared are the templates every page is parsed with: the layout and the partials.
var shared = []string{"templates/layout.html", "templates/partials.html"}

// New parses the templates: every templates/*.html but the shared ones is a page,
// named by its file.
func New(cfg Config, db *storage.DB) (*Dashboard, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	d := &Dashboard{cfg: cfg, db: db, log: cfg.Logger, pages: map[string]*template.Template{}}
	files, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, fmt.Errorf("dashboard templates: %w", err)
	}
	for _, f := range files {
		if isShared(f) {
			continue
		}
		name := strings.TrimSuffix(path.Base(f), ".html")
		t, err := template.New("layout.html").Funcs(funcs()).ParseFS(templateFS, append(append([]string(nil), shared...), f)...)
		if err != nil {
			return nil, fmt.Errorf("dashboard template %s: %w", name, err)
		}
		d.pages[name] = t
	}
	return d, nil
}

func isShared(f string) bool {
	for _, s := range shared {
		if s == f {
			return true
		}
	}
	return false
}

// Handler serves the pages and /static/.
func (d *Dashboard) Handler() http.Handler {
	r := chi.NewRouter()
	r.Use(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Scripts and styles come only from here; nothing inline.
			w.Header().Set("Content-Security-Policy", "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
			next.ServeHTTP(w, r)
		})
	})
	static, _ := fs.Sub(staticFS, "static")
	r.Handle("/static/*", http.StripPrefix("/static/", http.FileServerFS(static)))
	r.Get("/favicon.ico", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/static/favicon.svg", http.StatusMovedPermanently)
	})
	// Each file of pages registers its own routes.
	d.homeRoutes(r)
	d.buildRoutes(r)
	d.projectRoutes(r)
	d.jobsetRoutes(r)
	d.evalRoutes(r)
	d.jobRoutes(r)
	d.queueRoutes(r)
	d.agentRoutes(r)
	d.searchRoutes(r)
	d.adminRoutes(r)
	d.loginRoutes(r)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/api/") { // an API client: a JSON error, as the API gives
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "no such route: " + r.URL.Path})
			return
		}
		d.render(w, r, http.StatusNotFound, "error", view{"Title": "Not found", "Message": "There is no page at " + r.URL.Path + "."})
	})
	return r
}

// view is a page's data. render adds what the layout needs: Me (the signed-in
// principal, or nil), CSRF (the token forms carry), Version and Path.
type view map[string]any

// Crumb is one link of a page's breadcrumbs; the last one is the page itself.
type Crumb struct {
	Name string
	URL  string
}

func (d *Dashboard) render(w http.ResponseWriter, r *http.Request, status int, page string, data view) {
	data["Version"] = d.cfg.Version
	data["Path"] = r.URL.Path
	for _, k := range []string{"Query", "Flash", "Error", "Crumbs", "Me", "CSRF"} {
		if _, ok := data[k]; !ok {
			data[k] = nil
		}
	}
	if data["Query"] == nil {
		data["Query"] = ""
	}
	if p, ok := auth.FromContext(r.Context()); ok {
		data["Me"] = &p
		data["CSRF"] = p.CSRF
	}
	t := d.pages[page]
	if t == nil {
		d.log.Error("no such dashboard template", "page", page)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if err := t.Execute(w, data); err != nil {
		d.log.Warn("render page", "page", page, "path", r.URL.Path, "err", err)
	}
}

// fail renders the error page for err: 404 for storage.ErrNotFound, 500 otherwise
// (the detail goes to the log, never to the page).
func (d *Dashboard) fail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, storage.ErrNotFound) {
		d.render(w, r, http.StatusNotFound, "error", view{"Title": "Not found", "Message": "No such thing here."})
		return
	}
	d.log.Error("dashboard page", "path", r.URL.Path, "err", err)
	d.render(w, r, http.StatusInternalServerError, "error", view{"Title": "Error", "Message": "Something went wrong; the server log says what."})
}

// refuse renders the error page with status and a message for people.
func (d *Dashboard) refuse(w http.ResponseWriter, r *http.Request, status int, msg string) {
	d.render(w, r, status, "error", view{"Title": http.StatusText(status), "Message": msg})
}

// can reports whether the signed-in principal's role grants perm (false when nobody
// is signed in). Pages show a write control only when it would be allowed.
func can(r *http.Request, perm auth.Permission) bool {
	p, ok := auth.FromContext(r.Context())
	return ok && auth.Allows(p.Role, perm)
}
