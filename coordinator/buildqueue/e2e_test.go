package buildqueue_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

func processRunning(pattern string) bool {
	return exec.Command("pgrep", "-f", pattern).Run() == nil
}

// TestBuilds_JobsetOnIsolatedAgents builds one jobset with every case of the builds
// issue on two agents that each have their own, empty Nix store: every input they use
// came through the coordinator's cache.
func TestBuilds_JobsetOnIsolatedAgents(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) {
		cfg.Queue.UnsupportedWait = 6
		cfg.Queue.SweepInterval = 1
	}})
	s := coordtest.Salt(t)
	sleepArg := fmt.Sprintf("300.%d", time.Now().UnixNano()%1_000_000) // names the cancelled builder's process
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf(`let
  %s
  base = mk "base" { };
  left = mk "left" { args = sh "echo ${base} > $out"; };
  right = mk "right" { args = sh "echo ${base} > $out"; };
  bad = mk "bad" { args = sh "echo failing on purpose; exit 3"; };
in {
  diamond = { recurseForDerivations = true; top = mk "top" { args = sh "echo ${left} ${right} > $out"; }; inherit base left right; };
  inherit bad;
  dep1 = mk "dep1" { args = sh "echo ${bad} > $out"; };
  dep2 = mk "dep2" { args = sh "echo ${bad} > $out"; };
  multi = mk "multi" { outputs = [ "out" "dev" ]; args = sh "echo out > $out; echo dev > $dev"; };
  timeout = mk "timeout" { args = sh "echo waiting; sleep 60"; } // { meta.timeout = 2; };
  silent = mk "silent" { args = sh "echo then silence; sleep 60"; } // { meta.maxSilent = 2; };
  failed-output = mk "fwo" { args = sh "mkdir -p $out/nix-support; echo > $out/nix-support/failed"; };
  products = mk "products" { args = sh ''
    mkdir -p $out/nix-support
    echo hello-product > $out/report.txt
    echo "doc pdf $out/report.txt" > $out/nix-support/hydra-build-products
    echo "coverage 87.5 %%" > $out/nix-support/hydra-metrics
    echo my-release-1.0 > $out/nix-support/hydra-release-name
  ''; };
  cancel-me = mk "cancel" { args = sh "echo started; sleep %s"; };
  arm = mk "arm" { system = "aarch64-linux"; };
  kvm = mk "kvm" { requiredSystemFeatures = [ "kvm" ]; };
  all-good = mk "all-good" { _hydraAggregate = true; constituents = [ left right ]; };
  all-bad = mk "all-bad" { _hydraAggregate = true; constituents = [ left bad ]; };
}
`, coordtest.MkLet(s), sleepArg)})
	_, js := c.Project("demo", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "plain", Features: []string{"benchmark"}, MaxJobs: 3, Isolated: true})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "kvm", Features: []string{"kvm"}, MaxJobs: 3, Isolated: true})
	c.Trigger(js, false)
	evalID := coordtest.Evaluated(t, c, js, 0)
	bs := coordtest.BuildsOf(t, c, evalID)
	if bs["arm"].Status != "queued" {
		t.Errorf("arm right after evaluation: %s, want queued (a capable agent might still come)", bs["arm"].Status)
	}

	// Cancel during the build: the builder process is gone within 5 s.
	cancelID := bs["cancel-me"].ID
	coordtest.WaitBuild(t, c, cancelID, 60*time.Second, "running", func(b coordtest.Build) bool { return b.Status == "running" })
	coordtest.Eventually(t, 30*time.Second, "the builder runs", func() bool { return processRunning("sleep " + sleepArg) })
	start := time.Now()
	if code := c.Do("POST", fmt.Sprintf("/api/v1/builds/%d/cancel", cancelID), c.Admin, nil, nil); code != 200 {
		t.Fatalf("cancel: %d", code)
	}
	coordtest.Eventually(t, 5*time.Second, "the cancelled builder is killed", func() bool { return !processRunning("sleep " + sleepArg) })
	t.Logf("cancel: builder gone %v after the request", time.Since(start).Round(time.Millisecond))

	final := map[string]coordtest.Build{}
	for job, b := range bs {
		final[job] = coordtest.WaitBuild(t, c, b.ID, 120*time.Second, "finished", coordtest.Build.Finished)
	}
	want := map[string]struct {
		status string
		code   int
	}{
		"diamond.base": {"succeeded", 0}, "diamond.left": {"succeeded", 0}, "diamond.right": {"succeeded", 0},
		"diamond.top": {"succeeded", 0}, "bad": {"failed", 1}, "dep1": {"dependency_failed", 2},
		"dep2": {"dependency_failed", 2}, "multi": {"succeeded", 0}, "timeout": {"timed_out", 7},
		"silent": {"timed_out", 7}, "failed-output": {"failed_with_output", 6}, "products": {"succeeded", 0},
		"cancel-me": {"cancelled", 4}, "arm": {"unsupported_system", 9}, "kvm": {"succeeded", 0},
		"all-good": {"succeeded", 0}, "all-bad": {"failed", 1},
	}
	for job, w := range want {
		b, ok := final[job]
		if !ok {
			t.Errorf("no build for %s", job)
			continue
		}
		if b.Status != w.status || b.Code() != w.code {
			t.Errorf("%s: %s (%d), want %s (%d)", job, b.Status, b.Code(), w.status, w.code)
		}
	}
	for _, dep := range []string{"dep1", "dep2"} {
		if p := final[dep].PropagatedFrom; p == nil || *p != final["bad"].ID {
			t.Errorf("%s propagated from %v, want bad's build %d", dep, p, final["bad"].ID)
		}
	}
	// The kvm job went to the agent that advertises kvm.
	if k := coordtest.GetBuild(t, c, final["kvm"].ID); len(k.Steps) == 0 || k.Steps[0].Agent != "kvm" {
		t.Errorf("kvm built by %+v, want the kvm agent", k.Steps)
	}
	// Multi-output: both outputs are in the cache.
	multi := coordtest.GetBuild(t, c, final["multi"].ID)
	if len(multi.Outputs) != 2 {
		t.Errorf("multi outputs %v", multi.Outputs)
	}
	for name, p := range multi.Outputs {
		if code, _ := coordtest.Get(t, c.URL+"/nix-cache/"+strings.TrimPrefix(p, "/nix/store/")[:32]+".narinfo"); code != 200 {
			t.Errorf("multi output %s (%s) not in the cache: %d", name, p, code)
		}
	}
	// Products, metrics and release name from nix-support; the product downloads.
	prod := coordtest.GetBuild(t, c, final["products"].ID)
	if len(prod.Products) != 1 || prod.Products[0].Type != "doc" || prod.Products[0].Subtype != "pdf" ||
		prod.Products[0].Name != "report.txt" || prod.Products[0].FileSize == nil || *prod.Products[0].FileSize != 14 {
		t.Errorf("products %+v", prod.Products)
	} else {
		code, body := coordtest.Get(t, c.URL+prod.Products[0].DownloadURL)
		if code != 200 || body != "hello-product\n" {
			t.Errorf("download: %d %q", code, body)
		}
	}
	if len(prod.Metrics) != 1 || prod.Metrics[0].Name != "coverage" || prod.Metrics[0].Value != 87.5 || prod.Metrics[0].Unit != "%" {
		t.Errorf("metrics %+v", prod.Metrics)
	}
	if prod.ReleaseName != "my-release-1.0" {
		t.Errorf("release name %q", prod.ReleaseName)
	}
	// The failure's log, over the API and to `nix log` through the cache.
	code, body := coordtest.Get(t, fmt.Sprintf("%s/api/v1/builds/%d/log", c.URL, final["bad"].ID))
	if code != 200 || !strings.Contains(body, "failing on purpose") {
		t.Errorf("bad's log: %d %q", code, body)
	}
	code, body = coordtest.Get(t, c.URL+"/nix-cache/log/"+strings.TrimPrefix(final["bad"].DrvPath, "/nix/store/"))
	if code != 200 || !strings.Contains(body, "failing on purpose") {
		t.Errorf("nix-cache log: %d %q", code, body)
	}
	// `nix log` itself reads it from the cache.
	out, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "log", "--store", c.URL+"/nix-cache",
		final["bad"].DrvPath).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "failing on purpose") {
		t.Errorf("nix log through the cache: %v %s", err, out)
	}
	if code, body := coordtest.Get(t, fmt.Sprintf("%s/api/v1/builds/%d/log?tail=1", c.URL, final["silent"].ID)); code != 200 ||
		strings.Count(strings.TrimSpace(body), "\n") != 0 {
		t.Errorf("tail=1: %d %q", code, body)
	}
}

// TestBuilds_RestartAfterFixAndCachedFailure: a builder fails while a flag file is
// absent; a new evaluation of the same derivation is the same failed build (reused, as
// Hydra does: failures are not retried by re-evaluating; in another jobset it would be
// a cached failure, see storage's tests); after the file exists, a restart builds it
// and its dependent.
func TestBuilds_RestartAfterFixAndCachedFailure(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	flag := filepath.Join(sharedDir(t), "flag")
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf(`let
  %s
  flaky = mk "flaky" { args = sh "if [ -e %s ]; then echo ok > $out; else echo flag missing; exit 1; fi"; };
in {
  inherit flaky;
  after = mk "after" { args = sh "echo ${flaky} > $out"; };
}
`, coordtest.MkLet(coordtest.Salt(t)), flag)})
	_, js := c.Project("demo", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "builder", MaxJobs: 2})
	c.Trigger(js, false)
	first := coordtest.Evaluated(t, c, js, 0)
	bs := coordtest.BuildsOf(t, c, first)
	if b := coordtest.WaitBuild(t, c, bs["flaky"].ID, 60*time.Second, "finished", coordtest.Build.Finished); b.Status != "failed" {
		t.Fatalf("flaky: %s", b.Status)
	}
	if b := coordtest.WaitBuild(t, c, bs["after"].ID, 60*time.Second, "finished", coordtest.Build.Finished); b.Status != "dependency_failed" {
		t.Fatalf("after: %s", b.Status)
	}
	// Without a restart, the re-evaluation keeps the failed build.
	c.Trigger(js, true)
	second := coordtest.Evaluated(t, c, js, first)
	if b := coordtest.BuildsOf(t, c, second)["flaky"]; b.ID != bs["flaky"].ID || b.Status != "failed" {
		t.Errorf("flaky again without restart: build %d %s, want the failed build %d", b.ID, b.Status, bs["flaky"].ID)
	}
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code := c.Do("POST", fmt.Sprintf("/api/v1/builds/%d/restart", bs["after"].ID), c.Admin, nil, nil); code != 200 {
		t.Fatalf("restart: %d", code)
	}
	for _, job := range []string{"flaky", "after"} {
		if b := coordtest.WaitBuild(t, c, bs[job].ID, 60*time.Second, "finished", coordtest.Build.Finished); b.Status != "succeeded" {
			t.Errorf("%s after restart: %s", job, b.Status)
		}
	}
	if code := c.Do("POST", fmt.Sprintf("/api/v1/builds/%d/restart", bs["after"].ID), c.Admin, nil, nil); code != 409 {
		t.Errorf("restarting a succeeded build: %d, want 409", code)
	}
}

// slowJobset is n independent derivations that each sleep secs, append their name to
// record (outside the store: it counts real builds) and succeed.
// sharedDir is a directory builders can write to (they run as the nixbld users, and
// t.TempDir's parent is private).
func sharedDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "fc-builders-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	return dir
}

func slowJobset(t *testing.T, n int, secs float64, record string) string {
	// Every builder appends to it, each as its own nixbld user.
	if err := os.WriteFile(record, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(record, 0o666); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "let\n  %s\nin {\n", coordtest.MkLet(coordtest.Salt(t)))
	for i := range n {
		fmt.Fprintf(&b, "  j%d = mk \"j%d\" { args = sh \"sleep %g; echo j%d >> %s; echo > $out\"; };\n", i, i, secs, i, record)
	}
	b.WriteString("}\n")
	return b.String()
}

func stepOf(t *testing.T, c *coordtest.Coordinator, buildID int64) coordtest.Step {
	t.Helper()
	b := coordtest.GetBuild(t, c, buildID)
	if len(b.Steps) == 0 {
		t.Fatalf("build %d has no step", buildID)
	}
	return b.Steps[0]
}

// TestBuilds_KilledAgentsStepIsRescuedAndBuiltOnce: SIGKILL on the agent building a
// step; the lease expires, the step is rescued and built by the other agent.
func TestBuilds_KilledAgentsStepIsRescuedAndBuiltOnce(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) {
		cfg.Queue.LeaseTTL, cfg.Queue.LeaseGrace, cfg.Queue.SweepInterval = 3, 1, 1
	}})
	record := filepath.Join(sharedDir(t), "built")
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": slowJobset(t, 1, 3, record)})
	_, js := c.Project("demo", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	agents := map[string]*coordtest.Agent{
		"one": coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "one", Isolated: true}),
		"two": coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "two", Isolated: true}),
	}
	c.Trigger(js, false)
	id := coordtest.BuildsOf(t, c, coordtest.Evaluated(t, c, js, 0))["j0"].ID
	coordtest.WaitBuild(t, c, id, 60*time.Second, "running", func(b coordtest.Build) bool { return b.Status == "running" })
	first := stepOf(t, c, id).Agent
	agents[first].Kill()
	b := coordtest.WaitBuild(t, c, id, 90*time.Second, "finished", coordtest.Build.Finished)
	st := stepOf(t, c, id)
	if b.Status != "succeeded" || st.Agent == first || st.Attempts != 2 {
		t.Errorf("after killing %s: build %s, step on %s after %d attempts; want succeeded on the other agent, attempt 2",
			first, b.Status, st.Agent, st.Attempts)
	}
}

// TestBuilds_CoordinatorRestartMidBuild: the step keeps running on its agent while the
// coordinator restarts, and reports to the new one; it is not built again.
func TestBuilds_CoordinatorRestartMidBuild(t *testing.T) {
	// Serial (the parallel tests wait until it is done): the agent must reconnect
	// within the lease's grace, which other builds on this machine's cores can delay.
	c := coordtest.Start(t, coordtest.Options{})
	record := filepath.Join(sharedDir(t), "built")
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": slowJobset(t, 1, 4, record)})
	_, js := c.Project("demo", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "builder"})
	c.Trigger(js, false)
	id := coordtest.BuildsOf(t, c, coordtest.Evaluated(t, c, js, 0))["j0"].ID
	coordtest.WaitBuild(t, c, id, 60*time.Second, "running", func(b coordtest.Build) bool { return b.Status == "running" })
	c.Restart()
	b := coordtest.WaitBuild(t, c, id, 60*time.Second, "finished", coordtest.Build.Finished)
	if st := stepOf(t, c, id); b.Status != "succeeded" || st.Attempts != 1 {
		t.Errorf("after a coordinator restart: %s after %d attempts, want succeeded after 1", b.Status, st.Attempts)
	}
	if data, _ := os.ReadFile(record); strings.Count(string(data), "j0\n") != 1 {
		t.Errorf("built %d times", strings.Count(string(data), "j0\n"))
	}
}

// TestBuilds_TwoCoordinatorsOneDatabase: the evaluation is stored through one
// coordinator; both coordinators' agents build its 200 steps, each exactly once.
func TestBuilds_TwoCoordinatorsOneDatabase(t *testing.T) {
	// Serial (the parallel tests wait until it is done): 200 builds within a time limit, which
	// other builds on this machine's cores would distort.
	c1 := coordtest.Start(t, coordtest.Options{})
	c2 := coordtest.Start(t, coordtest.Options{DB: c1.DB})
	record := filepath.Join(sharedDir(t), "built")
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": slowJobset(t, 200, 0, record)})
	_, js := c1.Project("demo", repo.Dir, nil)
	coordtest.StartAgent(t, c1, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, c1, coordtest.AgentOptions{Name: "one", MaxJobs: 2})
	coordtest.StartAgent(t, c2, coordtest.AgentOptions{Name: "two", MaxJobs: 2})
	c1.Trigger(js, false)
	evalID := coordtest.Evaluated(t, c1, js, 0)
	coordtest.Eventually(t, 180*time.Second, "200 builds succeed", func() bool {
		var n int
		_ = c1.DB.Pool().QueryRow(context.Background(), `SELECT count(*) FROM builds WHERE evaluation_id = $1 AND status = 'succeeded'`, evalID).Scan(&n)
		return n == 200
	})
	data, err := os.ReadFile(record)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(string(data))
	sort.Strings(lines)
	seen := map[string]int{}
	for _, l := range lines {
		seen[l]++
	}
	for name, n := range seen {
		if n != 1 {
			t.Errorf("%s built %d times", name, n)
		}
	}
	if len(seen) != 200 {
		t.Errorf("%d derivations built, want 200", len(seen))
	}
	perAgent := map[string]int{}
	rows, err := c1.DB.Pool().Query(context.Background(), `SELECT a.name, count(*) FROM steps s JOIN agents a ON a.id = s.agent_id GROUP BY a.name`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var name string
		var n int
		_ = rows.Scan(&name, &n)
		perAgent[name] = n
	}
	rows.Close()
	if perAgent["two"] == 0 || perAgent["one"] == 0 {
		t.Errorf("steps per agent %v: the coordinator that did not store the evaluation dispatched none", perAgent)
	}
	t.Logf("steps per agent: %v", perAgent)
}

// TestBuilds_AgentDrainFinishesThenSecondSignalCancels: SIGTERM during a build lets
// it finish, report and exit 0; with a second SIGTERM the step is cancelled on the
// agent and requeued.
func TestBuilds_AgentDrainFinishesThenSecondSignalCancels(t *testing.T) {
	// Serial (the parallel tests wait until it is done): it times signals against a running build, which
	// other builds on this machine's cores would distort.
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) {
		cfg.Queue.RetryBackoff = 2 // the requeued step waits; no event ends the wait
		cfg.Queue.SweepInterval = 300
	}})
	record := filepath.Join(sharedDir(t), "built")
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": slowJobset(t, 2, 3, record)})
	_, js := c.Project("demo", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	a := coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "drainer", Isolated: true, StepSlots: 1})
	c.Trigger(js, false)
	bs := coordtest.BuildsOf(t, c, coordtest.Evaluated(t, c, js, 0))
	var firstID, secondID int64
	// "running" is set when the coordinator assigns the step; the signal must come after
	// the agent has taken it (a signal before would find nothing to drain).
	c.Log.WaitFor(t, 60*time.Second, "agent-drainer:", "msg=building")
	coordtest.Eventually(t, 60*time.Second, "one build runs", func() bool {
		for _, job := range []string{"j0", "j1"} {
			if coordtest.GetBuild(t, c, bs[job].ID).Status == "running" {
				firstID = bs[job].ID
				secondID = bs[map[string]string{"j0": "j1", "j1": "j0"}[job]].ID
				return true
			}
		}
		return false
	})
	a.Signal(syscall.SIGTERM)
	err, exited := a.Wait(60 * time.Second)
	if !exited || err != nil {
		t.Fatalf("drained agent: exited %v, err %v; want exit 0", exited, err)
	}
	if b := coordtest.GetBuild(t, c, firstID); b.Status != "succeeded" {
		t.Errorf("build running at SIGTERM: %s, want succeeded", b.Status)
	}
	if b := coordtest.GetBuild(t, c, secondID); b.Status != "queued" {
		t.Errorf("the other build: %s, want queued (a draining agent takes nothing new)", b.Status)
	}
	// A new agent takes the second build; two signals cancel it and it is requeued.
	b := coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "impatient", Isolated: true, StepSlots: 1})
	c.Log.WaitFor(t, 60*time.Second, "agent-impatient:", "msg=building")
	b.Signal(syscall.SIGTERM)
	coordtest.Eventually(t, 10*time.Second, "the agent says it drains", func() bool {
		var draining bool
		_ = c.DB.Pool().QueryRow(context.Background(), `SELECT self_draining FROM agents WHERE name = 'impatient'`).Scan(&draining)
		return draining
	})
	b.Signal(syscall.SIGTERM)
	if err, exited := b.Wait(10 * time.Second); !exited || err == nil {
		t.Errorf("agent after a second signal: exited %v, err %v; want a non-zero exit", exited, err)
	}
	coordtest.WaitBuild(t, c, secondID, 30*time.Second, "requeued", func(b coordtest.Build) bool { return b.Status == "queued" })
	// Another agent builds it once the backoff is over, long before the next sweep.
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "finisher", StepSlots: 1})
	coordtest.WaitBuild(t, c, secondID, 30*time.Second, "built after its backoff", func(b coordtest.Build) bool { return b.Status == "succeeded" })
}

// TestBuilds_OneSlotStartsStepsInSchedulingOrder: with one agent slot, queued steps
// start in the order bump > jobset share > schedulingPriority > critical path > age.
func TestBuilds_OneSlotStartsStepsInSchedulingOrder(t *testing.T) {
	// Serial (the parallel tests wait until it is done): it checks the order steps start in, which
	// other builds on this machine's cores would distort.
	ctx := context.Background()
	c := coordtest.Start(t, coordtest.Options{})
	s := coordtest.Salt(t)
	busy := coordtest.NewRepo(t)
	busy.Commit(map[string]string{"release.nix": fmt.Sprintf("let\n  %s\nin {\n  old = mk \"old\" { };\n  history = mk \"history\" { };\n}\n", coordtest.MkLet(s))})
	_, busyJS := c.Project("busy", busy.Dir, nil)
	idle := coordtest.NewRepo(t)
	idle.Commit(map[string]string{"release.nix": fmt.Sprintf("let\n  %s\nin {\n  share = mk \"share\" { };\n}\n", coordtest.MkLet(s))})
	_, idleJS := c.Project("idle", idle.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})

	c.Trigger(busyJS, false)
	first := coordtest.Evaluated(t, c, busyJS, 0)
	// The busy jobset used an hour of build time today.
	if _, err := c.DB.Pool().Exec(ctx, `WITH b AS (UPDATE builds SET status = 'succeeded', status_code = 0,
			started_at = now() - interval '2 hours', finished_at = now() - interval '1 hour'
			WHERE id = $1 RETURNING step_id)
		UPDATE steps SET status = 'succeeded', status_code = 0 WHERE id = (SELECT step_id FROM b)`, coordtest.BuildsOf(t, c, first)["history"].ID); err != nil {
		t.Fatal(err)
	}
	busy.Commit(map[string]string{"release.nix": fmt.Sprintf(`let
  %s
  cpBase = mk "cp-base" { };
in {
  old = mk "old" { };
  history = mk "history" { };
  new = mk "new" { };
  prio = mk "prio" { } // { meta.schedulingPriority = 200; };
  cp-top = mk "cp-top" { args = sh "echo ${cpBase} > $out"; };
  bumped = mk "bumped" { };
}
`, coordtest.MkLet(s))})
	c.Trigger(busyJS, false)
	second := coordtest.Evaluated(t, c, busyJS, first)
	c.Trigger(idleJS, false)
	coordtest.Evaluated(t, c, idleJS, 0)
	if code := c.Do("POST", fmt.Sprintf("/api/v1/builds/%d/bump", coordtest.BuildsOf(t, c, second)["bumped"].ID), c.Admin, nil, nil); code != 200 {
		t.Fatalf("bump: %d", code)
	}
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "one-slot", MaxJobs: 1, StepSlots: 1})
	coordtest.Eventually(t, 120*time.Second, "every step is built", func() bool {
		var n int
		_ = c.DB.Pool().QueryRow(ctx, `SELECT count(*) FROM steps WHERE status IN ('queued', 'running')`).Scan(&n)
		return n == 0
	})
	rows, err := c.DB.Pool().Query(ctx, `SELECT drv_path FROM steps WHERE started_at IS NOT NULL AND drv_path NOT LIKE '%-history-%' ORDER BY started_at`)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for rows.Next() {
		var p string
		_ = rows.Scan(&p)
		name := strings.TrimPrefix(p, "/nix/store/")[33:]
		order = append(order, name[:strings.Index(name, "-"+s)])
	}
	rows.Close()
	want := []string{"bumped", "share", "prio", "cp-base", "old"}
	if len(order) != 7 || strings.Join(order[:5], " ") != strings.Join(want, " ") {
		t.Errorf("start order %v, want %v then new and cp-top", order, want)
	}
}

// TestOneAtATime_NextEvaluationWaitsForTheBuilds: a one_at_a_time jobset evaluates a
// new commit only once the previous evaluation's builds have finished.
func TestOneAtATime_NextEvaluationWaitsForTheBuilds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := coordtest.Start(t, coordtest.Options{})
	record := filepath.Join(sharedDir(t), "built")
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": slowJobset(t, 1, 3, record)})
	_, js := c.Project("demo", repo.Dir, map[string]any{"state": "one_at_a_time"})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "builder"})
	c.Trigger(js, false)
	first := coordtest.Evaluated(t, c, js, 0)
	id := coordtest.BuildsOf(t, c, first)["j0"].ID
	coordtest.WaitBuild(t, c, id, 60*time.Second, "running", func(b coordtest.Build) bool { return b.Status == "running" })
	second := repo.Commit(map[string]string{"release.nix": slowJobset(t, 1, 0, record)})
	c.Trigger(js, false)
	evaluationOf := func() int {
		var n int
		_ = c.DB.Pool().QueryRow(ctx, `SELECT count(*) FROM evaluations WHERE jobset_id = $1 AND commit = $2`, js, second).Scan(&n)
		return n
	}
	// While the build runs, the trigger waits: no evaluation of the new commit.
	for coordtest.GetBuild(t, c, id).Status == "running" {
		if evaluationOf() != 0 {
			t.Fatal("a one_at_a_time jobset evaluated a new commit while the previous evaluation's build ran")
		}
		time.Sleep(100 * time.Millisecond) // sampling the state while the build runs; bounded by the build's 3 s
	}
	if b := coordtest.GetBuild(t, c, id); b.Status != "succeeded" {
		t.Fatalf("first build: %s", b.Status)
	}
	coordtest.Eventually(t, 60*time.Second, "the new commit is evaluated once the build finished", func() bool { return evaluationOf() == 1 })
}
