package people_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/fc-ci/fc/coordinator/app"
	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

// env is the whole coordinator (API, dashboard, session middleware) over a fresh
// database, served on a local port.
type env struct {
	t     *testing.T
	db    *storage.DB
	srv   *httptest.Server
	admin string // an admin API key
	n     atomic.Int64
}

func newEnv(t *testing.T) *env {
	t.Helper()
	cfg := config.Defaults()
	cfg.StateDir = t.TempDir()
	db := storagetest.New(t)
	a, err := app.New(app.Config{Settings: cfg, DB: db, Logger: slog.New(slog.DiscardHandler), Addr: "test"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Server.Handler())
	t.Cleanup(srv.Close)
	e := &env{t: t, db: db, srv: srv}
	e.admin = e.key(storage.RoleAdmin)
	return e
}

func (e *env) unique(prefix string) string { return fmt.Sprintf("%s%d", prefix, e.n.Add(1)) }

// key makes an API key with role.
func (e *env) key(role string) string {
	e.t.Helper()
	_, key, err := auth.CreateKey(context.Background(), e.db, e.unique(role+"-key-"), role)
	if err != nil {
		e.t.Fatal(err)
	}
	return key
}

// answer is an API answer.
type answer struct {
	Status int
	Body   []byte
}

func (a answer) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(a.Body, v); err != nil {
		t.Fatalf("decode %s: %v", a.Body, err)
	}
}

// field is the "field" of an API error.
func (a answer) field() string {
	var e struct{ Field string }
	_ = json.Unmarshal(a.Body, &e)
	return e.Field
}

func send(t *testing.T, c *http.Client, method, u string, header http.Header, body any) answer {
	t.Helper()
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, u, r)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return answer{res.StatusCode, b}
}

// do is an API request with the API key key ("" for none).
func (e *env) do(method, path, key string, body any) answer {
	e.t.Helper()
	h := http.Header{}
	if key != "" {
		h.Set("Authorization", "Bearer "+key)
	}
	return send(e.t, http.DefaultClient, method, e.srv.URL+path, h, body)
}

// user makes an account with role through the API and returns its id, username and
// password.
func (e *env) user(role string) (int64, string, string) {
	e.t.Helper()
	name := e.unique(role + "-")
	pw := "secret-" + name
	a := e.do("POST", "/api/v1/users", e.admin, map[string]string{"username": name, "password": pw, "role": role})
	if a.Status != http.StatusCreated {
		e.t.Fatalf("create user %s: %d %s", name, a.Status, a.Body)
	}
	var u struct{ ID int64 }
	a.decode(e.t, &u)
	return u.ID, name, pw
}

// browser is a browser's cookie jar on the coordinator, signed in or not.
type browser struct {
	e    *env
	c    *http.Client
	csrf string // the session's CSRF token, as its pages carry it
}

func (e *env) browser() *browser {
	e.t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return &browser{e: e, c: &http.Client{Jar: jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

var (
	loginTokenRE = regexp.MustCompile(`name="login_csrf" value="([^"]+)"`)
	csrfRE       = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
)

// signIn sends the /login form with fields (a username and password, or a key) and
// returns its status; on success the browser holds the session and its CSRF token.
func (b *browser) signIn(fields url.Values) int {
	t := b.e.t
	t.Helper()
	res, err := b.c.Get(b.e.srv.URL + "/login")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(res.Body)
	res.Body.Close()
	m := loginTokenRE.FindSubmatch(page)
	if m == nil {
		t.Fatalf("no login token on /login:\n%s", page)
	}
	fields.Set("login_csrf", html.UnescapeString(string(m[1])))
	res, err = b.c.PostForm(b.e.srv.URL+"/login", fields)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode == http.StatusSeeOther {
		b.csrf = b.pageCSRF()
	}
	return res.StatusCode
}

// as signs a new browser in with a username and password.
func (e *env) as(username, password string) *browser {
	e.t.Helper()
	b := e.browser()
	if s := b.signIn(url.Values{"username": {username}, "password": {password}}); s != http.StatusSeeOther {
		e.t.Fatalf("sign in as %s: %d", username, s)
	}
	return b
}

// pageCSRF is the CSRF token on the home page ("" when not signed in).
func (b *browser) pageCSRF() string {
	b.e.t.Helper()
	res, err := b.c.Get(b.e.srv.URL + "/")
	if err != nil {
		b.e.t.Fatal(err)
	}
	defer res.Body.Close()
	page, _ := io.ReadAll(res.Body)
	if m := csrfRE.FindSubmatch(page); m != nil {
		return html.UnescapeString(string(m[1]))
	}
	return ""
}

// api is an API request with the browser's cookies, and with its CSRF token in
// X-CSRF-Token when withCSRF.
func (b *browser) api(method, path string, body any, withCSRF bool) answer {
	b.e.t.Helper()
	h := http.Header{}
	if withCSRF {
		h.Set("X-CSRF-Token", b.csrf)
	}
	return send(b.e.t, b.c, method, b.e.srv.URL+path, h, body)
}

// write is api with the CSRF token, as the dashboard's scripts send writes.
func (b *browser) write(method, path string, body any) answer {
	b.e.t.Helper()
	return b.api(method, path, body, true)
}

func (b *browser) get(path string) answer {
	b.e.t.Helper()
	return b.api("GET", path, nil, false)
}

// mustNotLeak fails when an answer carries a password or a hash.
func mustNotLeak(t *testing.T, what string, body []byte, password string) {
	t.Helper()
	s := string(body)
	if strings.Contains(s, "password") || strings.Contains(s, "argon2") || (password != "" && strings.Contains(s, password)) {
		t.Errorf("%s shows a password or its hash: %s", what, s)
	}
}
