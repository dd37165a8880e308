package dashboard_test

import (
	"net/http/httptest"
	"testing"
)

// TestLayout_PhoneWidthAndDarkMode: the frame every page shares fits a 390 px wide
// phone without sideways scrolling, and follows a dark colour scheme.
func TestLayout_PhoneWidthAndDarkMode(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	srv := httptest.NewServer(s.h)
	t.Cleanup(srv.Close)
	p := openTab(t, startBrowser(t))
	p.resize(390, 844)
	p.navigate(srv.URL + "/")
	p.fitsWidth("home at 390 px")
	p.screenshot("home-390-light")
	light := eval[string](p, `getComputedStyle(document.body).backgroundColor`)
	p.darkMode(true)
	dark := eval[string](p, `getComputedStyle(document.body).backgroundColor`)
	p.screenshot("home-390-dark")
	if light != "rgb(255, 255, 255)" || dark != "rgb(13, 17, 23)" {
		t.Fatalf("body background: light %s, dark %s; want white and #0d1117", light, dark)
	}
}
