package dashboard_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/fc-ci/fc/coordinator/coordtest"
)

// chromium is Debian's package (apt-get install chromium; .ci/run installs it).
const chromium = "/usr/bin/chromium"

// startBrowser runs headless Chromium until the test ends and returns its context.
func startBrowser(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("browser tests need Debian's chromium at %s (apt-get install chromium): %v", chromium, err)
	}
	// The flags keep Chromium off the network (this machine has none) and quiet.
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium),
		chromedp.Headless,
		chromedp.NoSandbox, // root
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// page is one browser tab.
type page struct {
	t    *testing.T
	ctx  context.Context
	mu   sync.Mutex
	errs []string // uncaught exceptions in the page
}

func openTab(t *testing.T, browser context.Context) *page {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	p := &page{t: t, ctx: ctx}
	msgs := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range msgs {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleException {
				p.mu.Lock()
				p.errs = append(p.errs, m.Text)
				p.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, e := range p.errs {
			t.Errorf("uncaught exception in the page: %s", e)
		}
	})
	return p
}

// requestWatch follows a tab's requests for one path through DevTools' network
// events: how many are under way and how many have finished. Every change wakes a
// waiter.
type requestWatch struct {
	path     string
	mu       sync.Mutex
	open     map[network.RequestID]bool
	finished int
	changed  chan struct{} // made by a waiter, closed by the next change
}

// watchRequests starts following the tab's requests for path; call it before the
// navigation whose requests it is to see.
func (p *page) watchRequests(path string) *requestWatch {
	p.t.Helper()
	w := &requestWatch{path: path, open: map[network.RequestID]bool{}}
	err := chromedp.Listen(p.ctx, func(ev any) {
		w.mu.Lock()
		defer w.mu.Unlock()
		switch e := ev.(type) {
		case *network.EventRequestWillBeSent:
			if u, err := url.Parse(e.Request.URL); err != nil || u.Path != w.path {
				return
			}
			w.open[e.RequestID] = true
		case *network.EventLoadingFinished:
			if !w.open[e.RequestID] {
				return
			}
			delete(w.open, e.RequestID)
			w.finished++
		case *network.EventLoadingFailed:
			if !w.open[e.RequestID] {
				return
			}
			delete(w.open, e.RequestID)
		default:
			return
		}
		if w.changed != nil {
			close(w.changed)
			w.changed = nil
		}
	})
	if err != nil {
		p.t.Fatalf("follow the requests for %s: %v", path, err)
	}
	return w
}

// settled waits until none of the requests is under way, and returns how many
// finished.
func (w *requestWatch) settled(t *testing.T, within time.Duration) int {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		open, finished := len(w.open), w.finished
		if w.changed == nil {
			w.changed = make(chan struct{})
		}
		changed := w.changed
		w.mu.Unlock()
		if open == 0 {
			return finished
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("%d requests for %s still under way after %v", open, w.path, within)
		}
	}
}

// bodyBytes is the body bytes (encodedBodySize) of the page's first n finished
// requests for path, from its performance entries. The page's own promise waits for
// them (a PerformanceObserver): an entry may land just after DevTools reports its
// request finished.
func (p *page) bodyBytes(path string, n int, within time.Duration) int {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, within)
	defer cancel()
	js := fmt.Sprintf(`new Promise(resolve => {
		const done = () => {
			const es = performance.getEntriesByType('resource').filter(e => new URL(e.name).pathname === %q);
			if (es.length < %d) return false;
			resolve(es.slice(0, %[2]d).reduce((s, e) => s + e.encodedBodySize, 0));
			return true;
		};
		if (!done()) new PerformanceObserver((_, o) => { if (done()) o.disconnect(); }).observe({ type: 'resource' });
	})`, path, n)
	v, err := chromedp.Run(ctx, chromedp.Evaluate[int](js, chromedp.EvalAwaitPromise))
	if err != nil {
		p.t.Fatalf("the performance entries of %d requests for %s: %v", n, path, err)
	}
	return v
}

func (p *page) navigate(url string) {
	p.t.Helper()
	if err := chromedp.Do(p.ctx, chromedp.Navigate(url)); err != nil {
		p.t.Fatalf("navigate %s: %v", url, err)
	}
}

func eval[T any](p *page, js string) T {
	p.t.Helper()
	v, err := chromedp.Run(p.ctx, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
	if err != nil {
		p.t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

// waitJS polls a JavaScript condition until it is true.
func (p *page) waitJS(within time.Duration, what, js string) {
	p.t.Helper()
	coordtest.Eventually(p.t, within, what, func() bool { return eval[bool](p, "!!("+js+")") })
}

func salt(t *testing.T) string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()) + "-" + hex.EncodeToString(b)
}

// jobset is a release.nix with /bin/sh derivations named with the test's salt.
func jobset(t *testing.T, jobs map[string]string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `let
  mk = name: script: derivation { name = "${name}-%s"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" ("export PATH=/bin:/usr/bin; " + script) ]; };
in {
`, salt(t))
	for name, script := range jobs {
		fmt.Fprintf(&b, "  %s = mk %q %q;\n", name, name, script)
	}
	b.WriteString("}\n")
	return b.String()
}

type build struct {
	ID     int64  `json:"id"`
	Job    string `json:"job"`
	Status string `json:"status"`
}

// startBuilds runs a coordinator with an evaluator and a builder on a jobset of
// scripts and returns the builds of its first evaluation by job.
func startBuilds(t *testing.T, jobs map[string]string) (*coordtest.Coordinator, map[string]int64) {
	t.Helper()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": jobset(t, jobs)})
	_, js := c.Project("demo", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "builder", MaxJobs: 2})
	c.Trigger(js, false)
	var evalID int64
	coordtest.Eventually(t, 120*time.Second, "the evaluation succeeds", func() bool {
		var l struct {
			Items []struct {
				ID     int64  `json:"id"`
				Status string `json:"status"`
				Error  string `json:"error"`
			}
		}
		c.Do("GET", fmt.Sprintf("/api/v1/evaluations?jobset_id=%d", js), "", nil, &l)
		if len(l.Items) == 0 {
			return false
		}
		if l.Items[0].Status == "failed" {
			t.Fatalf("evaluation failed: %s", l.Items[0].Error)
		}
		evalID = l.Items[0].ID
		return l.Items[0].Status == "succeeded"
	})
	var l struct{ Items []build }
	c.Do("GET", fmt.Sprintf("/api/v1/builds?evaluation_id=%d", evalID), "", nil, &l)
	ids := map[string]int64{}
	for _, b := range l.Items {
		ids[b.Job] = b.ID
	}
	if len(ids) != len(jobs) {
		t.Fatalf("evaluation %d has builds %v, want %d", evalID, ids, len(jobs))
	}
	return c, ids
}

func buildStatus(c *coordtest.Coordinator, id int64) string {
	var b build
	c.Do("GET", fmt.Sprintf("/api/v1/builds/%d", id), "", nil, &b)
	return b.Status
}

// screenshot saves the tab as name.png in the test's artifact directory (kept when
// the tests run with -artifacts; scripts/test does).
func (p *page) screenshot(name string) {
	p.t.Helper()
	png, err := chromedp.Run(p.ctx, chromedp.FullScreenshot(100)) // quality 100 is PNG
	if err != nil {
		p.t.Fatalf("screenshot %s: %v", name, err)
	}
	file := filepath.Join(p.t.ArtifactDir(), name+".png")
	if err := os.WriteFile(file, png, 0o644); err != nil {
		p.t.Fatalf("screenshot %s: %v", name, err)
	}
}

// resize makes the tab's viewport width × height CSS pixels (a phone: 390 × 844).
func (p *page) resize(width, height int64) {
	p.t.Helper()
	if err := chromedp.Do(p.ctx, chromedp.EmulateViewport(width, height)); err != nil {
		p.t.Fatalf("resize the tab to %d×%d: %v", width, height, err)
	}
}

// darkMode makes the tab prefer a dark colour scheme (or light, with false).
func (p *page) darkMode(dark bool) {
	p.t.Helper()
	scheme := "light"
	if dark {
		scheme = "dark"
	}
	media := func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		_, err := cdp.Call(ctx, t, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}}})
		return chromedp.Void{}, err
	}
	if err := chromedp.Do(p.ctx, media); err != nil {
		p.t.Fatalf("prefer a %s scheme: %v", scheme, err)
	}
}

// overflowJS is "" when the page does not scroll sideways, else what sticks out.
const overflowJS = `(() => {
  const w = document.documentElement.clientWidth;
  if (document.documentElement.scrollWidth <= w) return "";
  const out = [];
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (r.right > w + 1 && !el.closest('.scroll, .log')) out.push(el.tagName + (el.id ? '#' + el.id : '') + (el.className ? '.' + String(el.className).split(' ').join('.') : '') + ' right=' + Math.round(r.right));
  }
  return 'page is ' + document.documentElement.scrollWidth + 'px wide in a ' + w + 'px viewport: ' + out.slice(0, 5).join(', ');
})()`

// fitsWidth fails the test when the page scrolls sideways at its current size.
func (p *page) fitsWidth(what string) {
	p.t.Helper()
	if msg := eval[string](p, overflowJS); msg != "" {
		p.screenshot("overflow-" + strings.ReplaceAll(what, " ", "-"))
		p.t.Errorf("%s: %s", what, msg)
	}
}
