package dashboard_test

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/storage"
)

// TestLogin_PasswordSignInAndOut: the right password signs in (a session cookie with
// the right flags, the name in the header, a redirect to next) and signing out ends
// the session on the server: the same cookie is refused afterwards.
func TestLogin_PasswordSignInAndOut(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	name, pw := s.user(storage.RoleReadOnly)
	res := s.login(url.Values{"username": {name}, "password": {pw}, "next": {"/projects?page=2"}})
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/projects?page=2" {
		t.Fatalf("sign in: %d to %q, want 303 to /projects?page=2", res.StatusCode, res.Header.Get("Location"))
	}
	c := sessionCookie(t, res)
	if c == nil {
		t.Fatalf("no session cookie in %v", res.Cookies())
	}
	if !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Path != "/" || c.Secure || len(c.Value) < 40 {
		t.Errorf("session cookie %+v: want HttpOnly, SameSite=Lax, Path=/, not Secure over plain HTTP, a long random value", c)
	}
	code, body := s.getAs("/", c)
	if code != http.StatusOK || !strings.Contains(body, `<span class="me">`+name+`</span>`) || !strings.Contains(body, "Sign out") {
		t.Fatalf("home signed in: %d\n%s", code, body)
	}
	var last *string
	if err := s.DB.Pool().QueryRow(t.Context(), `SELECT last_login_at::text FROM users WHERE username = $1`, name).Scan(&last); err != nil || last == nil {
		t.Errorf("last_login_at not recorded: %v, %v", last, err)
	}

	out, _ := s.postAs("/logout", nil, c)
	if out.StatusCode != http.StatusSeeOther || out.Header.Get("Location") != "/" {
		t.Fatalf("sign out: %d to %q", out.StatusCode, out.Header.Get("Location"))
	}
	cleared := false
	for _, k := range out.Cookies() {
		cleared = cleared || (k.Name == "fc_session" && k.MaxAge < 0)
	}
	if !cleared {
		t.Errorf("sign out does not clear the cookie: %v", out.Cookies())
	}
	code, body = s.getAs("/", c)
	if code != http.StatusOK || strings.Contains(body, name) || !strings.Contains(body, "Sign in") {
		t.Fatalf("the signed-out cookie still signs in: %d\n%s", code, body)
	}
	var n int
	if err := s.DB.Pool().QueryRow(t.Context(), `SELECT count(*) FROM sessions`).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d sessions left after signing out (%v)", n, err)
	}
}

// TestLogin_BadCredentialsOneMessage: a wrong password and an unknown user get the
// same 401 page with one generic message, no session, and the form again.
func TestLogin_BadCredentialsOneMessage(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	name, pw := s.user(storage.RoleReadOnly)
	var pages []string
	for _, f := range []url.Values{
		{"username": {name}, "password": {pw + "!"}},
		{"username": {"nobody-at-all"}, "password": {pw}},
		{"username": {name}, "password": {""}},
		{"key": {"fc_0123456789abcdef0123456789abcdef"}},
	} {
		res := s.login(f)
		body := readBody(t, res)
		if res.StatusCode != http.StatusUnauthorized || sessionCookie(t, res) != nil {
			t.Errorf("sign in with %v: %d, cookie %v; want 401 and none", f, res.StatusCode, sessionCookie(t, res))
		}
		if !strings.Contains(body, "Sign-in failed: wrong username or password, or an API key that is not valid.") ||
			!strings.Contains(body, `name="password"`) || strings.Contains(body, "nobody-at-all</") {
			t.Errorf("sign in with %v: the page\n%s", f, body)
		}
		pages = append(pages, errorLine(body))
	}
	for _, p := range pages[1:] {
		if p != pages[0] {
			t.Errorf("failed sign-ins tell apart: %q and %q", pages[0], p)
		}
	}
}

// TestLogin_WithAnAPIKey: the key's form signs in a session acting as the key.
func TestLogin_WithAnAPIKey(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	k, key, err := auth.CreateKey(t.Context(), s.DB, "release-bot", storage.RoleEvalJobset)
	if err != nil {
		t.Fatal(err)
	}
	res := s.login(url.Values{"key": {key}, "next": {"/queue"}})
	c := sessionCookie(t, res)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/queue" || c == nil {
		t.Fatalf("sign in with a key: %d to %q, cookie %v", res.StatusCode, res.Header.Get("Location"), c)
	}
	code, body := s.getAs("/", c)
	if code != http.StatusOK || !strings.Contains(body, `<span class="me">release-bot</span>`) {
		t.Fatalf("home in the key's session: %d\n%s", code, body)
	}
	// Revoking the key ends the session.
	if err := s.DB.DeleteAPIKey(t.Context(), k.ID); err != nil {
		t.Fatal(err)
	}
	if _, body := s.getAs("/", c); strings.Contains(body, "release-bot") {
		t.Errorf("the session of a revoked key still signs in")
	}
}

// TestLogin_NextStaysOnTheSite: after signing in the browser goes to next only when
// it is a path of this site.
func TestLogin_NextStaysOnTheSite(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	name, pw := s.user(storage.RoleReadOnly)
	for next, want := range map[string]string{
		"/build/7#L3":           "/build/7#L3",
		"/jobset/a/b?page=2":    "/jobset/a/b?page=2",
		"":                      "/",
		"//evil.example/x":      "/",
		"/\\evil.example/x":     "/",
		"https://evil.example/": "/",
		"javascript:alert(1)":   "/",
		"evil.example":          "/",
		"/login":                "/",
		"/ok\r\nSet-Cookie: x":  "/",
	} {
		res := s.login(url.Values{"username": {name}, "password": {pw}, "next": {next}})
		if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != want {
			t.Errorf("next %q: %d to %q, want %q", next, res.StatusCode, res.Header.Get("Location"), want)
		}
	}
	// The form carries next from the link that led to it, but only a safe one.
	if _, body := s.get("/login?next=%2Fqueue", nil); !strings.Contains(body, `name="next" value="/queue"`) {
		t.Errorf("the form does not carry next:\n%s", body)
	}
	if _, body := s.get("/login?next=%2F%2Fevil.example", nil); strings.Contains(body, "evil") {
		t.Errorf("the form carries an unsafe next:\n%s", body)
	}
}

// TestLogin_FormNeedsItsToken: the sign-in form without its login token, with a
// token not matching the browser's cookie, or sent from another site, is refused
// (403) and signs nobody in: another site cannot sign a browser in to its account.
func TestLogin_FormNeedsItsToken(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	name, pw := s.user(storage.RoleReadOnly)
	creds := func() url.Values { return url.Values{"username": {name}, "password": {pw}} }
	noToken := creds()
	noToken.Set("login_csrf", "")
	wrong := creds()
	wrong.Set("login_csrf", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	for what, f := range map[string]url.Values{"no token": noToken, "a token not the cookie's": wrong} {
		res := s.login(f)
		if res.StatusCode != http.StatusForbidden || sessionCookie(t, res) != nil {
			t.Errorf("%s: %d, cookie %v; want 403 and none", what, res.StatusCode, sessionCookie(t, res))
		}
	}
	// No cookie at all (a form posted from another site to a browser that never
	// opened /login).
	req := httptest.NewRequest(http.MethodPost, "/login", strings.NewReader(creds().Encode()+"&login_csrf=x"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if res, _ := s.as(req, nil); res.StatusCode != http.StatusForbidden || sessionCookie(t, res) != nil {
		t.Errorf("no login cookie: %d", res.StatusCode)
	}
	// The token is right but the browser says the form came from elsewhere.
	rec := httptest.NewRecorder()
	s.h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/login", nil))
	var tok *http.Cookie
	for _, c := range rec.Result().Cookies() {
		if c.Name == "fc_login" {
			tok = c
		}
	}
	if tok == nil || !tok.HttpOnly || tok.Path != "/login" || tok.SameSite != http.SameSiteStrictMode {
		t.Fatalf("login token cookie %+v: want HttpOnly, Path=/login, SameSite=Strict", tok)
	}
	for origin, want := range map[string]int{"https://evil.example": http.StatusForbidden, "null": http.StatusForbidden,
		"http://example.com.evil.example": http.StatusForbidden, "http://example.com": http.StatusSeeOther,
		"https://example.com": http.StatusSeeOther /* TLS ended by a proxy */} {
		f := creds()
		f.Set("login_csrf", tok.Value)
		req := httptest.NewRequest(http.MethodPost, "/login", strings.NewReader(f.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", origin)
		req.AddCookie(tok)
		if res, _ := s.as(req, nil); res.StatusCode != want {
			t.Errorf("Origin %s: %d, want %d", origin, res.StatusCode, want)
		}
	}
}

// TestLogin_SecureCookieOverTLS: served over TLS, the session cookie is Secure.
func TestLogin_SecureCookieOverTLS(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	name, pw := s.user(storage.RoleReadOnly)
	srv := httptest.NewTLSServer(s.h)
	t.Cleanup(srv.Close)
	jar, _ := cookiejar.New(nil)
	c := srv.Client()
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	res, err := c.Get(srv.URL + "/login")
	if err != nil {
		t.Fatal(err)
	}
	page := readBody(t, res)
	m := regexp.MustCompile(`name="login_csrf" value="([^"]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no login token:\n%s", page)
	}
	res, err = c.PostForm(srv.URL+"/login", url.Values{"username": {name}, "password": {pw}, "login_csrf": {m[1]}})
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	sc := sessionCookie(t, res)
	if res.StatusCode != http.StatusSeeOther || sc == nil || !sc.Secure || !sc.HttpOnly || sc.SameSite != http.SameSiteLaxMode {
		t.Fatalf("over TLS: %d, cookie %+v; want Secure, HttpOnly, SameSite=Lax", res.StatusCode, sc)
	}
	res, err = c.Get(srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	if body := readBody(t, res); !strings.Contains(body, `<span class="me">`+name+`</span>`) {
		t.Errorf("the Secure cookie does not sign in over TLS:\n%s", body)
	}
}

// TestLogin_SessionFormsAndDisabledUsers: a signed-in browser's dashboard form is
// refused without its CSRF token; a disabled user's session stops at once.
func TestLogin_SessionFormsAndDisabledUsers(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	name, pw := s.user(storage.RoleReadOnly)
	c := s.signIn(name, pw)
	if res, _ := s.postAs("/logout", url.Values{"csrf": {""}}, c); res.StatusCode != http.StatusForbidden {
		t.Errorf("sign out without the form's token: %d, want 403", res.StatusCode)
	}
	if res, _ := s.postAs("/logout", url.Values{"csrf": {"forged"}}, c); res.StatusCode != http.StatusForbidden {
		t.Errorf("sign out with a forged token: %d, want 403", res.StatusCode)
	}
	if _, body := s.getAs("/", c); !strings.Contains(body, `<span class="me">`+name+`</span>`) {
		t.Fatal("a refused sign-out signed out")
	}
	off := false
	u, _, err := s.DB.UserCredentials(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.DB.UpdateUser(t.Context(), u.ID, storage.UserChanges{Enabled: &off}); err != nil {
		t.Fatal(err)
	}
	if _, body := s.getAs("/", c); strings.Contains(body, name) || !strings.Contains(body, "Sign in") {
		t.Errorf("a disabled user is still signed in:\n%s", body)
	}
}

func readBody(t *testing.T, res *http.Response) string {
	t.Helper()
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

var errorLineRE = regexp.MustCompile(`<p class="flash error" role="alert">[^<]*</p>`)

// errorLine is the page's error message element.
func errorLine(body string) string { return errorLineRE.FindString(body) }
