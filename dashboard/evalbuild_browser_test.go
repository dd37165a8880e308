package dashboard_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
)

// ebRelease is a release.nix of /bin/sh derivations named with salt: the jobs of
// both commits of TestEvalBuildPages_RealEvaluations, the second with second set.
func ebRelease(salt string, second bool) string {
	jobs := map[string]string{
		"stays":    `mk "stays" { args = sh "echo stays > $out"; }`,
		"broken":   `mk "broken" { args = sh "echo broken for good; exit 2"; }`,
		"failing":  `failing`,
		"user":     `mk "user" { args = sh "cat ${failing} > $out"; }`,
		"indirect": `mk "indirect" { args = sh "cat ${hidden} > $out"; }`,
		"lateOk":   `mk "lateOk" { args = sh "echo starting; sleep 10; echo done; echo > $out"; }`,
		"lateBad":  `mk "lateBad" { args = sh "echo starting; sleep 10; echo giving up; exit 4"; }`,
	}
	if second {
		jobs["flips"] = `mk "flips" { args = sh "echo now broken; exit 1"; }`
		jobs["fixed"] = `mk "fixed" { args = sh "echo fixed now > $out"; }`
		jobs["added"] = `mk "added" { args = sh "echo > $out"; }`
		// No agent has the feature: it waits in the queue (unsupported_wait is long).
		jobs["slow"] = `mk "slow" { requiredSystemFeatures = [ "fc-test-nobody-has-this" ]; }`
		jobs["oops"] = `throw "this job is broken on purpose"`
	} else {
		jobs["flips"] = `mk "flips" { args = sh "echo > $out"; }`
		jobs["fixed"] = `mk "fixed" { args = sh "echo not yet; exit 1"; }`
		jobs["gone"] = `mk "gone" { args = sh "echo > $out"; }`
	}
	var b strings.Builder
	fmt.Fprintf(&b, "let\n  %s\n", coordtest.MkLet(salt))
	b.WriteString(`  failing = mk "failing" { args = sh "echo about to fail; exit 3"; };` + "\n")
	b.WriteString(`  hidden = mk "hidden" { args = sh "echo hidden dependency fails; exit 5"; };` + "\nin {\n")
	for name, expr := range jobs {
		fmt.Fprintf(&b, "  %s = %s;\n", name, expr)
	}
	b.WriteString("}\n")
	return b.String()
}

// ebEmptyStore runs a shell script with its own, empty /nix (a private mount
// namespace) and its own cache of narinfo lookups, as another machine would.
func ebEmptyStore(t *testing.T, script string) (string, error) {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"nix", "xdg"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command("unshare", "--mount", "--fork", "sh", "-c",
		fmt.Sprintf("mount --bind %s/nix /nix && export XDG_CACHE_HOME=%s/xdg NIX_CONFIG='build-users-group =' && %s", root, root, script)).CombinedOutput()
	return string(out), err
}

// ebLines is the text of the log viewer's lines.
const ebLines = `[...document.querySelectorAll('#log .line .tx')].map(l => l.textContent).join('\n')`

// TestEvalBuildPages_RealEvaluations: two real evaluations of a jobset whose jobs
// change between them. A build page turns green (or red, with its reason) without a
// reload; every comparison tab of the second evaluation lists the right jobs; a
// dependency-failed build links the failed build (or step) and shows its log; the
// fetch command a page gives substitutes the outputs into an empty store; the pages
// fit 390 px and follow a dark scheme.
func TestEvalBuildPages_RealEvaluations(t *testing.T) {
	t.Parallel()
	browser := startBrowser(t)
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) { cfg.Queue.UnsupportedWait = 3600 }})
	salt := coordtest.Salt(t)
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": ebRelease(salt, false)})
	_, js := c.Project("demo", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "builder", MaxJobs: 2})
	c.Trigger(js, false)
	first := coordtest.Evaluated(t, c, js, 0)
	builds := coordtest.BuildsOf(t, c, first)

	// Two builds that take a while: their pages, opened now, turn green and red.
	live := map[string]*page{}
	for _, job := range []string{"lateOk", "lateBad"} {
		p := openTab(t, browser)
		p.navigate(fmt.Sprintf("%s/build/%d", c.URL, builds[job].ID))
		if s := eval[string](p, `document.getElementById('build-summary').dataset.status`); s != "queued" && s != "running" {
			t.Fatalf("%s had finished (%s) before its page opened", job, s)
		}
		eval[bool](p, `(window.fcNoReload = true)`)
		live[job] = p
	}
	live["lateOk"].waitJS(90*time.Second, "lateOk's page turns green with its outputs and fetch command",
		`document.getElementById('build-status').textContent === 'succeeded' && document.getElementById('build-status').classList.contains('ok')
		&& document.getElementById('build-fetch') && document.getElementById('build-finished') && !document.getElementById('build-reason')`)
	live["lateBad"].waitJS(90*time.Second, "lateBad's page turns red with its reason",
		`document.getElementById('build-status').textContent === 'failed' &&
		((document.getElementById('build-reason') || {}).textContent || '').includes('The build failed (exit code') && !document.getElementById('build-fetch')`)
	for job, p := range live {
		if !eval[bool](p, `window.fcNoReload === true`) {
			t.Errorf("%s's page was reloaded", job)
		}
		p.waitJS(30*time.Second, job+"'s log is complete", ebLines+`.includes('starting')`)
		p.screenshot("build-live-" + job)
	}
	coordtest.Eventually(t, 120*time.Second, "the first evaluation's builds finish", func() bool {
		for _, b := range coordtest.BuildsOf(t, c, first) {
			if !b.Finished() {
				return false
			}
		}
		return true
	})

	repo.Commit(map[string]string{"release.nix": ebRelease(salt, true)})
	c.Trigger(js, false)
	second := coordtest.Evaluated(t, c, js, first)
	coordtest.Eventually(t, 120*time.Second, "the second evaluation's builds finish (but slow)", func() bool {
		for job, b := range coordtest.BuildsOf(t, c, second) {
			if job != "slow" && !b.Finished() {
				return false
			}
		}
		return true
	})
	builds = coordtest.BuildsOf(t, c, second)

	p := openTab(t, browser)
	tabs := []struct{ tab, jobs string }{
		{"newly-failing", "flips"},
		{"newly-succeeding", "fixed"},
		{"still-failing", "broken,failing,indirect,lateBad,user"},
		{"new", "added"},
		{"removed", "gone"},
		{"queued", "slow"},
		{"aborted", ""},
		{"still-succeeding", "lateOk,stays"},
	}
	ebCheckTabs(t, p, fmt.Sprintf("%s/eval/%d", c.URL, second), tabs, "before-cancel")
	p.navigate(fmt.Sprintf("%s/eval/%d?tab=errors", c.URL, second))
	if got := eval[string](p, `document.getElementById('compare-rows').textContent`); !strings.Contains(got, "oops") ||
		!strings.Contains(got, "this job is broken on purpose") {
		t.Errorf("errors tab: %q", got)
	}
	p.screenshot("eval-tab-errors")
	// Cancelled, the slow build moves from the queued tab to the aborted one.
	if code := c.Do("POST", fmt.Sprintf("/api/v1/builds/%d/cancel", builds["slow"].ID), c.Admin, nil, nil); code != 200 {
		t.Fatalf("cancel slow: %d", code)
	}
	ebCheckTabs(t, p, fmt.Sprintf("%s/eval/%d", c.URL, second), []struct{ tab, jobs string }{{"queued", ""}, {"aborted", "slow"}}, "after-cancel")

	ebFollowFailures(t, p, c, builds)
	ebFetchCommand(t, p, c, builds["stays"].ID)
	ebPhoneAndDark(t, p, c, second, builds)
}

// ebCheckTabs opens the evaluation page, then each tab through its link, and checks
// the jobs it lists and its count.
func ebCheckTabs(t *testing.T, p *page, evalURL string, tabs []struct{ tab, jobs string }, shot string) {
	t.Helper()
	p.navigate(evalURL)
	for _, tc := range tabs {
		href := eval[string](p, `document.getElementById('tab-`+tc.tab+`').href`)
		p.navigate(href)
		got := eval[string](p, `[...document.querySelectorAll('#compare-rows tbody tr td:first-child a')].map(a => a.textContent).join(',')`)
		count := eval[string](p, `document.querySelector('#tab-`+tc.tab+`[aria-current=page] .count').textContent`)
		if got != tc.jobs || count != fmt.Sprint(len(strings.Split(tc.jobs, ","))-map[bool]int{true: 1}[tc.jobs == ""]) {
			t.Errorf("tab %s (%s): jobs %q count %s, want %q", tc.tab, shot, got, count, tc.jobs)
		}
		p.screenshot("eval-tab-" + tc.tab + "-" + shot)
	}
}

// ebFollowFailures follows dependency-failed builds to what failed: a job's build,
// and a step that is no job.
func ebFollowFailures(t *testing.T, p *page, c *coordtest.Coordinator, builds map[string]coordtest.Build) {
	t.Helper()
	p.navigate(fmt.Sprintf("%s/build/%d", c.URL, builds["user"].ID))
	if r := eval[string](p, `document.getElementById('build-reason').textContent`); !strings.Contains(r, "A dependency failed") {
		t.Errorf("user's reason: %q", r)
	}
	// The log box shows the failed dependency's log, not nothing.
	p.waitJS(30*time.Second, "user's page shows the failed dependency's log", ebLines+`.includes('about to fail')`)
	p.screenshot("build-dependency-failed")
	p.navigate(eval[string](p, `document.getElementById('build-culprit').href`))
	if id := eval[string](p, `document.getElementById('log').dataset.build`); id == fmt.Sprint(builds["user"].ID) {
		t.Fatalf("the failed dependency's link leads back to the build")
	}
	if s := eval[string](p, `document.getElementById('build-status').textContent`); s != "failed" {
		t.Errorf("the failed dependency's build is %s", s)
	}
	if r := eval[string](p, `document.querySelector('h1').textContent + ' / ' + document.getElementById('build-reason').textContent`); !strings.Contains(r, ": failing") ||
		!strings.Contains(r, "The build failed (exit code") {
		t.Errorf("the failed dependency's page: %q", r)
	}
	p.waitJS(30*time.Second, "the failed build's log", ebLines+`.includes('about to fail')`)
	p.screenshot("build-the-failed-dependency")

	// A dependency that is no job: the link opens its step's log on the same page.
	p.navigate(fmt.Sprintf("%s/build/%d", c.URL, builds["indirect"].ID))
	p.navigate(eval[string](p, `document.getElementById('build-culprit').href`))
	p.waitJS(30*time.Second, "the failed step's log", ebLines+`.includes('hidden dependency fails')`)
	if h := eval[string](p, `document.getElementById('log-head').textContent`); !strings.HasPrefix(h, "Log of step") && !strings.HasPrefix(h, "Log of the failed step") {
		t.Errorf("log heading: %q", h)
	}
	p.screenshot("build-failed-step")
}

// ebFetchCommand runs the fetch command a build page shows, as it is, with an empty
// store: the outputs arrive from FC's cache, signed by its key.
func ebFetchCommand(t *testing.T, p *page, c *coordtest.Coordinator, id int64) {
	t.Helper()
	p.navigate(fmt.Sprintf("%s/build/%d", c.URL, id))
	cmd := eval[string](p, `document.getElementById('build-fetch').textContent`)
	outs := eval[[]string](p, `[...document.querySelectorAll('#build-outputs code')].map(c => c.textContent)`)
	want := fmt.Sprintf("nix-store -r %s --option substituters %s/nix-cache --option trusted-public-keys %s", strings.Join(outs, " "), c.URL, c.Cache.PublicKey())
	if cmd != want || len(outs) != 1 {
		t.Fatalf("fetch command %q, want %q", cmd, want)
	}
	got, err := ebEmptyStore(t, cmd+" && cat "+outs[0])
	if err != nil || !strings.Contains(got, "stays") {
		t.Fatalf("the fetch command in an empty store: %v\n%s", err, got)
	}
	p.screenshot("build-succeeded-fetch")
}

// ebPhoneAndDark: both pages fit a 390 px wide phone and follow a dark scheme.
func ebPhoneAndDark(t *testing.T, p *page, c *coordtest.Coordinator, evalID int64, builds map[string]coordtest.Build) {
	t.Helper()
	p.resize(390, 844)
	pages := map[string]string{
		"eval":       fmt.Sprintf("%s/eval/%d?tab=still-failing", c.URL, evalID),
		"eval-error": fmt.Sprintf("%s/eval/%d?tab=errors", c.URL, evalID),
		"build-dep":  fmt.Sprintf("%s/build/%d", c.URL, builds["user"].ID),
		"build-ok":   fmt.Sprintf("%s/build/%d", c.URL, builds["stays"].ID),
	}
	for _, dark := range []bool{false, true} {
		p.darkMode(dark)
		scheme := map[bool]string{false: "light", true: "dark"}[dark]
		for name, u := range pages {
			p.navigate(u)
			p.fitsWidth(name + " at 390 px, " + scheme)
			p.screenshot(name + "-390-" + scheme)
			bg := eval[string](p, `getComputedStyle(document.body).backgroundColor`)
			if want := map[bool]string{false: "rgb(255, 255, 255)", true: "rgb(13, 17, 23)"}[dark]; bg != want {
				t.Errorf("%s, %s: body background %s, want %s", name, scheme, bg, want)
			}
		}
		// The page's own boxes follow the scheme too.
		p.navigate(pages["build-dep"])
		box := eval[string](p, `getComputedStyle(document.querySelector('.reason .detail')).backgroundColor`)
		if want := map[bool]string{false: "rgb(246, 248, 250)", true: "rgb(22, 27, 34)"}[dark]; box != want {
			t.Errorf("%s: the reason's detail box is %s, want %s", scheme, box, want)
		}
	}
}
