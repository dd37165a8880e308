package dashboard_test

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fc-ci/fc/storage"
)

// TestFormsBrowser_PartsFitAPhoneAndDarkMode: the project form with every part set,
// the jobset form, and the pages with pull request jobsets fit 390 px without
// sideways scrolling, in both schemes; a refused form marks its field in the bad
// colour, and the "clear" boxes are reachable from the keyboard (screenshots kept).
func TestFormsBrowser_PartsFitAPhoneAndDarkMode(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	name, pw := s.user(storage.RoleAdmin)
	formsPRs(t, s, s.person(storage.RoleAdmin))
	srv := httptest.NewServer(s.h)
	t.Cleanup(srv.Close)
	tab := openTab(t, startBrowser(t))
	tab.navigate(srv.URL + "/login")
	if err := chromedp.Do(tab.ctx, chromedp.SendKeys("#username", name), chromedp.SendKeys("#password", pw),
		chromedp.Click(`form:has(#password) button[type=submit]`)); err != nil {
		t.Fatalf("sign in: %v", err)
	}
	tab.waitJS(20*time.Second, "signed in", `document.readyState === 'complete' && document.querySelector('header .me')`)
	for _, pg := range []struct{ name, path string }{
		{"forms-edit-project", "/project/pr/edit"},
		{"forms-project", "/project/pr?all=1"},
		{"forms-parent-jobset", "/jobset/pr/main?all=1"},
		{"forms-pr-jobset", "/jobset/pr/main-pr-7"},
		{"forms-edit-jobset", "/jobset/pr/main/edit"},
	} {
		tab.darkMode(false)
		tab.resize(390, 844)
		tab.navigate(srv.URL + pg.path)
		if h1 := eval[string](tab, `document.querySelector('h1').textContent`); h1 == "Not found" || h1 == "Forbidden" {
			t.Fatalf("%s: %s", pg.path, h1)
		}
		tab.fitsWidth(pg.name + " at 390 px")
		tab.screenshot(pg.name + "-390-light")
		tab.darkMode(true)
		tab.fitsWidth(pg.name + " at 390 px, dark")
		tab.screenshot(pg.name + "-390-dark")
		tab.resize(1280, 900)
		tab.screenshot(pg.name + "-wide-dark")
	}

	// The "clear" boxes are real controls in the tab order.
	tab.darkMode(false)
	tab.resize(390, 844)
	tab.navigate(srv.URL + "/project/pr/edit")
	if n := eval[int](tab, `[...document.querySelectorAll('input[type=checkbox][name$="_clear"]')].filter(e => e.tabIndex >= 0 && e.offsetParent).length`); n != 4 {
		t.Errorf("%d visible, focusable clear boxes, want 4", n)
	}
	// A refused form marks its field.
	if err := chromedp.Do(tab.ctx, chromedp.SetValue("#f-forge-repo", "not a repository"),
		chromedp.Click(`form.edit button[type=submit]`)); err != nil {
		t.Fatalf("send the form: %v", err)
	}
	tab.waitJS(20*time.Second, "the form back", `document.readyState === 'complete' && document.querySelector('[role=alert]')`)
	if c := eval[string](tab, `getComputedStyle(document.querySelector('#f-forge-repo')).borderTopColor`); c != "rgb(207, 34, 46)" {
		t.Errorf("the refused field's border is %s, want fc.css's --bad", c)
	}
	tab.fitsWidth("refused project form at 390 px")
	tab.screenshot("forms-refused-390-light")
}
