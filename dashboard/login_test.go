package dashboard_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

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
