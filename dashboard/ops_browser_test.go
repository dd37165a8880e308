package dashboard_test

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/fc-ci/fc/storage"
)

// opsFixture fills the queue, the agents and the search with rows whose names and
// paths are long, as real ones are: what makes a narrow page scroll sideways.
func opsFixture(s *site) {
	s.t.Helper()
	jobset, eval := s.evalFixture()
	a := s.agent("builder-with-a-rather-long-host-name-01", "")
	s.exec(`UPDATE agents SET connected = true, last_seen_at = now(), systems = '{x86_64-linux,i686-linux,aarch64-linux}',
		features = '{kvm,big-parallel,nixos-test,benchmark}', max_jobs = 8, load1 = 3.5, free_disk_bytes = 123456789012,
		agent_version = '0.9.0-dev', nix_version = '2.24.9' WHERE id = $1`, a)
	s.agent("builder-02", "enabled=false")
	s.agent("retired-builder", "revoked_at=now()")
	for i, sys := range []string{"x86_64-linux", "x86_64-linux", "aarch64-linux"} {
		status, agent := "queued", any(nil)
		if i == 0 {
			status, agent = "running", a
		}
		name := fmt.Sprintf("python3.12-some-package-with-a-long-name-%d-unstable-2024-01-01", i)
		step := s.sqlID(`INSERT INTO steps (drv_path, system, status, agent_id, global_priority) VALUES ($1, $2, $3, $4, 10) RETURNING id`,
			drvPath(fmt.Sprint("s", i), name), sys, status, agent)
		b := s.sqlID(`INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, step_id, system, status)
			VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id`, eval, jobset, "pkgs.python312Packages.some-package-with-a-long-name-"+fmt.Sprint(i),
			drvPath(fmt.Sprint("s", i), name), step, sys, status)
		s.exec(`INSERT INTO build_outputs (build_id, name, path) VALUES ($1, 'out', $2)`, b, "/nix/store/"+nixHash(fmt.Sprint("s", i, "f"))+"-"+name)
	}
}

// checkPage opens path at a phone's width in a light, then a dark scheme: no
// sideways scroll, the dark colours applied, screenshots of both.
func checkPage(p *page, base, path, name string) {
	p.t.Helper()
	p.darkMode(false)
	p.navigate(base + path)
	p.fitsWidth(name + " at 390 px")
	p.screenshot(name + "-390-light")
	p.darkMode(true)
	if bg := eval[string](p, `getComputedStyle(document.body).backgroundColor`); bg != "rgb(13, 17, 23)" {
		p.t.Errorf("%s in a dark scheme: body background %s", name, bg)
	}
	// Tables and badges follow the scheme too (their colours are variables).
	if fg := eval[string](p, `getComputedStyle(document.querySelector('main h1')).color`); fg != "rgb(230, 237, 243)" {
		p.t.Errorf("%s in a dark scheme: heading colour %s", name, fg)
	}
	p.fitsWidth(name + " at 390 px, dark")
	p.screenshot(name + "-390-dark")
	p.darkMode(false)
}

// TestOpsBrowser_PhoneWidthDarkModeKeyboard: the queue, agents, search and admin
// pages fit a 390 px phone in both schemes, an admin signs in and drains an agent
// with the keyboard alone, and creates an API key that is shown once.
func TestOpsBrowser_PhoneWidthDarkModeKeyboard(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	opsFixture(s)
	adminName, adminPw := s.user(storage.RoleAdmin)
	srv := httptest.NewServer(s.h)
	t.Cleanup(srv.Close)
	p := openTab(t, startBrowser(t))
	p.resize(390, 844)

	checkPage(p, srv.URL, "/queue", "queue")
	if n := eval[int](p, `document.querySelectorAll('table.queue tbody tr').length`); n != 3 {
		t.Errorf("the queue shows %d steps, want 3", n)
	}
	checkPage(p, srv.URL, "/agents", "agents")
	checkPage(p, srv.URL, "/search?q=python", "search-names")
	checkPage(p, srv.URL, "/search?q="+nixHash("s1"), "search-path")
	if got := eval[string](p, `document.querySelector('#builds table td:nth-child(2) a').textContent`); !strings.Contains(got, "some-package-with-a-long-name-1") {
		t.Errorf("the path search found %q", got)
	}

	// Sign in as an admin, through the form, on the way to /admin.
	p.navigate(srv.URL + "/admin")
	p.waitJS(10*time.Second, "sent to sign in", `location.pathname === '/login' && document.readyState === 'complete'`)
	if err := chromedp.Do(p.ctx, chromedp.SendKeys("#username", adminName), chromedp.SendKeys("#password", adminPw+kb.Enter)); err != nil {
		t.Fatalf("sign in: %v", err)
	}
	p.waitJS(10*time.Second, "signed in, on /admin", `location.pathname === '/admin' && document.readyState === 'complete' && document.querySelector('#users')`)
	checkPage(p, srv.URL, "/admin", "admin")

	// An API key through the form: shown once, on the answer.
	if err := chromedp.Do(p.ctx, chromedp.SendKeys(`form[action="/admin/api-keys"] input[name=name]`, "ci-bot"+kb.Enter)); err != nil {
		t.Fatalf("create a key: %v", err)
	}
	p.waitJS(10*time.Second, "the new key", `document.readyState === 'complete' && document.querySelector('#secret-value')`)
	if key := eval[string](p, `document.querySelector('#secret-value').textContent`); !strings.HasPrefix(key, "fc_") {
		t.Errorf("the secret shown: %q", key)
	}
	p.fitsWidth("the new key at 390 px")
	p.screenshot("admin-new-key-390")
	p.navigate(srv.URL + "/admin")
	if eval[bool](p, `!!document.querySelector('#secret-value')`) {
		t.Error("the key is shown again")
	}

	// The agents page with the keyboard alone: Tab to the first agent's Drain
	// button, press Enter.
	checkPage(p, srv.URL, "/agents", "agents-admin")
	drain := `document.activeElement && document.activeElement.closest('form[action$="/drain"]')`
	for i := 0; i < 100 && !eval[bool](p, "!!("+drain+")"); i++ {
		if err := chromedp.Do(p.ctx, chromedp.KeyEvent(kb.Tab)); err != nil {
			t.Fatal(err)
		}
	}
	if !eval[bool](p, "!!("+drain+")") {
		t.Fatal("Tab never reaches a Drain button")
	}
	if err := chromedp.Do(p.ctx, chromedp.KeyEvent(kb.Enter)); err != nil {
		t.Fatal(err)
	}
	p.waitJS(10*time.Second, "the agent drains", `document.readyState === 'complete' && !!document.querySelector('.badge.warn')`)
	var draining bool
	if err := s.DB.Pool().QueryRow(t.Context(), `SELECT draining FROM agents WHERE name = 'builder-with-a-rather-long-host-name-01'`).Scan(&draining); err != nil || !draining {
		t.Fatalf("draining %v (%v)", draining, err)
	}
	p.screenshot("agents-drained-390")
}
