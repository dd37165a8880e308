package metrics_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	agentcli "github.com/fc-ci/fc/agent/cli"
	agentconfig "github.com/fc-ci/fc/agent/config"
	"github.com/fc-ci/fc/agent/push"
	"github.com/fc-ci/fc/agent/session"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

// TestMetrics_RealEvaluationBuildsAndCacheFetchesMoveTheSeries evaluates and builds a
// small jobset on real agents and checks what /metrics says at each stage: the
// runnable queue by system and features before any builder, the evaluation
// histogram, the step and dispatch histograms, log bytes, the agents' slots while a
// step runs and after it is cancelled, cache hits, misses and bytes after real Nix
// fetches, and an upload rejection after a corrupted upload.
func TestMetrics_RealEvaluationBuildsAndCacheFetchesMoveTheSeries(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) { cfg.Queue.SweepInterval = 1 }})
	s := coordtest.Salt(t)
	sleepArg := fmt.Sprintf("400.%d", time.Now().UnixNano()%1_000_000)
	const logLine = "a line of log from the builder of b"
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf(`let
  %s
  a = mk "a" { };
in {
  inherit a;
  b = mk "b" { args = sh "echo '%s'; echo ${a} > $out"; };
  k = mk "k" { requiredSystemFeatures = [ "benchmark" ]; };
  slow = mk "slow" { args = sh "sleep %s; echo > $out"; };
}
`, coordtest.MkLet(s), logLine, sleepArg)})
	_, js := c.Project("metrics", repo.Dir, nil)

	before := scrapeMetrics(t, c.URL)
	if n, _ := before.histogram("fc_evaluation_duration_seconds"); n != 0 {
		t.Fatalf("evaluations observed before any: %d", n)
	}
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	c.Trigger(js, false)
	evalID := coordtest.Evaluated(t, c, js, 0)
	bs := coordtest.BuildsOf(t, c, evalID)
	sys := bs["a"].System

	// No builder yet: a, k and slow are runnable (b waits for a), by feature set. The
	// evaluation is observed once its report is stored, just after the API shows it.
	q := scrapeUntil(t, c, "the evaluation observed", func(s scrape) bool {
		n, _ := s.histogram("fc_evaluation_duration_seconds", "outcome=succeeded")
		return n > 0
	})
	q.wantValue(t, 2, "fc_queue_runnable_steps", "system="+sys, "features=")
	q.wantValue(t, 1, "fc_queue_runnable_steps", "system="+sys, "features=benchmark")
	age, ok := q.value("fc_queue_oldest_runnable_seconds", "system="+sys, "features=")
	if !ok || age <= 0 {
		t.Errorf("oldest runnable age %v (present %v), want > 0", age, ok)
	}
	if n, sum := q.histogram("fc_evaluation_duration_seconds", "outcome=succeeded"); n != 1 || sum <= 0 {
		t.Errorf("evaluation histogram: count %d sum %v, want 1 evaluation that took time", n, sum)
	}
	q.wantValue(t, 1, "fc_agent_sessions", "system="+sys)
	q.wantValue(t, 0, "fc_agent_build_slots", "system="+sys) // the evaluator does not build

	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "builder", Features: []string{"benchmark"}, MaxJobs: 2})
	var built []string
	for _, job := range []string{"a", "b", "k"} {
		b := coordtest.WaitBuild(t, c, bs[job].ID, 120*time.Second, "succeeded", coordtest.Build.Finished)
		if b.Status != "succeeded" {
			t.Fatalf("%s: %s", job, b.Status)
		}
		built = append(built, b.Outputs["out"])
	}
	coordtest.WaitBuild(t, c, bs["slow"].ID, 60*time.Second, "running", func(b coordtest.Build) bool { return b.Status == "running" })

	// a, b and k built; slow holds one of the builder's two slots.
	scrapeUntil(t, c, "three steps observed", func(s scrape) bool {
		n, _ := s.histogram("fc_step_duration_seconds", "system="+sys, "outcome=succeeded")
		return n >= 3
	}).histogramCount(t, 3, "fc_step_duration_seconds", "system="+sys, "outcome=succeeded")
	r := eventuallyValue(t, c, 1, "fc_agent_free_build_slots", "system="+sys)
	r.wantValue(t, 2, "fc_agent_build_slots", "system="+sys)
	r.wantValue(t, 2, "fc_agent_sessions", "system="+sys)
	if n, sum := r.histogram("fc_dispatch_latency_seconds", "system="+sys); n != 4 || sum < age {
		t.Errorf("dispatch latency: count %d sum %v, want 4 steps that waited %v or more in all", n, sum, age)
	}
	if v, ok := r.value("fc_queue_runnable_steps", "system="+sys, "features="); ok && v != 0 {
		t.Errorf("runnable steps once all were leased: %v", v)
	}
	if v, _ := r.value("fc_log_bytes_written_total"); v < float64(len(logLine)) {
		t.Errorf("log bytes written %v, want at least the %d of b's line", v, len(logLine))
	}

	// Cancelling slow frees its slot.
	if code := c.Do("POST", fmt.Sprintf("/api/v1/builds/%d/cancel", bs["slow"].ID), c.Admin, nil, nil); code != 200 {
		t.Fatalf("cancel: %d", code)
	}
	eventuallyValue(t, c, 2, "fc_agent_free_build_slots", "system="+sys)

	// A client substitutes b (and a, its input) from the cache; a path it lacks is a miss.
	c0 := scrapeMetrics(t, c.URL)
	got, err := emptyStore(t, fmt.Sprintf("nix-store --realise %s --option substituters %s/nix-cache --option trusted-public-keys '%s' && cat %s",
		built[1], c.URL, c.Cache.PublicKey(), built[1]))
	if err != nil || !strings.Contains(got, built[0]) {
		t.Fatalf("substitute b: %v\n%s", err, got)
	}
	missing := "/nix/store/" + strings.Repeat("0", 32) + "-" + s
	if out, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "path-info", "--store", c.URL+"/nix-cache",
		missing).CombinedOutput(); err == nil {
		t.Fatalf("path-info of a path the cache lacks succeeded:\n%s", out)
	}
	c1 := scrapeMetrics(t, c.URL)
	delta := func(name string) float64 {
		v0, _ := c0.value(name)
		v1, _ := c1.value(name)
		return v1 - v0
	}
	if d := delta("fc_cache_narinfo_hits_total"); d < 2 {
		t.Errorf("narinfo hits rose by %v, want 2 or more (b and a)", d)
	}
	if d := delta("fc_cache_narinfo_misses_total"); d < 1 {
		t.Errorf("narinfo misses rose by %v, want 1 or more", d)
	}
	if d := delta("fc_cache_served_bytes_total"); d <= 0 {
		t.Errorf("served bytes rose by %v, want the NARs of b and a", d)
	}

	// An upload whose declared NAR hash is wrong is rejected, by reason.
	file := filepath.Join(t.TempDir(), "upload-"+s)
	if err := os.WriteFile(file, []byte("uploaded to be rejected "+s), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nix-store", "--add", file).Output()
	if err != nil {
		t.Fatalf("nix-store --add: %v", err)
	}
	infos, err := push.PathInfos(context.Background(), []string{strings.TrimSpace(string(out))})
	if err != nil {
		t.Fatal(err)
	}
	infos[0].NarHash = "sha256:" + strings.Repeat("0", 52)
	if st, err := push.Upload(context.Background(), dialPush(t, c), infos, push.Options{}); err == nil || st.Sent != 0 {
		t.Fatalf("corrupted upload accepted: %+v %v", st, err)
	}
	scrapeMetrics(t, c.URL).wantValue(t, 1, "fc_cache_upload_rejections_total", "reason=hash")
}

// dialPush opens a push session as a newly registered agent allowed to push.
func dialPush(t testing.TB, c *coordtest.Coordinator) *session.Conn {
	t.Helper()
	cfg := agentconfig.Defaults()
	cfg.Coordinator.URL = c.URL
	cfg.Agent.StateDir = t.TempDir()
	cfg.Agent.Name = "pusher"
	c.AllowPush(t, cfg.Agent.StateDir, cfg.Agent.Name)
	sc, err := agentcli.SessionConfig(cfg, slog.New(slog.DiscardHandler), 0)
	if err != nil {
		t.Fatal(err)
	}
	sc.Purpose = protocol.PurposePush
	conn, err := session.Dial(context.Background(), sc, session.State{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// emptyStore runs a shell command with its own, empty /nix (a private mount
// namespace) and narinfo cache, as a separate machine would.
func emptyStore(t *testing.T, script string) (string, error) {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"nix", "xdg"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = exec.Command("chmod", "-R", "u+w", root).Run() })
	cmd := exec.Command("unshare", "--mount", "--fork", "sh", "-c",
		fmt.Sprintf("mount --bind %s/nix /nix && export XDG_CACHE_HOME=%s/xdg NIX_CONFIG='build-users-group =' && %s", root, root, script))
	out, err := cmd.CombinedOutput()
	return string(out), err
}
