package dashboard_test

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fc-ci/fc/storage"
)

// TestLoginBrowser_SignInAndOut: in Chromium, someone follows "Sign in" from a page,
// signs in through the real form, comes back to that page with their name in the
// header (the session cookie out of the page's scripts' reach), and signs out.
func TestLoginBrowser_SignInAndOut(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	name, pw := s.user(storage.RoleCreateProjects)
	srv := httptest.NewServer(s.h)
	t.Cleanup(srv.Close)
	p := openTab(t, startBrowser(t))
	p.navigate(srv.URL + "/?page=1")
	eval[bool](p, `(() => { document.querySelector('nav.who a').click(); return true; })()`)
	p.waitJS(10*time.Second, "the sign-in page", `location.pathname === '/login' && document.readyState === 'complete'`)
	if got := eval[string](p, `document.querySelector('input[name=next]').value`); got != "/" {
		// The layout's link carries the page's path.
		t.Errorf("the form's next: %q, want /", got)
	}
	// Typed as a person types, and sent with the form's own button.
	if err := chromedp.Do(p.ctx, chromedp.SendKeys("#username", name), chromedp.SendKeys("#password", pw)); err != nil {
		t.Fatalf("fill in the form: %v", err)
	}
	p.screenshot("login-form")
	p.resize(390, 844)
	p.fitsWidth("the sign-in page at 390 px")
	p.screenshot("login-form-390")
	if err := chromedp.Do(p.ctx, chromedp.Click(`form:has(#password) button[type=submit]`)); err != nil {
		t.Fatalf("press Sign in: %v", err)
	}
	p.waitJS(10*time.Second, "signed in, back home", `location.pathname === '/' && document.readyState === 'complete' && document.querySelector('header .me')`)
	if got := eval[string](p, `document.querySelector('header .me').textContent`); got != name {
		t.Errorf("the header shows %q, want %q", got, name)
	}
	if c := eval[string](p, `document.cookie`); strings.Contains(c, "fc_session") {
		t.Errorf("the page's scripts can read the session cookie: %q", c)
	}
	p.screenshot("signed-in")

	eval[bool](p, `(() => { document.querySelector('form[action="/logout"] button').click(); return true; })()`)
	p.waitJS(10*time.Second, "signed out", `document.readyState === 'complete' && !document.querySelector('header .me') && document.querySelector('nav.who a') && document.querySelector('nav.who a').textContent === 'Sign in'`)
	var n int
	if err := s.DB.Pool().QueryRow(t.Context(), `SELECT count(*) FROM sessions`).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d sessions left after signing out in the browser (%v)", n, err)
	}
}
