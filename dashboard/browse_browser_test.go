package dashboard_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage"
)

// TestBrowsePages_PhoneWidthAndDarkMode: the home, projects, project, jobset and job
// pages, full of rows, and the project and jobset forms, fit a 390 px wide phone
// without sideways scrolling and follow a dark colour scheme (screenshots of each
// are kept).
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
	browseExec(t, s, `INSERT INTO jobset_inputs (jobset_id, name, type, value) VALUES ($1, 'nixpkgs', 'git', 'https://example.org/nixpkgs.git main')`, js)
	name, pw := s.user(storage.RoleAdmin)
	srv := httptest.NewServer(s.h)
	t.Cleanup(srv.Close)
	tab := openTab(t, startBrowser(t))
	tab.navigate(srv.URL + "/login")
	if err := chromedp.Do(tab.ctx, chromedp.SendKeys("#username", name), chromedp.SendKeys("#password", pw),
		chromedp.Click(`form:has(#password) button[type=submit]`)); err != nil {
		t.Fatalf("sign in: %v", err)
	}
	tab.waitJS(20*time.Second, "signed in", `document.readyState === 'complete' && document.querySelector('header .me')`)
	pages := []struct{ name, path string }{
		{"home", "/"},
		{"projects", "/projects"},
		{"project", "/project/a-project-with-a-rather-long-name"},
		{"jobset", "/jobset/a-project-with-a-rather-long-name/release-24.05-with-a-long-name"},
		{"job", "/job/a-project-with-a-rather-long-name/release-24.05-with-a-long-name/job007"},
		{"new-project", "/projects/new"},
		{"edit-project", "/project/a-project-with-a-rather-long-name/edit"},
		{"new-jobset", "/project/a-project-with-a-rather-long-name/jobsets/new"},
		{"edit-jobset", "/jobset/a-project-with-a-rather-long-name/release-24.05-with-a-long-name/edit"},
	}
	for _, pg := range pages {
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

// TestBrowseFlow_SignInCreateTriggerAndWatch: in Chromium, an admin signs in through
// /login, creates a project and a jobset through the forms, triggers an evaluation
// that real agents evaluate and build from a local git repository, sees the jobs
// grid, and watches a running build turn green on the home page without a reload;
// the home page fits 390 px and follows the dark scheme.
func TestBrowseFlow_SignInCreateTriggerAndWatch(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": jobset(t, map[string]string{
		"quick": `echo hi > $out`,
		"slow":  `sleep 12; echo done > $out`,
	})})
	hash, err := auth.HashPassword("a-long-enough-password")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.DB.CreateUser(context.Background(), storage.NewUser{Username: "ada", Role: storage.RoleAdmin, PasswordHash: hash}); err != nil {
		t.Fatal(err)
	}
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "builder", MaxJobs: 2})

	p := openTab(t, startBrowser(t))
	do := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(p.ctx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	at := func(path string) {
		t.Helper()
		p.waitJS(20*time.Second, "at "+path, `location.pathname === '`+path+`' && document.readyState === 'complete'`)
	}
	p.navigate(c.URL + "/login")
	do("sign in", chromedp.SendKeys("#username", "ada"), chromedp.SendKeys("#password", "a-long-enough-password"),
		chromedp.Click(`form:has(#password) button[type=submit]`))
	p.waitJS(20*time.Second, "signed in", `document.readyState === 'complete' && document.querySelector('header .me')`)

	p.navigate(c.URL + "/projects")
	do("open the new project form", chromedp.Click(`a[href="/projects/new"]`))
	at("/projects/new")
	do("fill in the project", chromedp.SendKeys("#f-name", "demo"), chromedp.SendKeys("#f-display", "The Demo"),
		chromedp.SendKeys("#f-repo", repo.Dir))
	p.screenshot("flow-new-project")
	do("create the project", chromedp.Click(`form.edit button[type=submit]`))
	at("/project/demo")
	do("open the new jobset form", chromedp.Click(`a[href="/project/demo/jobsets/new"]`))
	at("/project/demo/jobsets/new")
	do("fill in the jobset", chromedp.SendKeys("#f-name", "main"), chromedp.SendKeys("#f-branch", "main"),
		chromedp.Click("#f-flake"), chromedp.SetValue("#f-expr", "release.nix"), chromedp.SetValue("#f-interval", "0"))
	p.screenshot("flow-new-jobset")
	do("create the jobset", chromedp.Click(`form.edit button[type=submit]`))
	at("/jobset/demo/main")
	if got := eval[string](p, `document.querySelector('dl.info').textContent`); !strings.Contains(got, "main · release.nix") {
		t.Errorf("the jobset page says %q", got)
	}

	do("trigger an evaluation", chromedp.Click("#trigger"))
	p.waitJS(20*time.Second, "the trigger's message", `document.readyState === 'complete' && document.querySelector('.flash') && document.querySelector('.flash').textContent.includes('An evaluation was created')`)
	js, err := c.DB.GetJobsetByName(context.Background(), browseProjectID(t, c.DB, "demo"), "main")
	if err != nil {
		t.Fatal(err)
	}
	coordtest.Eventually(t, 120*time.Second, "the evaluation succeeds", func() bool {
		var status, msg string
		err := c.DB.Pool().QueryRow(context.Background(), `SELECT status, error FROM evaluations WHERE jobset_id = $1 ORDER BY id DESC LIMIT 1`, js.ID).Scan(&status, &msg)
		if status == "failed" {
			t.Fatalf("the evaluation failed: %s", msg)
		}
		return err == nil && status == "succeeded"
	})
	var slow int64
	if err := c.DB.Pool().QueryRow(context.Background(), `SELECT id FROM builds WHERE jobset_id = $1 AND job = 'slow'`, js.ID).Scan(&slow); err != nil {
		t.Fatal(err)
	}

	// Home, while the slow build has not finished: it turns green in place.
	p.navigate(c.URL + "/")
	status := fmt.Sprintf(`document.querySelector('[data-build="%d"] .status').textContent`, slow)
	if got := eval[string](p, status); got != "queued" && got != "running" {
		t.Fatalf("the slow build shows %q on the home page before it finished", got)
	}
	eval[bool](p, `(() => { window.fcNotReloaded = true; return true; })()`)
	p.screenshot("flow-home-building")
	p.waitJS(120*time.Second, "the slow build shows succeeded", status+` === 'succeeded'`)
	p.waitJS(10*time.Second, "the jobset row counts two succeeded builds",
		fmt.Sprintf(`document.querySelector('tr[data-jobset="%d"] [data-f="succeeded"]').textContent === '2'`, js.ID))
	if !eval[bool](p, `window.fcNotReloaded === true`) {
		t.Error("the home page reloaded")
	}
	p.resize(390, 844)
	p.fitsWidth("home at 390 px")
	p.screenshot("flow-home-390-light")
	p.darkMode(true)
	if bg := eval[string](p, `getComputedStyle(document.body).backgroundColor`); bg != "rgb(13, 17, 23)" {
		t.Errorf("home in dark mode: body background %s", bg)
	}
	p.fitsWidth("home at 390 px, dark")
	p.screenshot("flow-home-390-dark")

	// The jobset page shows the evaluation in its grid, both builds green.
	p.navigate(c.URL + "/jobset/demo/main")
	if n := eval[int](p, `document.querySelectorAll('table.grid a.cell.ok').length`); n != 2 {
		t.Errorf("the jobs grid shows %d succeeded builds, want 2", n)
	}
	p.fitsWidth("jobset at 390 px, dark")
	p.screenshot("flow-jobset-390-dark")
}

func browseProjectID(t *testing.T, db *storage.DB, name string) int64 {
	t.Helper()
	p, err := db.GetProjectByName(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return p.ID
}
