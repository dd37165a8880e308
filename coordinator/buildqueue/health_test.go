package buildqueue_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
)

// brokenNix is a directory with a nix-store whose --realise always fails (the rest
// is the real one's), to put first on an agent's PATH.
func brokenNix(t *testing.T) string {
	t.Helper()
	const real = "/usr/bin/nix-store" // Nix's multi-call binary: its name says what it is
	if _, err := os.Stat(real); err != nil {
		t.Fatalf("no %s: %v", real, err)
	}
	dir := t.TempDir()
	script := fmt.Sprintf(`#!/bin/sh
for a in "$@"; do
  if [ "$a" = --realise ]; then echo "broken nix-store (test): cannot realise" >&2; exit 1; fi
done
exec %s "$@"
`, real)
	if err := os.WriteFile(filepath.Join(dir, "nix-store"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// No daemon connection either: the agent falls back to nix-store, which fails.
	if err := os.WriteFile(filepath.Join(dir, "nix-daemon"), []byte("#!/bin/sh\necho 'broken nix-daemon (test)' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// agentHealth is an agent's health as GET /api/v1/agents/{id} answers it.
type agentHealth struct {
	ConsecutiveFailures int        `json:"consecutive_failures"`
	DisabledUntil       *time.Time `json:"disabled_until"`
	LastFailure         string     `json:"last_failure"`
}

func healthOf(t *testing.T, c *coordtest.Coordinator, id int64) agentHealth {
	t.Helper()
	var h agentHealth
	if code := c.Do("GET", fmt.Sprintf("/api/v1/agents/%d", id), c.Admin, nil, &h); code != 200 {
		t.Fatalf("GET agent %d: %d", id, code)
	}
	return h
}

func agentNamed(t *testing.T, c *coordtest.Coordinator, name string) int64 {
	t.Helper()
	var id int64
	coordtest.Eventually(t, 60*time.Second, "agent "+name+" enrolls", func() bool {
		return c.DB.Pool().QueryRow(context.Background(), `SELECT id FROM agents WHERE name = $1`, name).Scan(&id) == nil
	})
	return id
}

const healthBackoff = 30 // seconds: long enough for the healthy agent to build the queue meanwhile

// TestBuilds_BrokenNixAgentIsBackedOffWhileAHealthyOneBuilds: an agent whose Nix fails
// every step is backed off after agent_failure_threshold failures, gets no step while
// a healthy agent builds the queue, takes one again once its backoff is over (and,
// failing, is backed off twice as long), and an admin's enable resets it at once. A
// step that failed for such reasons max_attempts times ends aborted, saying why.
func TestBuilds_BrokenNixAgentIsBackedOffWhileAHealthyOneBuilds(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) {
		cfg.Queue.AgentFailureThreshold = 2
		cfg.Queue.AgentBackoff = healthBackoff
		cfg.Queue.AgentBackoffMax = 4 * healthBackoff
		cfg.Queue.MaxAttempts = 3
		cfg.Queue.SweepInterval = 1
	}})
	s := coordtest.Salt(t)
	jobs := func(names ...string) string {
		var b strings.Builder
		fmt.Fprintf(&b, "let\n  %s\nin {\n", coordtest.MkLet(s))
		for _, n := range names {
			fmt.Fprintf(&b, "  %s = mk %q { };\n", n, n)
		}
		return b.String() + "}\n"
	}
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": jobs("a", "b", "c")})
	_, js := c.Project("demo", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "broken", Isolated: true, StepSlots: 1,
		Env: []string{"PATH=" + brokenNix(t) + ":" + os.Getenv("PATH")}})
	broken := agentNamed(t, c, "broken")
	c.Trigger(js, false)
	first := coordtest.Evaluated(t, c, js, 0)
	bs := coordtest.BuildsOf(t, c, first)

	var h agentHealth
	coordtest.Eventually(t, 90*time.Second, "the broken agent is backed off", func() bool {
		h = healthOf(t, c, broken)
		return h.DisabledUntil != nil
	})
	if h.ConsecutiveFailures != 2 || !strings.Contains(h.LastFailure, "nix-store --realise") {
		t.Fatalf("backed off with %+v, want 2 failures of nix-store --realise", h)
	}
	off := *h.DisabledUntil
	if d := time.Until(off); d < healthBackoff*time.Second-5*time.Second || d > healthBackoff*time.Second {
		t.Errorf("backed off for %v, want about %ds", d, healthBackoff)
	}

	// A healthy agent builds the whole queue; the backed-off one takes nothing.
	healthy := coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "healthy"})
	for job, b := range bs {
		f := coordtest.WaitBuild(t, c, b.ID, 60*time.Second, "finished", coordtest.Build.Finished)
		if f.Status != "succeeded" {
			t.Errorf("%s: %s, want succeeded by the healthy agent", job, f.Status)
		} else if g := coordtest.GetBuild(t, c, b.ID); len(g.Steps) == 0 || g.Steps[0].Agent != "healthy" {
			t.Errorf("%s built by %+v, want the healthy agent", job, g.Steps)
		}
	}
	if !time.Now().Before(off) {
		t.Fatalf("the queue took longer than the backoff (%ds): raise healthBackoff", healthBackoff)
	}
	if h := healthOf(t, c, broken); h.ConsecutiveFailures != 2 {
		t.Fatalf("the backed-off agent has %d failures, want 2: it took a step while backed off", h.ConsecutiveFailures)
	}

	// Alone with a new job, the broken agent takes it once its backoff is over; failing
	// again, it is backed off twice as long.
	healthy.Stop()
	repo.Commit(map[string]string{"release.nix": jobs("a", "b", "c", "d")})
	c.Trigger(js, false)
	d := coordtest.BuildsOf(t, c, coordtest.Evaluated(t, c, js, first))["d"]
	coordtest.Eventually(t, 2*healthBackoff*time.Second, "the broken agent takes a step after its backoff", func() bool {
		h = healthOf(t, c, broken)
		return h.ConsecutiveFailures == 3
	})
	back := time.Now()
	if back.Before(off.Add(-time.Second)) {
		t.Errorf("the agent failed a step at %v, before its backoff ended at %v", back, off)
	}
	if h.DisabledUntil == nil || h.DisabledUntil.Sub(back) < 2*healthBackoff*time.Second-5*time.Second {
		t.Errorf("after the third failure: disabled until %v, want about %ds from %v", h.DisabledUntil, 2*healthBackoff, back)
	}

	// An admin's enable resets it at once: it takes d again, which fails until its
	// attempts are used up.
	var en agentHealth
	if code := c.Do("POST", fmt.Sprintf("/api/v1/agents/%d/enable", broken), c.Admin, nil, &en); code != 200 ||
		en.ConsecutiveFailures != 0 || en.DisabledUntil != nil {
		t.Fatalf("enable: %d %+v, want the failures reset", code, en)
	}
	if f := coordtest.WaitBuild(t, c, d.ID, 60*time.Second, "finished", coordtest.Build.Finished); f.Status != "aborted" {
		t.Fatalf("d: %s, want aborted after max_attempts on the broken agent", f.Status)
	}
	var got struct {
		Reason string `json:"reason"`
	}
	if code := c.Do("GET", fmt.Sprintf("/api/v1/builds/%d", d.ID), c.Admin, nil, &got); code != 200 ||
		!strings.Contains(got.Reason, "after 3 attempt(s)") || !strings.Contains(got.Reason, "nix-store --realise") {
		t.Errorf("the aborted build's reason: %d %q, want its 3 attempts and the last error", code, got.Reason)
	}
}
