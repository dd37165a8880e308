// Package server assembles the coordinator's HTTP surface: middleware (security
// headers, CORS, rate limit, body limit, timeouts, metrics, request logs), /health,
// /metrics and the REST API, and serves it with graceful shutdown.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/cors"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/coordinator/metrics"
	"github.com/fc-ci/fc/coordinator/openapi"
	"github.com/fc-ci/fc/storage"
)

// Routes is a part of the coordinator that serves routes under /api/v1.
type Routes interface {
	Routes(r chi.Router)
}

// Config configures the server.
type Config struct {
	Server  config.Server
	Version string
	Logger  *slog.Logger
	// APIRoutes are mounted under /api/v1 after authentication.
	APIRoutes []Routes
	// Mounts are handlers outside the API (e.g. /nix-cache), by path prefix.
	Mounts map[string]http.Handler
	// Middleware runs on every route (dashboard, API, mounts) after the built-in
	// middleware, in order: e.g. the session cookie's authentication.
	Middleware []func(http.Handler) http.Handler
	// BeforeShutdown runs when Serve's context ends, before the listener closes (the
	// fleet tells its agents to go elsewhere; hijacked connections are not closed by
	// http.Server.Shutdown).
	BeforeShutdown []func(context.Context)
}

// Server is the coordinator's HTTP server.
type Server struct {
	cfg     Config
	db      *storage.DB
	log     *slog.Logger
	handler http.Handler
}

// New builds the handler tree.
func New(cfg Config, db *storage.DB, m *metrics.Metrics) *Server {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, db: db, log: log}

	r := chi.NewRouter()
	r.Use(bodyDeadline(config.Seconds(cfg.Server.RequestTimeout)), securityHeaders, observe(m, log))
	switch {
	case cfg.Server.CorsPermissive:
		r.Use(cors.Handler(cors.Options{AllowedOrigins: []string{"*"}, AllowedMethods: corsMethods,
			AllowedHeaders: []string{"Authorization", "Content-Type"}, MaxAge: 600}))
	case len(cfg.Server.AllowedOrigins) > 0:
		r.Use(cors.Handler(cors.Options{AllowedOrigins: cfg.Server.AllowedOrigins, AllowedMethods: corsMethods,
			AllowedHeaders: []string{"Authorization", "Content-Type"}, AllowCredentials: true, MaxAge: 600}))
	}
	// After CORS, so a 429 still carries the CORS headers a browser needs to read it,
	// and preflight requests (answered by CORS) use no tokens.
	if cfg.Server.RateLimitRPS > 0 {
		trusted, _ := cfg.Server.TrustedProxyPrefixes() // validated with the configuration
		r.Use(newIPLimiter(cfg.Server.RateLimitRPS, cfg.Server.RateLimitBurst, trusted).middleware)
	}
	r.Use(bodyLimit(cfg.Server.MaxBodySize))
	r.Use(cfg.Middleware...)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		httpkit.WriteError(w, r, http.StatusNotFound, "no such route: "+r.URL.Path)
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		httpkit.WriteError(w, r, http.StatusMethodNotAllowed, r.Method+" is not allowed on "+r.URL.Path)
	})

	r.Get("/health", s.health)
	for prefix, h := range cfg.Mounts {
		r.Mount(prefix, h)
	}
	r.Method(http.MethodGet, "/metrics", m.Handler())
	// Outside the authenticated /api/v1 group: anyone may read the API's description.
	r.Method(http.MethodGet, "/api/v1/openapi.json", openapi.Handler())
	r.Route("/api/v1", func(r chi.Router) {
		r.Use(timeout(config.Seconds(cfg.Server.RequestTimeout)), auth.Middleware(db, httpkit.WriteError))
		for _, rt := range cfg.APIRoutes {
			rt.Routes(r)
		}
	})
	s.handler = r
	return s
}

var corsMethods = []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete}

// Handler is the whole HTTP surface (for tests and embedding).
func (s *Server) Handler() http.Handler { return s.handler }

type healthJSON struct {
	Status   string `json:"status"`
	Database string `json:"database"`
	Version  string `json:"version"`
}

// health answers 200 while PostgreSQL answers and 503 while it does not; the pool
// reconnects by itself, so it recovers without a restart.
func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	h := healthJSON{Status: "ok", Database: "ok", Version: s.cfg.Version}
	status := http.StatusOK
	if err := s.db.Ping(ctx); err != nil {
		h.Status, h.Database = "unavailable", "unreachable"
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, status, h)
}

// Serve answers on ln until ctx ends, then shuts down gracefully: no new connections,
// in-flight requests get up to grace to finish.
func (s *Server) Serve(ctx context.Context, ln net.Listener, grace time.Duration) error {
	hs := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: config.Seconds(s.cfg.Server.HeaderTimeout),
		IdleTimeout:       config.Seconds(s.cfg.Server.IdleTimeout),
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	s.log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	for _, f := range s.cfg.BeforeShutdown {
		f(sctx)
	}
	err := hs.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		return serr
	}
	if err != nil {
		return fmt.Errorf("graceful shutdown: %w", err)
	}
	return nil
}
