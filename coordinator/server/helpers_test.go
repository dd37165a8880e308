package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/app"
	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

// env is a real coordinator HTTP surface over a fresh, migrated database.
type env struct {
	t     *testing.T
	db    *storage.DB
	srv   *httptest.Server
	admin string // an admin API key
}

// newEnv starts the real handler over a new database; tweak, if not nil, adjusts the
// [server] section first.
func newEnv(t *testing.T, tweak func(*config.Server)) *env {
	t.Helper()
	db := storagetest.New(t)
	return newEnvOn(t, db, tweak)
}

func newEnvOn(t *testing.T, db *storage.DB, tweak func(*config.Server)) *env {
	t.Helper()
	return newEnvConfig(t, db, func(c *config.Config) {
		if tweak != nil {
			tweak(&c.Server)
		}
	})
}

// newEnvConfig is newEnvOn with the whole configuration to adjust.
func newEnvConfig(t *testing.T, db *storage.DB, tweak func(*config.Config)) *env {
	t.Helper()
	full := config.Defaults()
	if tweak != nil {
		tweak(&full)
	}
	full.StateDir = t.TempDir()
	// The same assembly as fc-coordinator serve: REST API, agent fleet, cache.
	a, err := app.New(app.Config{Settings: full, DB: db, Logger: slog.New(slog.DiscardHandler), Addr: "test"})
	if err != nil {
		t.Fatal(err)
	}
	s := a.Server
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	e := &env{t: t, db: db, srv: srv}
	e.admin = e.key(storage.RoleAdmin)
	return e
}

// in is e reporting to t (a subtest) instead of the test that made it.
func (e *env) in(t *testing.T) *env {
	c := *e
	c.t = t
	return &c
}

var keyCounter atomic.Int64

// key creates an API key with role and returns the secret.
func (e *env) key(role string) string {
	e.t.Helper()
	_, key := e.keyWithID(role)
	return key
}

// keyWithID creates an API key with role and returns its id and the secret.
func (e *env) keyWithID(role string) (int64, string) {
	e.t.Helper()
	k, key, err := auth.CreateKey(context.Background(), e.db, fmt.Sprintf("%s-%d", role, keyCounter.Add(1)), role)
	if err != nil {
		e.t.Fatalf("create %s key: %v", role, err)
	}
	return k.ID, key
}

// response is an answer with its body read.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

// apiError is the JSON error every failure answers with.
type apiError struct {
	Error string `json:"error"`
	Field string `json:"field"`
}

// do sends method path with body (nil: none; string or []byte: raw; anything else:
// marshalled to JSON) and key as a bearer key ("" sends no Authorization header).
func (e *env) do(method, path, key string, body any) response {
	e.t.Helper()
	return do(e.t, e.srv.URL, method, path, key, body)
}

func do(t testing.TB, base, method, path, key string, body any) response {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	case io.Reader:
		rd = b
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatalf("marshal request body: %v", err)
		}
		rd = bytes.NewReader(j)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		t.Fatalf("new request %s %s: %v", method, path, err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: b}
}

// want fails the test unless the answer has status.
func (r response) want(t testing.TB, status int) response {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d; body: %s", r.Status, status, r.Body)
	}
	return r
}

// decode unmarshals the body into v.
func (r response) decode(t testing.TB, v any) {
	t.Helper()
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("Content-Type %q, want application/json; body: %s", ct, r.Body)
	}
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("decode %s: %v", r.Body, err)
	}
}

// apiErr checks that the answer is a JSON error with status and returns it.
func (r response) apiErr(t testing.TB, status int) apiError {
	t.Helper()
	r.want(t, status)
	var e apiError
	r.decode(t, &e)
	if e.Error == "" {
		t.Fatalf("error answer without a message: %s", r.Body)
	}
	if strings.Contains(string(r.Body), "goroutine ") || strings.Contains(string(r.Body), ".go:") {
		t.Fatalf("error answer looks like a stack trace: %s", r.Body)
	}
	return e
}

// project and jobset are the API's shapes, decoded strictly enough to compare.
type project struct {
	ID               int64     `json:"id"`
	Name             string    `json:"name"`
	DisplayName      string    `json:"display_name"`
	Description      string    `json:"description"`
	RepositoryURL    string    `json:"repository_url"`
	Enabled          bool      `json:"enabled"`
	WebhookSecretSet bool      `json:"webhook_secret_set"`
	OwnerKeyID       int64     `json:"owner_key_id"` // 0: null, no owner
	OwnerKeyName     string    `json:"owner_key_name"`
	CreatedAt        time.Time `json:"created_at"`
	UpdatedAt        time.Time `json:"updated_at"`
}

type input struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Value string `json:"value"`
}

type jobset struct {
	ID               int64      `json:"id"`
	ProjectID        int64      `json:"project_id"`
	Project          string     `json:"project"`
	Name             string     `json:"name"`
	Description      string     `json:"description"`
	Branch           string     `json:"branch"`
	FlakeMode        bool       `json:"flake_mode"`
	NixExpression    string     `json:"nix_expression"`
	Inputs           []input    `json:"inputs"`
	CheckInterval    int        `json:"check_interval"`
	SchedulingShares int        `json:"scheduling_shares"`
	State            string     `json:"state"`
	KeepNr           int        `json:"keep_nr"`
	LastCheckedAt    *time.Time `json:"last_checked_at"`
	LastCheckError   string     `json:"last_check_error"`
	CreatedAt        time.Time  `json:"created_at"`
	UpdatedAt        time.Time  `json:"updated_at"`
}

type list[T any] struct {
	Items  []T   `json:"items"`
	Total  int64 `json:"total"`
	Limit  int   `json:"limit"`
	Offset int   `json:"offset"`
}

// obj is a JSON object literal for request bodies.
type obj = map[string]any

// createProject makes a project through the API as admin.
func (e *env) createProject(name string, extra obj) project {
	e.t.Helper()
	body := obj{"name": name, "repository_url": "https://example.org/" + name + ".git"}
	for k, v := range extra {
		body[k] = v
	}
	var p project
	e.do("POST", "/api/v1/projects", e.admin, body).want(e.t, http.StatusCreated).decode(e.t, &p)
	return p
}

// createJobset makes a jobset of project pid through the API as admin.
func (e *env) createJobset(pid int64, name string, extra obj) jobset {
	e.t.Helper()
	body := obj{"name": name}
	for k, v := range extra {
		body[k] = v
	}
	var j jobset
	e.do("POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", pid), e.admin, body).want(e.t, http.StatusCreated).decode(e.t, &j)
	return j
}

// count runs a SELECT count(*) query.
func (e *env) count(query string, args ...any) int64 {
	e.t.Helper()
	var n int64
	if err := e.db.Pool().QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", query, err)
	}
	return n
}

// snapshot is every row a write through the foundation API could touch, as JSON, so
// a failed request can be shown to have changed nothing at all.
func (e *env) snapshot() string {
	e.t.Helper()
	var s string
	err := e.db.Pool().QueryRow(context.Background(), `SELECT jsonb_build_object(
		'projects', (SELECT coalesce(jsonb_agg(to_jsonb(p) ORDER BY p.id), '[]') FROM projects p),
		'jobsets', (SELECT coalesce(jsonb_agg(to_jsonb(j) ORDER BY j.id), '[]') FROM jobsets j),
		'inputs', (SELECT coalesce(jsonb_agg(to_jsonb(i) ORDER BY i.jobset_id, i.name), '[]') FROM jobset_inputs i),
		'api_keys', (SELECT coalesce(jsonb_agg(to_jsonb(k) - 'last_used_at' ORDER BY k.id), '[]') FROM api_keys k),
		'agents', (SELECT coalesce(jsonb_agg(to_jsonb(a) ORDER BY a.id), '[]') FROM agents a),
		'tokens', (SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY t.id), '[]') FROM enrollment_tokens t),
		'builds', (SELECT coalesce(jsonb_agg(to_jsonb(b) ORDER BY b.id), '[]') FROM builds b)
	)::text`).Scan(&s)
	if err != nil {
		e.t.Fatalf("snapshot: %v", err)
	}
	return s
}

// eventually polls cond until it holds or the deadline passes. It is only for states
// nothing signals: whether the pool reaches a database that stopped or came back, a
// counter the metrics middleware bumps after the answer is written, a rate limiter's
// bucket refilling with time. Each caller says which.
func eventually(t testing.TB, deadline time.Duration, what string, cond func() bool) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("%s: not true after %v", what, deadline)
		}
		time.Sleep(50 * time.Millisecond) // the polling interval; see above for why there is no event to wait for
	}
}
