package server

// What each middleware costs a cache read (issue 21): GET /nix-cache/<hash>.narinfo
// through one middleware at a time, then through the whole server chain, to a
// handler that writes a fixed narinfo. No network: ns/op and allocs/op are the
// middleware's own.
//
//	go test -run '^$' -bench CacheChain -benchmem ./coordinator/server/

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/metrics"
)

const benchNarinfo = "StorePath: /nix/store/0c5ph2nwh1ambhm9w1h8zzb0h8lffpc1-bench\nURL: nar/x.nar.zst\n"

// benchCacheHandler stands for the cache's routes: a chi router answering the
// narinfo route, as cache.Handler does.
func benchCacheHandler() http.Handler {
	r := chi.NewRouter()
	r.Get("/{file}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/x-nix-narinfo")
		_, _ = io.WriteString(w, benchNarinfo)
	})
	return r
}

// discardWriter is a ResponseWriter that keeps nothing, cheaper than a recorder.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(int)             {}

func runChain(b *testing.B, h http.Handler) {
	b.Helper()
	req := httptest.NewRequest(http.MethodGet, "/nix-cache/0c5ph2nwh1ambhm9w1h8zzb0h8lffpc1.narinfo", nil)
	req.RemoteAddr = "127.0.0.1:40000"
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		h.ServeHTTP(w, req)
	}
}

func BenchmarkCacheChain(b *testing.B) {
	m := metrics.New(nil, nil)
	log := slog.New(slog.DiscardHandler)
	mount := func(h http.Handler) http.Handler {
		r := chi.NewRouter()
		r.Mount("/nix-cache", h)
		return r
	}
	srv := config.Defaults().Server
	b.Run("handler", func(b *testing.B) { runChain(b, http.StripPrefix("/nix-cache", benchCacheHandler())) })
	b.Run("mounted", func(b *testing.B) { runChain(b, mount(benchCacheHandler())) })
	b.Run("securityHeaders", func(b *testing.B) { runChain(b, securityHeaders(mount(benchCacheHandler()))) })
	b.Run("observe", func(b *testing.B) { runChain(b, observe(m, log)(mount(benchCacheHandler()))) })
	b.Run("bodyDeadline", func(b *testing.B) { runChain(b, bodyDeadline(30)(mount(benchCacheHandler()))) })
	b.Run("bodyLimit", func(b *testing.B) { runChain(b, bodyLimit(10<<20)(mount(benchCacheHandler()))) })
	b.Run("rateLimit", func(b *testing.B) {
		runChain(b, newIPLimiter(1e9, 1e9, nil).middleware(mount(benchCacheHandler())))
	})
	b.Run("server", func(b *testing.B) {
		s := New(Config{Server: srv, Logger: log, Mounts: map[string]http.Handler{"/nix-cache": benchCacheHandler()}}, nil, m)
		runChain(b, s.Handler())
	})
	b.Run("server+ratelimit", func(b *testing.B) {
		srv := srv
		srv.RateLimitRPS, srv.RateLimitBurst = 1e9, 1e9
		s := New(Config{Server: srv, Logger: log, Mounts: map[string]http.Handler{"/nix-cache": benchCacheHandler()}}, nil, m)
		runChain(b, s.Handler())
	})
}
