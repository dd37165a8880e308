package dashboard_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/fc-ci/fc/coordinator/app"
	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// site is the coordinator's whole HTTP surface (dashboard and API) on a fresh
// database, served in-process: for page tests that need no agents.
type site struct {
	t  *testing.T
	DB *storage.DB
	h  http.Handler
}

func newSite(t *testing.T) *site {
	t.Helper()
	cfg := config.Defaults()
	cfg.StateDir = t.TempDir()
	db := storagetest.New(t)
	a, err := app.New(app.Config{Settings: cfg, DB: db, Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	return &site{t: t, DB: db, h: a.Server.Handler()}
}

// person is someone signed in with an API key of role (a real key in the database,
// so ownership works), with a session CSRF token.
func (s *site) person(role string) *auth.Principal {
	s.t.Helper()
	k, _, err := auth.CreateKey(context.Background(), s.DB, role+"-person", role)
	if err != nil {
		s.t.Fatal(err)
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return &auth.Principal{KeyID: k.ID, Name: k.Name, Role: role, CSRF: hex.EncodeToString(b)}
}

// do serves one request as who (nil: nobody signed in).
func (s *site) do(req *http.Request, who *auth.Principal) *http.Response {
	s.t.Helper()
	if who != nil {
		req = req.WithContext(auth.WithPrincipal(req.Context(), *who))
	}
	rec := httptest.NewRecorder()
	s.h.ServeHTTP(rec, req)
	return rec.Result()
}

// get fetches path as who and returns the status and the body.
func (s *site) get(path string, who *auth.Principal) (int, string) {
	s.t.Helper()
	res := s.do(httptest.NewRequest(http.MethodGet, path, nil), who)
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// post submits a form to path as who; the CSRF token of who is added unless form
// sets "csrf" itself (to "" for a form without one).
func (s *site) post(path string, form url.Values, who *auth.Principal) (*http.Response, string) {
	s.t.Helper()
	if form == nil {
		form = url.Values{}
	}
	if _, set := form["csrf"]; !set && who != nil {
		form.Set("csrf", who.CSRF)
	}
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	res := s.do(req, who)
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

func TestHome_EmptyInstallation(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	code, body := s.get("/", nil)
	if code != http.StatusOK || !strings.Contains(body, "No builds yet.") || !strings.Contains(body, `href="/login?next=%2f"`) {
		t.Fatalf("home: %d\n%s", code, body)
	}
	code, body = s.get("/", s.person(storage.RoleAdmin))
	if code != http.StatusOK || !strings.Contains(body, `href="/admin"`) || !strings.Contains(body, "Sign out") {
		t.Fatalf("home as admin: %d\n%s", code, body)
	}
}
