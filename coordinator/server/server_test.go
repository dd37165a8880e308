package server_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/metrics"
	"github.com/fc-ci/fc/coordinator/projectapi"
	"github.com/fc-ci/fc/coordinator/server"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/pgcluster"
	"github.com/fc-ci/fc/storage/storagetest"
)

type health struct {
	Status   string `json:"status"`
	Database string `json:"database"`
	Version  string `json:"version"`
}

func TestHealth_OKWhileTheDatabaseAnswers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	var h health
	r := e.do("GET", "/health", "", nil).want(t, http.StatusOK)
	r.decode(t, &h)
	if h.Status != "ok" || h.Database != "ok" || h.Version != protocol.BuildVersion {
		t.Errorf("health = %+v, want status ok, database ok, version %s", h, protocol.BuildVersion)
	}
	if cc := r.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q, want no-store", cc)
	}
}

// TestHealth_Is503WhileTheDatabaseIsDownAndRecovers stops PostgreSQL under a running
// server and starts it again: /health must follow without the server being rebuilt.
func TestHealth_Is503WhileTheDatabaseIsDownAndRecovers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// The socket lives in dir, whose path must stay short: not t.TempDir().
	dir, err := os.MkdirTemp("", "fc-h-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c, err := pgcluster.Start(ctx, pgcluster.Config{Dir: dir, ExtraArgs: []string{"-c", "fsync=off"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })

	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE fc"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	db, err := storage.Open(ctx, storage.Config{URL: c.URL("fc"), ConnectTimeout: 2 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	e := newEnvOn(t, db, nil)

	healthIs := func(status int, database string) func() bool {
		return func() bool {
			r := e.do("GET", "/health", "", nil)
			if r.Status != status {
				return false
			}
			var h health
			r.decode(t, &h)
			return h.Database == database
		}
	}
	if !healthIs(http.StatusOK, "ok")() {
		t.Fatal("health is not 200 before the outage")
	}
	e.createProject("before", nil)

	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	// Polled: the pool learns that the database is gone only when it next uses a connection.
	eventually(t, 30*time.Second, "/health answers 503 with the database stopped", healthIs(http.StatusServiceUnavailable, "unreachable"))
	// A database-backed API request fails cleanly too, never with a 500.
	if r := e.do("GET", "/api/v1/projects", "", nil); r.Status != http.StatusServiceUnavailable {
		t.Errorf("GET /api/v1/projects during the outage = %d %s, want 503", r.Status, r.Body)
	} else {
		r.apiErr(t, http.StatusServiceUnavailable)
	}

	c2, err := pgcluster.Start(ctx, pgcluster.Config{Dir: dir, ExtraArgs: []string{"-c", "fsync=off"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c2.Stop() })
	// Polled: the pool may still hold a dead connection or two; it finds them out on use.
	eventually(t, 30*time.Second, "/health answers 200 again after the database restarted", healthIs(http.StatusOK, "ok"))
	e.do("GET", "/api/v1/projects/before", "", nil).want(t, http.StatusOK)
}

func TestMetrics_ExportsCountsHTTPAndRuntime(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.createProject("p", nil)
	var body string
	scrape := func() bool {
		r := e.do("GET", "/metrics", "", nil).want(t, http.StatusOK)
		body = string(r.Body)
		return regexp.MustCompile(`(?m)^fc_http_requests_total\{[^}]*route="/api/v1/projects"[^}]*\} 1$`).MatchString(body)
	}
	// The request is counted after its answer is written, and nothing signals that: poll.
	eventually(t, 10*time.Second, "fc_http_requests_total counts POST /api/v1/projects", scrape)
	for _, re := range []string{
		`(?m)^fc_projects_total 1$`,
		`(?m)^fc_agents_connected 0$`,
		`(?m)^fc_builds_total 0$`,
		`(?m)^fc_http_requests_total\{code="201",method="POST",route="/api/v1/projects"\} 1$`,
		`(?m)^fc_http_request_duration_seconds_count\{method="POST",route="/api/v1/projects"\} 1$`,
		`(?m)^go_goroutines \d+$`,
	} {
		if !regexp.MustCompile(re).MatchString(body) {
			t.Errorf("/metrics does not match %s", re)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", body)
	}
}

func TestServer_SecurityHeadersOnEveryAnswer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	for _, r := range []struct {
		method, path, key string
		status            int
	}{
		{"GET", "/health", "", 200},
		{"GET", "/metrics", "", 200},
		{"GET", "/api/v1/projects", "", 200},
		{"GET", "/api/v1/projects/nope", "", 404},
		{"POST", "/api/v1/projects", "", 401},
		{"GET", "/no/such/route", "", 404},
	} {
		resp := e.do(r.method, r.path, r.key, nil).want(t, r.status)
		for h, want := range map[string]string{
			"X-Content-Type-Options": "nosniff",
			"X-Frame-Options":        "DENY",
			"Referrer-Policy":        "strict-origin-when-cross-origin",
		} {
			if got := resp.Header.Get(h); got != want {
				t.Errorf("%s %s: %s %q, want %q", r.method, r.path, h, got, want)
			}
		}
	}
}

func TestServer_BodyOverMaxBodySizeIs413(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(s *config.Server) { s.MaxBodySize = 1024 })
	big := `{"name":"big","repository_url":"/srv/r","description":"` + strings.Repeat("x", 2000) + `"}`
	// With a Content-Length, and streamed without one (chunked).
	e.do("POST", "/api/v1/projects", e.admin, big).apiErr(t, http.StatusRequestEntityTooLarge)
	e.do("POST", "/api/v1/projects", e.admin, io.MultiReader(strings.NewReader(big))).apiErr(t, http.StatusRequestEntityTooLarge)
	if n := e.count(`SELECT count(*) FROM projects`); n != 0 {
		t.Errorf("%d projects after refused bodies, want 0", n)
	}
	// Under the limit is fine.
	e.do("POST", "/api/v1/projects", e.admin, `{"name":"small","repository_url":"/srv/r"}`).want(t, http.StatusCreated)
}

func TestServer_RateLimitIs429WithRetryAfter(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(s *config.Server) { s.RateLimitRPS, s.RateLimitBurst = 1, 2 })
	e.do("GET", "/api/v1/projects", "", nil).want(t, http.StatusOK)
	e.do("GET", "/api/v1/projects", "", nil).want(t, http.StatusOK)
	r := e.do("GET", "/api/v1/projects", "", nil)
	r.apiErr(t, http.StatusTooManyRequests)
	ra, err := strconv.Atoi(r.Header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > 2 {
		t.Errorf("Retry-After %q, want whole seconds, 1 at 1 request/s", r.Header.Get("Retry-After"))
	}
	if r.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("429 without the security headers")
	}
	// A token comes back after a second: the wait for time to pass is what is tested.
	eventually(t, 10*time.Second, "a request passes again after Retry-After", func() bool {
		return e.do("GET", "/api/v1/projects", "", nil).Status == http.StatusOK
	})
}

func TestServer_RateLimitIsPerClientAddress(t *testing.T) {
	t.Parallel()
	db := storagetest.New(t)
	cfg := config.Defaults().Server
	cfg.RateLimitRPS, cfg.RateLimitBurst = 1, 1
	h := server.New(server.Config{Server: cfg, APIRoutes: []server.Routes{projectapi.New(projectapi.Config{}, db)}}, db, metrics.New(db, nil)).Handler()
	get := func(remote string) int {
		req := httptest.NewRequest("GET", "/api/v1/projects", nil)
		req.RemoteAddr = remote
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code
	}
	if got := get("192.0.2.1:1000"); got != http.StatusOK {
		t.Fatalf("first request from A = %d, want 200", got)
	}
	if got := get("192.0.2.1:1001"); got != http.StatusTooManyRequests {
		t.Errorf("second request from A (another port) = %d, want 429", got)
	}
	if got := get("192.0.2.2:1000"); got != http.StatusOK {
		t.Errorf("first request from B = %d, want 200: A's limit must not apply to B", got)
	}
}

// Behind a trusted reverse proxy the limit keys on the client its X-Forwarded-For
// names; the header is ignored from anyone else, and a client cannot dodge the limit
// by prepending addresses of its own.
func TestServer_RateLimitKeysOnForwardedClientOnlyBehindTrustedProxies(t *testing.T) {
	t.Parallel()
	db := storagetest.New(t)
	cfg := config.Defaults().Server
	cfg.RateLimitRPS, cfg.RateLimitBurst = 0.001, 1
	cfg.TrustedProxies = []string{"127.0.0.1", "10.1.0.0/16"}
	h := server.New(server.Config{Server: cfg, APIRoutes: []server.Routes{projectapi.New(projectapi.Config{}, db)}}, db, metrics.New(db, nil)).Handler()
	get := func(remote, xff string) int {
		req := httptest.NewRequest("GET", "/api/v1/projects", nil)
		req.RemoteAddr = remote
		if xff != "" {
			req.Header.Set("X-Forwarded-For", xff)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w.Code
	}
	steps := []struct {
		remote, xff string
		want        int
		why         string
	}{
		{"127.0.0.1:5000", "192.0.2.1", 200, "client A through the proxy"},
		{"127.0.0.1:5001", "192.0.2.2", 200, "client B through the same proxy has its own bucket"},
		{"127.0.0.1:5002", "192.0.2.1", 429, "client A again"},
		{"127.0.0.1:5003", "198.51.100.9, 192.0.2.1", 429, "client A claiming another address first"},
		{"10.1.2.3:5000", "192.0.2.1, 10.1.9.9", 429, "client A through two trusted proxies"},
		{"192.0.2.50:7000", "203.0.113.1", 200, "an untrusted peer is keyed on itself"},
		{"192.0.2.50:7001", "203.0.113.2", 429, "and cannot reset its bucket with the header"},
		{"127.0.0.1:5004", "", 200, "the proxy's own request (no header) is the proxy's"},
	}
	for _, st := range steps {
		if got := get(st.remote, st.xff); got != st.want {
			t.Errorf("%s (from %s, X-Forwarded-For %q) = %d, want %d", st.why, st.remote, st.xff, got, st.want)
		}
	}
}

func TestServer_CORSAllowsOnlyConfiguredOrigins(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(s *config.Server) { s.AllowedOrigins = []string{"https://ok.example"} })
	send := func(method, origin string, hdr map[string]string) *http.Response {
		req, err := http.NewRequest(method, e.srv.URL+"/api/v1/projects", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Origin", origin)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	ok := send("GET", "https://ok.example", nil)
	if ok.StatusCode != http.StatusOK || ok.Header.Get("Access-Control-Allow-Origin") != "https://ok.example" {
		t.Errorf("allowed origin: status %d, Access-Control-Allow-Origin %q, want 200 https://ok.example",
			ok.StatusCode, ok.Header.Get("Access-Control-Allow-Origin"))
	}
	if got := ok.Header.Get("Access-Control-Allow-Credentials"); got != "true" {
		t.Errorf("allowed origin: Access-Control-Allow-Credentials %q, want true", got)
	}
	evil := send("GET", "https://evil.example", nil)
	if got := evil.Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("other origin: Access-Control-Allow-Origin %q, want none", got)
	}
	pre := send("OPTIONS", "https://ok.example", map[string]string{
		"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "Authorization, Content-Type"})
	if pre.StatusCode >= 300 || pre.Header.Get("Access-Control-Allow-Origin") != "https://ok.example" ||
		!strings.Contains(pre.Header.Get("Access-Control-Allow-Methods"), "POST") {
		t.Errorf("preflight from the allowed origin: status %d, headers %v", pre.StatusCode, pre.Header)
	}
	evilPre := send("OPTIONS", "https://evil.example", map[string]string{"Access-Control-Request-Method": "POST"})
	if got := evilPre.Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("preflight from another origin: Access-Control-Allow-Origin %q, want none", got)
	}
}

func TestServer_NoCORSHeadersWithoutConfiguredOrigins(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	req, _ := http.NewRequest("GET", e.srv.URL+"/api/v1/projects", nil)
	req.Header.Set("Origin", "https://ok.example")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("default config: Access-Control-Allow-Origin %q, want none", got)
	}
}

func TestServer_UnknownRouteIs404JSON(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	for _, path := range []string{"/api/v1/nope", "/api/v2/projects"} {
		ae := e.do("GET", path, "", nil).apiErr(t, http.StatusNotFound)
		if !strings.Contains(ae.Error, path) {
			t.Errorf("GET %s: error %q does not name the path", path, ae.Error)
		}
	}
	e.do("PATCH", "/api/v1/projects", e.admin, `{}`).apiErr(t, http.StatusMethodNotAllowed)
	// Outside the API a browser gets the dashboard's page.
	if r := e.do("GET", "/nope", "", nil); r.Status != http.StatusNotFound || !strings.Contains(string(r.Body), "There is no page at /nope") {
		t.Errorf("GET /nope: %d %s", r.Status, r.Body)
	}
}

func TestServer_RateLimitedAnswerCarriesCORSHeaders(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(s *config.Server) {
		s.RateLimitRPS, s.RateLimitBurst = 0.001, 1
		s.AllowedOrigins = []string{"https://ok.example"}
	})
	get := func() *http.Response {
		req, _ := http.NewRequest("GET", e.srv.URL+"/api/v1/projects", nil)
		req.Header.Set("Origin", "https://ok.example")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if r := get(); r.StatusCode != http.StatusOK {
		t.Fatalf("first request: %d", r.StatusCode)
	}
	r := get()
	if r.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("second request: %d, want 429", r.StatusCode)
	}
	if got := r.Header.Get("Access-Control-Allow-Origin"); got != "https://ok.example" {
		t.Errorf("429 Access-Control-Allow-Origin = %q: a browser could not read Retry-After", got)
	}
}
