package openapi_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	vconfig "github.com/pb33f/libopenapi-validator/config"
	verrors "github.com/pb33f/libopenapi-validator/errors"
	"golang.org/x/crypto/ssh"

	"github.com/fc-ci/fc/coordinator/app"
	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/openapi"
	"github.com/fc-ci/fc/storage"
)

// answers sends real requests to a real coordinator and checks each answer against
// the document's schema for its route and status.
type answers struct {
	t     *testing.T
	base  string
	v     validator.Validator
	admin string
	app   *app.App
	// readOnly is a read-only key.
	readOnly string
	// seen counts the requests checked.
	seen map[string]bool
	// headers are added to every request while set.
	headers map[string]string
}

func newAnswers(t *testing.T) (*answers, *storage.DB) {
	t.Helper()
	a, db := coordinator(t, nil)
	srv := httptest.NewServer(a.Server.Handler())
	t.Cleanup(srv.Close)
	doc, err := libopenapi.NewDocument(openapi.Document())
	if err != nil {
		t.Fatal(err)
	}
	v, errs := validator.NewValidator(doc, vconfig.WithFormatAssertions())
	if len(errs) > 0 {
		t.Fatalf("new validator: %v", errs)
	}
	an := &answers{t: t, base: srv.URL, v: v, app: a, seen: map[string]bool{}}
	an.admin = an.key(db, storage.RoleAdmin)
	return an, db
}

func (an *answers) key(db *storage.DB, role string) string {
	an.t.Helper()
	_, key, err := auth.CreateKey(context.Background(), db, fmt.Sprintf("%s-%d", role, time.Now().UnixNano()), role)
	if err != nil {
		an.t.Fatal(err)
	}
	return key
}

// do sends the request, fails unless the answer has status, checks it against the
// document (a success's request too) and returns its body.
func (an *answers) do(method, path, key string, body any, status int) []byte {
	an.t.Helper()
	var raw []byte
	switch b := body.(type) {
	case nil:
	case string:
		raw = []byte(b)
	default:
		var err error
		if raw, err = json.Marshal(b); err != nil {
			an.t.Fatal(err)
		}
	}
	newReq := func() *http.Request {
		req, err := http.NewRequestWithContext(context.Background(), method, an.base+path, bytes.NewReader(raw))
		if err != nil {
			an.t.Fatal(err)
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		switch {
		case strings.HasPrefix(key, "cookie:"): // a dashboard session: cookie:<token>:<csrf>
			parts := strings.Split(key, ":")
			req.AddCookie(&http.Cookie{Name: "fc_session", Value: parts[1]})
			req.Header.Set("X-CSRF-Token", parts[2])
		case key != "":
			req.Header.Set("Authorization", "Bearer "+key)
		}
		for k, v := range an.headers {
			req.Header.Set(k, v)
		}
		return req
	}
	resp, err := http.DefaultClient.Do(newReq())
	if err != nil {
		an.t.Fatalf("%s %s: %v", method, path, err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		an.t.Fatal(err)
	}
	if resp.StatusCode != status {
		an.t.Fatalf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, status, got)
	}
	resp.Body = io.NopCloser(bytes.NewReader(got))
	var ok bool
	var errs []string
	if status < 300 {
		ok, errs = wrap(an.v.ValidateHttpRequestResponse(newReq(), resp))
	} else {
		ok, errs = wrap(an.v.ValidateHttpResponse(newReq(), resp))
	}
	if !ok {
		for _, e := range errs {
			an.t.Errorf("%s %s → %d: %s", method, path, status, e)
		}
		an.t.Errorf("  the answer: %.600s", got)
	}
	an.seen[method+" "+path] = true
	return got
}

// id reads the "id" of a JSON answer.
func id(t *testing.T, body []byte) int64 {
	t.Helper()
	var v struct {
		ID int64 `json:"id"`
	}
	if err := json.Unmarshal(body, &v); err != nil || v.ID == 0 {
		t.Fatalf("no id in %s (%v)", body, err)
	}
	return v.ID
}

// TestOpenAPI_RealAnswers: the document is honest about what the API answers, its
// successes and its errors, over a real coordinator and PostgreSQL.
func TestOpenAPI_RealAnswers(t *testing.T) {
	t.Parallel()
	an, db := newAnswers(t)
	an.readOnly = an.key(db, storage.RoleReadOnly)
	an.basics()
	pid, jid, off := an.projects()
	ev1 := an.evaluationsAndBuilds(db, jid, off)
	an.channels(pid, ev1)
	an.agents()
	an.people(db)
	an.bites()
	an.coverage()
}

// basics: health, metrics, the document, the cache.
func (an *answers) basics() {
	an.do("GET", "/health", "", nil, 200)
	an.do("GET", "/metrics", "", nil, 200)
	an.do("GET", "/api/v1/openapi.json", "", nil, 200)
	an.do("GET", "/api/v1/cache/public-key", "", nil, 200)
	an.do("GET", "/nix-cache/nix-cache-info", "", nil, 200)
	an.do("HEAD", "/nix-cache/nix-cache-info", "", nil, 200)
	an.do("GET", "/nix-cache/00000000000000000000000000000000.narinfo", "", nil, 404)
	an.do("GET", "/nix-cache/nar/x.nar", "", nil, 404)
	an.do("HEAD", "/nix-cache/00000000000000000000000000000000.narinfo", "", nil, 404)
	an.do("HEAD", "/nix-cache/nar/x.nar", "", nil, 404)
	an.do("GET", "/nix-cache/log/00000000000000000000000000000000-x.drv", "", nil, 404)
	an.do("HEAD", "/nix-cache/log/00000000000000000000000000000000-x.drv", "", nil, 404)
}

// projects: projects and jobsets, with their errors.
func (an *answers) projects() (pid, jid, off int64) {
	t, admin, readOnly := an.t, an.admin, an.readOnly
	an.do("GET", "/api/v1/projects", "", nil, 200)
	an.do("GET", "/api/v1/projects?limit=0", "", nil, 422)
	an.do("GET", "/api/v1/projects", "fc_00000000000000000000000000000000", nil, 401)
	newProject := map[string]any{"name": "oa", "repository_url": "https://example.org/oa.git", "description": "d",
		"forge": map[string]any{"type": "github", "repository": "o/oa"}, "notifications": map[string]any{"email": []string{"a@example.org"}, "on": "failure"}}
	an.do("POST", "/api/v1/projects", "", newProject, 401)
	an.do("POST", "/api/v1/projects", readOnly, newProject, 403)
	an.do("POST", "/api/v1/projects", admin, "{", 400)
	an.do("POST", "/api/v1/projects", admin, map[string]any{"name": "oa", "bogus": 1}, 422)
	pid = id(t, an.do("POST", "/api/v1/projects", admin, newProject, 201))
	an.do("POST", "/api/v1/projects", admin, newProject, 409)
	an.do("GET", "/api/v1/projects/oa", "", nil, 200)
	an.do("GET", fmt.Sprintf("/api/v1/projects/%d", pid), readOnly, nil, 200)
	an.do("GET", "/api/v1/projects/nope", "", nil, 404)
	an.do("PUT", "/api/v1/projects/oa", admin, map[string]any{"display_name": "OA", "forge": nil}, 200)
	an.do("PUT", "/api/v1/projects/oa", readOnly, map[string]any{"display_name": "x"}, 403)

	jobset := map[string]any{"name": "main", "branch": "main", "inputs": []map[string]any{{"name": "x", "type": "string", "value": "1"}}}
	jid = id(t, an.do("POST", "/api/v1/projects/oa/jobsets", admin, jobset, 201))
	an.do("POST", "/api/v1/projects/oa/jobsets", admin, jobset, 409)
	an.do("POST", "/api/v1/projects/oa/jobsets", admin, map[string]any{"name": "x", "state": "sleepy"}, 422)
	an.do("GET", "/api/v1/projects/oa/jobsets", "", nil, 200)
	an.do("GET", "/api/v1/projects/oa/jobsets?all=maybe", "", nil, 422)
	an.do("GET", "/api/v1/projects/oa/jobsets/main", "", nil, 200)
	an.do("GET", "/api/v1/projects/oa/jobsets/none", "", nil, 404)
	an.do("PUT", "/api/v1/projects/oa/jobsets/main", admin, map[string]any{"description": "the main branch"}, 200)
	off = id(t, an.do("POST", "/api/v1/projects/oa/jobsets", admin, map[string]any{"name": "off", "state": "disabled"}, 201))

	return pid, jid, off
}

// evaluationsAndBuilds: made in the database as the scheduler would.
func (an *answers) evaluationsAndBuilds(db *storage.DB, jid, off int64) (ev1 int64) {
	t, admin, readOnly := an.t, an.admin, an.readOnly
	ev1, ev2, built, aborted := seedBuilds(t, db, jid)
	an.do("GET", "/api/v1/evaluations", "", nil, 200)
	an.do("GET", "/api/v1/evaluations?jobset_id=oa/main&status=succeeded", "", nil, 200)
	an.do("GET", "/api/v1/evaluations?jobset_id=oa/none", "", nil, 422)
	an.do("GET", "/api/v1/evaluations?status=sleepy", "", nil, 422)
	an.do("GET", fmt.Sprintf("/api/v1/evaluations/%d", ev2), "", nil, 200)
	an.do("GET", "/api/v1/evaluations/99999999", "", nil, 404)
	an.do("GET", fmt.Sprintf("/api/v1/evaluations/%d/compare?with=%d", ev2, ev1), "", nil, 200)
	an.do("GET", fmt.Sprintf("/api/v1/evaluations/%d/compare", ev2), "", nil, 422)
	an.do("POST", "/api/v1/evaluations/trigger", admin, map[string]any{"jobset_id": "oa/off"}, 409)
	an.do("POST", "/api/v1/evaluations/trigger", admin, map[string]any{"jobset_id": off, "force": true}, 409)
	an.do("POST", "/api/v1/evaluations/trigger", admin, map[string]any{"jobset_id": "oa/none"}, 422)
	an.do("POST", "/api/v1/evaluations/trigger", readOnly, map[string]any{"jobset_id": "oa/main"}, 403)

	an.do("GET", "/api/v1/builds", "", nil, 200)
	an.do("GET", fmt.Sprintf("/api/v1/builds?evaluation_id=%d&jobset_id=oa/main&status=succeeded", ev2), "", nil, 200)
	an.do("GET", "/api/v1/builds?status=sleepy", "", nil, 422)
	an.do("GET", fmt.Sprintf("/api/v1/builds?before_id=%d&limit=1", aborted), "", nil, 200)
	an.do("GET", "/api/v1/builds?before_id=0", "", nil, 422)
	an.do("GET", "/api/v1/builds?offset=100", "", nil, 200)
	an.do("GET", "/api/v1/builds/stats", "", nil, 200)
	an.do("GET", "/api/v1/builds/recent", "", nil, 200)
	an.do("GET", fmt.Sprintf("/api/v1/builds/%d", built), "", nil, 200)
	var ab struct {
		Reason string `json:"reason"`
	}
	if err := json.Unmarshal(an.do("GET", fmt.Sprintf("/api/v1/builds/%d", aborted), "", nil, 200), &ab); err != nil || ab.Reason == "" {
		t.Errorf("an aborted build states no reason (%v)", err)
	}
	an.do("GET", "/api/v1/builds/99999999", "", nil, 404)
	an.do("GET", fmt.Sprintf("/api/v1/builds/%d/steps", built), "", nil, 200)
	an.do("GET", fmt.Sprintf("/api/v1/builds/%d/log", aborted), "", nil, 200) // it ran and printed nothing
	an.do("GET", fmt.Sprintf("/api/v1/builds/%d/log?step=99999999", aborted), "", nil, 404)
	an.do("GET", fmt.Sprintf("/api/v1/builds/%d/log?tail=0", built), "", nil, 422)
	an.do("GET", fmt.Sprintf("/api/v1/builds/%d/products/1/download", built), "", nil, 404)
	an.do("PUT", fmt.Sprintf("/api/v1/builds/%d/keep/1", built), admin, nil, 200)
	an.do("PUT", fmt.Sprintf("/api/v1/builds/%d/keep/2", built), admin, nil, 422)
	an.do("POST", fmt.Sprintf("/api/v1/builds/%d/cancel", built), admin, nil, 409)
	an.do("POST", fmt.Sprintf("/api/v1/builds/%d/bump", built), readOnly, nil, 403)
	an.do("POST", fmt.Sprintf("/api/v1/builds/%d/restart", aborted), admin, nil, 200)
	an.do("POST", fmt.Sprintf("/api/v1/evaluations/%d/restart-failed", ev1), admin, nil, 200)
	an.do("POST", fmt.Sprintf("/api/v1/evaluations/%d/cancel", ev2), admin, nil, 200)
	an.do("GET", "/api/v1/queue", "", nil, 200)
	return ev1
}

// channels: one follows the jobset.
func (an *answers) channels(pid, ev1 int64) {
	admin, readOnly := an.admin, an.readOnly
	// Its aggregate job never succeeds, so it moves only when promoted.
	an.do("POST", "/api/v1/channels", admin, map[string]any{"name": "stable", "jobset": "oa/main", "aggregate": "release"}, 201)
	an.do("POST", "/api/v1/channels", admin, map[string]any{"name": "stable", "jobset": "oa/main"}, 409)
	an.do("POST", "/api/v1/channels", admin, map[string]any{"name": "x", "project": pid, "jobset": "none"}, 422)
	an.do("GET", "/api/v1/channels", "", nil, 200)
	an.do("GET", "/api/v1/channels/stable", "", nil, 200)
	an.do("GET", "/api/v1/channels/stable/latest", "", nil, 404)
	an.do("GET", "/channel/stable/binary-cache-url", "", nil, 404)
	an.do("POST", "/api/v1/channels/stable/promote", admin, map[string]any{"evaluation_id": 99999999}, 422)
	an.do("POST", "/api/v1/channels/stable/promote", admin, map[string]any{"evaluation_id": ev1}, 200)
	an.do("GET", "/api/v1/channels/stable/latest", "", nil, 200)
	an.do("GET", "/channel/stable/binary-cache-url", "", nil, 200)
	an.do("GET", "/channel/stable", "", nil, 200)
	an.do("GET", "/channel/stable/", "", nil, 200)
	an.do("GET", "/channel/stable/store-paths.xz", "", nil, 200)
	an.do("DELETE", "/api/v1/channels/stable", readOnly, nil, 403)
	an.do("DELETE", "/api/v1/channels/stable", admin, nil, 204)
	an.do("GET", "/api/v1/channels/stable", "", nil, 404)
}

// agents: registration, state, enrollment.
func (an *answers) agents() {
	t, admin := an.t, an.admin
	agentID := id(t, an.do("POST", "/api/v1/agents", admin, map[string]any{"name": "builder1", "public_key": publicKey(t)}, 201))
	an.do("POST", "/api/v1/agents", admin, map[string]any{"name": "builder1", "public_key": publicKey(t)}, 409)
	an.do("POST", "/api/v1/agents", admin, map[string]any{"public_key": "ssh-rsa AAAA"}, 422)
	an.do("GET", "/api/v1/agents", "", nil, 200)
	an.do("GET", "/api/v1/cluster", admin, nil, 200)
	an.do("GET", "/api/v1/cluster", an.readOnly, nil, 403)
	an.do("GET", fmt.Sprintf("/api/v1/agents/%d", agentID), "", nil, 200)
	an.do("GET", "/api/v1/agents/99999999", "", nil, 404)
	an.do("PUT", fmt.Sprintf("/api/v1/agents/%d", agentID), admin, map[string]any{"push": true}, 200)
	for _, action := range []string{"drain", "disable", "enable"} {
		an.do("POST", fmt.Sprintf("/api/v1/agents/%d/%s", agentID, action), admin, nil, 200)
	}
	an.do("POST", "/api/v1/agents/tokens", admin, map[string]any{"name": "builder2", "uses": 2}, 201)
	an.do("POST", "/api/v1/agents/tokens", admin, map[string]any{"name": "builder2", "uses": 0}, 422)
	an.do("DELETE", fmt.Sprintf("/api/v1/agents/%d", agentID), admin, nil, 204)
	an.do("POST", fmt.Sprintf("/api/v1/agents/%d/enable", agentID), admin, nil, 409)
}

// people: accounts, keys, deliveries, search, webhooks, triggers and declarations.
func (an *answers) people(db *storage.DB) {
	t, admin, readOnly := an.t, an.admin, an.readOnly
	uid := id(t, an.do("POST", "/api/v1/users", admin, map[string]any{"username": "ann", "password": "correct horse", "role": "read-only"}, 201))
	an.do("POST", "/api/v1/users", admin, map[string]any{"username": "ann", "password": "correct horse", "role": "read-only"}, 409)
	an.do("GET", "/api/v1/users", admin, nil, 200)
	an.do("GET", "/api/v1/users", readOnly, nil, 403)
	an.do("GET", fmt.Sprintf("/api/v1/users/%d", uid), admin, nil, 200)
	an.do("PUT", fmt.Sprintf("/api/v1/users/%d", uid), admin, map[string]any{"full_name": "Ann"}, 200)
	an.do("DELETE", fmt.Sprintf("/api/v1/users/%d", uid), admin, nil, 204)
	an.do("GET", "/api/v1/me", "", nil, 401)
	an.do("GET", "/api/v1/me", admin, nil, 403)
	an.me(db)
	kid := id(t, an.do("POST", "/api/v1/api-keys", admin, map[string]any{"name": "ci", "role": "eval-jobset"}, 201))
	an.do("POST", "/api/v1/api-keys", admin, map[string]any{"name": "ci2", "role": "emperor"}, 422)
	an.do("GET", "/api/v1/api-keys", admin, nil, 200)
	an.do("DELETE", fmt.Sprintf("/api/v1/api-keys/%d", kid), admin, nil, 204)
	an.do("GET", "/api/v1/notifications/deliveries", admin, nil, 200)
	an.do("GET", "/api/v1/notifications/deliveries?status=lost", admin, nil, 422)
	an.do("GET", "/api/v1/search?q=oa", "", nil, 200)
	an.do("GET", "/api/v1/search?q=o", "", nil, 422)
	an.do("POST", "/api/v1/webhooks/oa/github", "", `{}`, 401)
	an.do("POST", "/api/v1/webhooks/nope/github", "", `{}`, 404)
	an.webhook()
	an.trigger()
	an.declared(db)

	an.do("DELETE", "/api/v1/projects/oa/jobsets/main", admin, nil, 204)
	an.do("DELETE", "/api/v1/projects/oa", admin, nil, 204)
}

// me exercises the signed-in user's routes with a real session.
func (an *answers) me(db *storage.DB) {
	t := an.t
	uid := id(t, an.do("POST", "/api/v1/users", an.admin, map[string]any{"username": "bob", "password": "correct horse",
		"role": "read-only", "email": "bob@example.org"}, 201))
	hash := sha256.Sum256([]byte("bobs-session"))
	if err := db.CreateSession(context.Background(), hash[:], &uid, nil, "bobs-csrf", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	bob := "cookie:bobs-session:bobs-csrf"
	an.do("GET", "/api/v1/me", bob, nil, 200)
	an.do("PUT", "/api/v1/me", bob, map[string]any{"full_name": "Bob"}, 200)
	an.do("PUT", "/api/v1/me", bob, map[string]any{"email": "not an address"}, 422)
	an.do("POST", "/api/v1/me/starred-jobs", bob, map[string]any{"jobset_id": "oa/main", "job": "hello"}, 201)
	an.do("POST", "/api/v1/me/starred-jobs", bob, map[string]any{"jobset_id": "oa/none", "job": "hello"}, 422)
	an.do("GET", "/api/v1/me/starred-jobs", bob, nil, 200)
	an.do("DELETE", "/api/v1/me/starred-jobs?jobset_id=oa/main&job=hello", bob, nil, 204)
	an.do("POST", "/api/v1/me/password", bob, map[string]any{"current": "wrong horse", "new": "battery staple"}, 403)
	an.do("POST", "/api/v1/me/password", bob, map[string]any{"current": "correct horse", "new": "battery staple"}, 204)
}

// declared applies a declarative configuration and checks what the API says of
// declared objects and its 409s for changes to them.
func (an *answers) declared(db *storage.DB) {
	t := an.t
	secret := "fc_" + strings.Repeat("ab", 16)
	keyHash := sha256.Sum256([]byte(secret))
	pw := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pw, []byte("declared password"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := config.Declarations{
		File: "/etc/fc/coordinator.toml",
		Projects: []config.DeclaredProject{{Name: "decl", RepositoryURL: "https://example.org/decl.git",
			Jobsets: []config.DeclaredJobset{{Name: "main", Branch: "main"}}}},
		APIKeys: []config.DeclaredAPIKey{{Name: "declared-key", Role: "read-only", KeyHash: hex.EncodeToString(keyHash[:])}},
		Agents:  []config.DeclaredAgent{{Name: "declared-agent", PublicKey: publicKey(t)}},
		Users:   []config.DeclaredUser{{Username: "carol", Role: "read-only", PasswordFile: pw}},
	}
	if err := an.app.ApplyDeclarations(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	find := func(list, name, field string) int64 {
		var page struct {
			Items []map[string]any `json:"items"`
		}
		if err := json.Unmarshal(an.do("GET", list+"?limit=500", an.admin, nil, 200), &page); err != nil {
			t.Fatal(err)
		}
		for _, it := range page.Items {
			if it[field] == name {
				if it["declared"] != true || it["declared_in"] != d.File {
					t.Errorf("%s %s: declared %v in %v", list, name, it["declared"], it["declared_in"])
				}
				return int64(it["id"].(float64))
			}
		}
		t.Fatalf("%s lists no %s", list, name)
		return 0
	}
	key, agent, user := find("/api/v1/api-keys", "declared-key", "name"), find("/api/v1/agents", "declared-agent", "name"),
		find("/api/v1/users", "carol", "username")
	find("/api/v1/projects", "decl", "name")
	find("/api/v1/projects/decl/jobsets", "main", "name")

	an.do("PUT", "/api/v1/projects/decl", an.admin, map[string]any{"description": "x"}, 409)
	an.do("DELETE", "/api/v1/projects/decl", an.admin, nil, 409)
	an.do("POST", "/api/v1/projects/decl/jobsets", an.admin, map[string]any{"name": "more"}, 409)
	an.do("PUT", "/api/v1/projects/decl/jobsets/main", an.admin, map[string]any{"description": "x"}, 409)
	an.do("DELETE", "/api/v1/projects/decl/jobsets/main", an.admin, nil, 409)
	an.do("DELETE", fmt.Sprintf("/api/v1/api-keys/%d", key), an.admin, nil, 409)
	an.do("PUT", fmt.Sprintf("/api/v1/agents/%d", agent), an.admin, map[string]any{"push": true}, 409)
	an.do("DELETE", fmt.Sprintf("/api/v1/agents/%d", agent), an.admin, nil, 409)
	an.do("PUT", fmt.Sprintf("/api/v1/users/%d", user), an.admin, map[string]any{"full_name": "C"}, 409)
	an.do("DELETE", fmt.Sprintf("/api/v1/users/%d", user), an.admin, nil, 409)
	hash := sha256.Sum256([]byte("carols-session"))
	if err := db.CreateSession(context.Background(), hash[:], &user, nil, "carols-csrf", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	carol := "cookie:carols-session:carols-csrf"
	an.do("GET", "/api/v1/me", carol, nil, 200)
	an.do("PUT", "/api/v1/me", carol, map[string]any{"full_name": "C"}, 409)
	an.do("POST", "/api/v1/me/password", carol, map[string]any{"current": "declared password", "new": "battery staple"}, 409)
	an.do("GET", "/api/v1/projects", secret, nil, 200) // the declared key works
}

// webhook sends a signed GitHub push.
func (an *answers) webhook() {
	an.do("PUT", "/api/v1/projects/oa", an.admin, map[string]any{"webhook_secret": "0123456789abcdef0123"}, 200)
	body := `{"ref": "refs/heads/main", "after": "` + strings.Repeat("a", 40) + `", "repository": {"default_branch": "main"}}`
	mac := hmac.New(sha256.New, []byte("0123456789abcdef0123"))
	mac.Write([]byte(body))
	an.headers = map[string]string{"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + hex.EncodeToString(mac.Sum(nil))}
	an.do("POST", "/api/v1/webhooks/oa/github", "", body, 200)
	an.headers = map[string]string{"X-GitHub-Event": "nonsense", "X-Hub-Signature-256": "sha256=" + hex.EncodeToString(mac.Sum(nil))}
	an.do("POST", "/api/v1/webhooks/oa/github", "", body, 400)
	an.headers = nil
}

// trigger checks a jobset of a real git repository: the first trigger creates an
// evaluation (202 with its id), the next finds one in progress.
func (an *answers) trigger() {
	t := an.t
	repo := t.TempDir()
	for _, args := range [][]string{
		{"init", "-q", "-b", "main"},
		{"-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "--allow-empty", "-m", "one"},
	} {
		cmd := exec.Command("git", append([]string{"-C", repo}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v: %s", args, err, out)
		}
	}
	an.do("POST", "/api/v1/projects", an.admin, map[string]any{"name": "local", "repository_url": repo}, 201)
	an.do("POST", "/api/v1/projects/local/jobsets", an.admin, map[string]any{"name": "main", "branch": "main", "check_interval": 0}, 201)
	var first struct {
		EvaluationID *int64 `json:"evaluation_id"`
	}
	if err := json.Unmarshal(an.do("POST", "/api/v1/evaluations/trigger", an.admin, map[string]any{"jobset_id": "local/main"}, 202), &first); err != nil || first.EvaluationID == nil {
		t.Fatalf("the first trigger created no evaluation (%v)", err)
	}
	an.do("POST", "/api/v1/evaluations/trigger", an.admin, map[string]any{"jobset_id": "local/main", "force": true}, 202)
}

// unexercised are the operations the test leaves out, and why.
var unexercised = map[string]string{
	"GET /api/v1/agent/connect":               "the agents' WebSocket: the fleet's tests speak its protocol",
	"GET /api/v1/builds/{id}/log/stream":      "a WebSocket: buildapi's tests follow it",
	"GET /channel/{name}/nixexprs.tar.xz":     "needs a mirror of the project's repository: the channels' tests fetch it",
	"POST /api/v1/webhooks/{project}/gitea":   "the same handler as github's, with other headers",
	"POST /api/v1/webhooks/{project}/forgejo": "the same handler as github's, with other headers",
	"POST /api/v1/webhooks/{project}/gitlab":  "the same handler as github's, with a token header",
}

// coverage fails for each documented operation no request of the test reached,
// unless it is one of unexercised.
func (an *answers) coverage() {
	type tmpl struct {
		op     string
		re     *regexp.Regexp
		params int
	}
	var ts []tmpl
	for op := range documented(an.t) {
		method, path, _ := strings.Cut(op, " ")
		segs := strings.Split(path, "/")
		for i, seg := range segs {
			if strings.HasPrefix(seg, "{") {
				segs[i] = "[^/]+"
			} else {
				segs[i] = regexp.QuoteMeta(seg)
			}
		}
		re := "^" + method + " " + strings.Join(segs, "/") + "$"
		ts = append(ts, tmpl{op, regexp.MustCompile(re), strings.Count(path, "{")})
	}
	reached := map[string]bool{}
	for req := range an.seen {
		req, _, _ = strings.Cut(req, "?")
		best := tmpl{params: -1}
		for _, x := range ts {
			if x.re.MatchString(req) && (best.params < 0 || x.params < best.params) {
				best = x
			}
		}
		reached[best.op] = true
	}
	for _, x := range ts {
		if _, skip := unexercised[x.op]; !reached[x.op] && !skip {
			an.t.Errorf("no request checked %s against the document", x.op)
		}
	}
}

// bites checks that the validator refuses answers the document does not allow, so
// the checks above can fail: a wrong type, a missing required field, an
// undocumented status, another media type.
func (an *answers) bites() {
	t := an.t
	for _, c := range []struct {
		name, path, ct, body string
		status               int
	}{
		{"a string for a number", "/api/v1/projects", "application/json", `{"items": [], "total": "1", "limit": 50, "offset": 0}`, 200},
		{"no items", "/api/v1/agents", "application/json", `{"total": 1, "limit": 50, "offset": 0}`, 200},
		{"builds without total_exact", "/api/v1/builds", "application/json", `{"items": [], "total": 0, "limit": 50, "offset": 0}`, 200},
		{"a build without its constituents", "/api/v1/builds/1", "application/json", `{"id": 1, "evaluation_id": 1, "job": "j",
			"drv_path": "d", "system": "s", "status": "succeeded", "status_code": 0, "is_aggregate": false, "keep": false,
			"propagated_from": null, "products": [], "metrics": [], "steps": []}`, 200},
		{"an unknown build status", "/api/v1/builds/1/steps", "application/json", `{"items": [{"id": 1, "drv_path": "d",
			"system": "s", "status": "sleeping", "status_code": null, "agent_id": null, "attempts": 0, "log_size": 0,
			"required_features": [], "created_at": "2026-01-01T00:00:00Z", "started_at": null, "finished_at": null}]}`, 200},
		{"an error without its message", "/api/v1/projects/x", "application/json", `{"field": "x"}`, 404},
		{"an undocumented status", "/api/v1/projects", "application/json", `{"error": "x"}`, 418},
		{"HTML for JSON", "/api/v1/queue", "text/html", `<p>hi</p>`, 200},
	} {
		req := httptest.NewRequest("GET", an.base+c.path, nil)
		resp := &http.Response{StatusCode: c.status, Header: http.Header{"Content-Type": {c.ct}},
			Body: io.NopCloser(strings.NewReader(c.body)), Request: req}
		if ok, _ := an.v.ValidateHttpResponse(req, resp); ok {
			t.Errorf("the validator let %s through", c.name)
		}
	}
}

// seedBuilds makes two evaluations of the jobset: the first succeeded with one build
// (an output, a product, a metric) and an evaluation error; the second reuses that
// build and adds one aborted after two attempts. It returns their ids.
func seedBuilds(t *testing.T, db *storage.DB, jobsetID int64) (ev1, ev2, built, aborted int64) {
	t.Helper()
	ctx := context.Background()
	q := func(sql string, args ...any) int64 {
		t.Helper()
		var id int64
		if err := db.Pool().QueryRow(ctx, sql, args...).Scan(&id); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return id
	}
	ev1 = q(`INSERT INTO evaluations (jobset_id, status, commit, nr_jobs, started_at, finished_at)
		VALUES ($1, 'succeeded', 'abc', 1, now(), now()) RETURNING id`, jobsetID)
	s1 := q(`INSERT INTO steps (drv_path, system, status, status_code, attempts, started_at, finished_at)
		VALUES ('/nix/store/00000000000000000000000000000001-hello.drv', 'x86_64-linux', 'succeeded', 0, 1, now(), now()) RETURNING id`)
	built = q(`INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, step_id, status, status_code, started_at, finished_at)
		VALUES ($1, $2, 'hello', '/nix/store/00000000000000000000000000000001-hello.drv', 'x86_64-linux', $3, 'succeeded', 0, now(), now())
		RETURNING id`, ev1, jobsetID, s1)
	q(`INSERT INTO build_outputs (build_id, name, path) VALUES ($1, 'out', '/nix/store/00000000000000000000000000000001-hello') RETURNING build_id`, built)
	q(`INSERT INTO build_products (build_id, nr, type, subtype, name, path) VALUES ($1, 1, 'nix-build', '', 'hello',
		'/nix/store/00000000000000000000000000000001-hello') RETURNING build_id`, built)
	q(`INSERT INTO build_metrics (build_id, name, value, unit) VALUES ($1, 'size', 42, 'bytes') RETURNING build_id`, built)
	q(`INSERT INTO evaluation_errors (evaluation_id, attr, message) VALUES ($1, 'broken', 'error: oops') RETURNING evaluation_id`, ev1)

	ev2 = q(`INSERT INTO evaluations (jobset_id, status, commit, nr_jobs, started_at, finished_at)
		VALUES ($1, 'succeeded', 'def', 2, now(), now()) RETURNING id`, jobsetID)
	q(`INSERT INTO evaluation_builds (evaluation_id, build_id) VALUES ($1, $2) RETURNING build_id`, ev2, built)
	s2 := q(`INSERT INTO steps (drv_path, system, status, status_code, attempts, error, started_at, finished_at)
		VALUES ('/nix/store/00000000000000000000000000000002-world.drv', 'x86_64-linux', 'aborted', 3, 2,
		'the agent went away', now(), now()) RETURNING id`)
	aborted = q(`INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, step_id, status, status_code, finished_at)
		VALUES ($1, $2, 'world', '/nix/store/00000000000000000000000000000002-world.drv', 'x86_64-linux', $3, 'aborted', 3, now())
		RETURNING id`, ev2, jobsetID, s2)
	return ev1, ev2, built, aborted
}

// wrap turns the validator's errors into readable lines.
func wrap(ok bool, errs []*verrors.ValidationError) (bool, []string) {
	var out []string
	for _, e := range errs {
		s := e.Message + ": " + e.Reason
		for _, se := range e.SchemaValidationErrors {
			s += "\n    " + se.Reason + " at " + se.FieldPath + " (" + se.KeywordLocation + ")"
		}
		out = append(out, strings.TrimSpace(s))
	}
	return ok && len(out) == 0, out
}

// publicKey is a new agent's authorized_keys line.
func publicKey(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))
}
