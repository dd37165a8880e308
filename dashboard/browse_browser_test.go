package dashboard_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"
)

// TestBrowsePages_PhoneWidthAndDarkMode: the home, projects, project, jobset and job
// pages, full of rows, fit a 390 px wide phone without sideways scrolling and follow
// a dark colour scheme (screenshots of each are kept).
func TestBrowsePages_PhoneWidthAndDarkMode(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	ctx := context.Background()
	p := browseProject(t, s, "a-project-with-a-rather-long-name", nil)
	js := browseJobset(t, s, p, "release-24.05-with-a-long-name")
	if err := browseSeed(ctx, s.DB, js, 12, 60); err != nil {
		t.Fatal(err)
	}
	browseExec(t, s, `UPDATE jobsets SET last_check_error = 'fatal: could not read from remote repository: a long error message that goes on', last_checked_at = now() WHERE id = $1`, js)
	browseExec(t, s, `INSERT INTO evaluation_errors (evaluation_id, attr, message) SELECT max(id), 'pkgs.a-very-long-attribute-name.that-goes.on-and-on',
		'error: attribute ''missing'' missing at /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-source/pkgs/top-level/all-packages.nix:1234:5' FROM evaluations`)
	browseExec(t, s, `INSERT INTO agents (name, public_key, fingerprint, connected, last_seen_at)
		VALUES ('builder-with-a-long-name-1', 'k1', 'SHA256:1', true, now())`)
	srv := httptest.NewServer(s.h)
	t.Cleanup(srv.Close)
	tab := openTab(t, startBrowser(t))
	pages := []struct{ name, path string }{
		{"home", "/"},
		{"projects", "/projects"},
		{"project", "/project/a-project-with-a-rather-long-name"},
		{"jobset", "/jobset/a-project-with-a-rather-long-name/release-24.05-with-a-long-name"},
		{"job", "/job/a-project-with-a-rather-long-name/release-24.05-with-a-long-name/job007"},
	}
	for _, pg := range pages {
		tab.darkMode(false)
		tab.resize(390, 844)
		tab.navigate(srv.URL + pg.path)
		tab.fitsWidth(pg.name + " at 390 px")
		tab.screenshot(pg.name + "-390-light")
		tab.darkMode(true)
		tab.fitsWidth(pg.name + " at 390 px, dark")
		if bg := eval[string](tab, `getComputedStyle(document.body).backgroundColor`); bg != "rgb(13, 17, 23)" {
			t.Errorf("%s in dark mode: body background %s", pg.name, bg)
		}
		tab.screenshot(pg.name + "-390-dark")
		tab.resize(1280, 900)
		tab.screenshot(pg.name + "-wide-dark")
	}
	// The charts' points follow the scheme too (their colours come from browse.css).
	tab.darkMode(true)
	tab.navigate(srv.URL + pages[4].path)
	if fill := eval[string](tab, `getComputedStyle(document.querySelector('svg.chart circle.ok')).fill`); fill != "rgb(63, 185, 80)" {
		t.Errorf("a succeeded point in dark mode is %s, want fc.css's dark --ok", fill)
	}
}

// TestHome_StatusesUpdateWithoutReload: on the home page a running build's status,
// its jobset's counts, the queue and the number of running builds change when the
// build finishes, without a reload.
func TestHome_StatusesUpdateWithoutReload(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	js := browseJobset(t, s, browseProject(t, s, "live", nil), "main")
	_, builds := browseEval(t, s, js, "succeeded", map[string]string{"slow": "running", "done": "succeeded"})
	srv := httptest.NewServer(s.h)
	t.Cleanup(srv.Close)
	tab := openTab(t, startBrowser(t))
	tab.navigate(srv.URL + "/")
	id := builds["slow"]
	status := fmt.Sprintf(`[...document.querySelectorAll('[data-build="%d"] .status')].map(e => e.textContent + ' ' + e.className).join('|')`, id)
	if got := eval[string](tab, status); got != "running status running|running status running" {
		t.Fatalf("before: the running build shows %q", got)
	}
	eval[bool](tab, `(() => { window.fcNotReloaded = true; return true; })()`)

	browseExec(t, s, `UPDATE builds SET status = 'succeeded', finished_at = now() WHERE id = $1`, id)
	browseExec(t, s, `UPDATE steps SET status = 'succeeded' WHERE status = 'running'`)
	tab.waitJS(30*time.Second, "the page shows the build succeeded", status+` === 'succeeded status ok|succeeded status ok'`)
	row := fmt.Sprintf(`document.querySelector('tr[data-jobset="%d"]')`, js)
	for js, want := range map[string]string{
		row + `.querySelector('[data-f="succeeded"]').textContent`: "2",
		row + `.querySelector('[data-f="running"]').className`:     "n running zero",
		`document.getElementById('running-count').textContent`:     "0",
		`document.getElementById('queue-rows').textContent`:        "",
		`String(document.getElementById('queue-empty').hidden)`:    "false",
		`String(window.fcNotReloaded)`:                             "true",
	} {
		tab.waitJS(10*time.Second, js+" is "+want, js+` === '`+want+`'`)
	}
}
