package dashboard_test

import (
	"context"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/storage"
)

// Helpers for tests of people signed in as a browser is: with an account, through the
// real /login form, carrying the fc_session cookie.

var userCounter atomic.Int64

// user makes an account with role (straight into storage) and returns its username
// and password.
func (s *site) user(role string) (username, password string) {
	s.t.Helper()
	username = fmt.Sprintf("%s-user-%d", role, userCounter.Add(1))
	password = "pw-" + username + "-long-enough"
	hash, err := auth.HashPassword(password)
	if err != nil {
		s.t.Fatal(err)
	}
	if _, err := s.DB.CreateUser(context.Background(), storage.NewUser{Username: username, Role: role, PasswordHash: hash}); err != nil {
		s.t.Fatal(err)
	}
	return username, password
}

// signedIn makes an account with role, signs it in, and returns the session cookie.
func (s *site) signedIn(role string) *http.Cookie {
	s.t.Helper()
	return s.signIn(s.user(role))
}

// signIn signs in through the /login form and returns the session cookie; the test
// fails if that does not work.
func (s *site) signIn(username, password string) *http.Cookie {
	s.t.Helper()
	res := s.login(url.Values{"username": {username}, "password": {password}})
	if res.StatusCode != http.StatusSeeOther {
		b, _ := io.ReadAll(res.Body)
		s.t.Fatalf("sign in as %s: %d\n%s", username, res.StatusCode, b)
	}
	return sessionCookie(s.t, res)
}

// login sends the sign-in form with the fields given, after fetching the form for its
// login token (unless form sets login_csrf itself), and returns the answer.
func (s *site) login(form url.Values) *http.Response {
	s.t.Helper()
	rec := httptest.NewRecorder()
	s.h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/login", nil))
	var token *http.Cookie
	for _, c := range rec.Result().Cookies() {
		if c.Name == "fc_login" {
			token = c
		}
	}
	if token == nil {
		s.t.Fatalf("GET /login set no fc_login cookie: %v", rec.Result().Cookies())
	}
	if _, set := form["login_csrf"]; !set {
		form.Set("login_csrf", token.Value)
	}
	req := httptest.NewRequest(http.MethodPost, "/login", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(&http.Cookie{Name: token.Name, Value: token.Value})
	rec = httptest.NewRecorder()
	s.h.ServeHTTP(rec, req)
	return rec.Result()
}

// sessionCookie is the fc_session cookie res sets (nil if none).
func sessionCookie(t interface{ Helper() }, res *http.Response) *http.Cookie {
	t.Helper()
	for _, c := range res.Cookies() {
		if c.Name == "fc_session" && c.MaxAge >= 0 && c.Value != "" {
			return c
		}
	}
	return nil
}

// as serves req with the session cookie c (nil: none) and returns the answer and its
// body.
func (s *site) as(req *http.Request, c *http.Cookie) (*http.Response, string) {
	s.t.Helper()
	if c != nil {
		req.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
	}
	rec := httptest.NewRecorder()
	s.h.ServeHTTP(rec, req)
	res := rec.Result()
	b, _ := io.ReadAll(res.Body)
	return res, string(b)
}

// getAs fetches path with the session cookie c.
func (s *site) getAs(path string, c *http.Cookie) (int, string) {
	s.t.Helper()
	res, body := s.as(httptest.NewRequest(http.MethodGet, path, nil), c)
	return res.StatusCode, body
}

var csrfInput = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrfOf is the CSRF token of the session of c, as its pages carry it.
func (s *site) csrfOf(c *http.Cookie) string {
	s.t.Helper()
	_, body := s.getAs("/", c)
	m := csrfInput.FindStringSubmatch(body)
	if m == nil {
		s.t.Fatalf("no CSRF token on the home page of a session:\n%s", body)
	}
	return html.UnescapeString(m[1])
}

// postAs submits a dashboard form with the session cookie c; the session's CSRF
// token is added unless form sets "csrf" itself.
func (s *site) postAs(path string, form url.Values, c *http.Cookie) (*http.Response, string) {
	s.t.Helper()
	if form == nil {
		form = url.Values{}
	}
	if _, set := form["csrf"]; !set && c != nil {
		form.Set("csrf", s.csrfOf(c))
	}
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return s.as(req, c)
}
