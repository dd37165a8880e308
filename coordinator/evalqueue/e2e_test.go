package evalqueue_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	agentcli "github.com/fc-ci/fc/agent/cli"
	agentconfig "github.com/fc-ci/fc/agent/config"
	"github.com/fc-ci/fc/agent/daemon"
	"github.com/fc-ci/fc/agent/session"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/protocol"
)

// releaseNix is a legacy jobset with every case the evaluation issue names.
func releaseNix(s string, slow bool) string {
	slowAttr := ""
	if slow {
		slowAttr = `slow = builtins.seq (builtins.foldl' builtins.add 0 (builtins.genList (x: x) 4000000)) (mk "slow" {});`
	}
	return fmt.Sprintf(`let
  mk = name: attrs: derivation ({ name = "${name}-%[1]s"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo ${name} > $out" ]; } // attrs);
  base = mk "base" { };
  left = mk "left" { args = [ "-c" "echo ${base} > $out" ]; };
  right = mk "right" { args = [ "-c" "echo ${base} > $out" ]; };
in {
  success = mk "success" { };
  failure = mk "failure" { args = [ "-c" "exit 1" ]; };
  chain = mk "chain" { args = [ "-c" "echo ${left} > $out" ]; };
  diamond = {
    recurseForDerivations = true;
    inherit base left right;
    top = mk "top" { args = [ "-c" "echo ${left} ${right} > $out" ]; };
  };
  multi = mk "multi" { outputs = [ "out" "dev" ]; args = [ "-c" "echo > $out; echo > $dev" ]; };
  other-system = mk "other" { system = "aarch64-linux"; };
  needs-kvm = mk "kvm" { requiredSystemFeatures = [ "kvm" ]; };
  all = mk "all" { _hydraAggregate = true; constituents = [ (mk "success" { }) "chain" ]; };
  broken-throw = throw "deliberately broken";
  broken-abort = abort "aborted on purpose";
  broken-missing = { }.nope;
  broken-type = 1 + "a";
  %[2]s
}
`, s, slowAttr)
}

type evalAgent struct {
	cancel context.CancelFunc
	done   chan error
	dir    string
}

func startEvalAgent(t *testing.T, c *coordtest.Coordinator, name, stateDir string, tweak ...func(*agentconfig.Config)) *evalAgent {
	t.Helper()
	cfg := agentconfig.Defaults()
	cfg.Coordinator.URL = c.URL
	cfg.Coordinator.EnrollmentToken = c.Token(1, time.Hour)
	cfg.Agent.Name = name
	cfg.Agent.StateDir = stateDir
	cfg.Agent.Roles = []string{"eval"} // these tests look at evaluations; nothing gets built
	for _, f := range tweak {
		f(&cfg)
	}
	d, err := agentcli.NewDaemon(cfg, slog.New(slog.NewTextHandler(c.Log, nil)).With("side", "agent-"+name), 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &evalAgent{cancel: cancel, done: make(chan error, 1), dir: stateDir}
	go func() { a.done <- d.Run(ctx) }()
	t.Cleanup(func() { a.stop() })
	return a
}

func (a *evalAgent) stop() {
	a.cancel()
	select {
	case <-a.done:
		a.done <- nil
	case <-time.After(30 * time.Second):
	}
}

type evalDetail struct {
	ID      int64  `json:"id"`
	Status  string `json:"status"`
	Error   string `json:"error"`
	AgentID *int64 `json:"agent_id"`
	NrJobs  int    `json:"nr_jobs"`
	Errors  []struct {
		Attr    string `json:"attr"`
		Message string `json:"message"`
	} `json:"errors"`
}

func waitEvaluation(t *testing.T, c *coordtest.Coordinator, jobsetID int64, status string) evalDetail {
	t.Helper()
	var got evalDetail
	coordtest.Eventually(t, 120*time.Second, "evaluation "+status, func() bool {
		evs := coordtest.Evaluations(t, c, jobsetID)
		if len(evs) == 0 {
			return false
		}
		c.Do("GET", fmt.Sprintf("/api/v1/evaluations/%d", evs[0].ID), "", nil, &got)
		if got.Status == "failed" && status != "failed" {
			t.Fatalf("evaluation failed: %s\n%s", got.Error, c.Log)
		}
		return got.Status == status
	})
	return got
}

func instantiate(t *testing.T, dir, attr string) string {
	t.Helper()
	out, err := exec.Command("nix-instantiate", dir+"/release.nix", "-A", attr, "--option", "substituters", "").Output()
	if err != nil {
		t.Fatalf("nix-instantiate -A %s: %v", attr, err)
	}
	return strings.TrimSpace(string(out))
}

func TestEvaluation_LegacyJobsetOnAnAgent(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": releaseNix(coordtest.Salt(t), false)})
	_, js := c.Project("demo", repo.Dir, nil)
	startEvalAgent(t, c, "evaluator", t.TempDir())
	c.Trigger(js, false)
	ev := waitEvaluation(t, c, js, "succeeded")

	var errs []string
	for _, e := range ev.Errors {
		errs = append(errs, e.Attr)
		if e.Message == "" {
			t.Errorf("%s recorded without a message", e.Attr)
		}
	}
	sort.Strings(errs)
	if strings.Join(errs, ",") != "broken-abort,broken-missing,broken-throw,broken-type" {
		t.Errorf("per-attribute errors %v, want the four broken attributes", errs)
	}
	got := coordtest.BuildsOf(t, c, ev.ID)
	for _, job := range []string{"success", "failure", "chain", "diamond.base", "diamond.left", "diamond.right", "diamond.top",
		"multi", "other-system", "needs-kvm"} {
		b, ok := got[job]
		if !ok {
			t.Errorf("job %s missing; have %v", job, keys(got))
			continue
		}
		if want := instantiate(t, repo.Dir, job); b.DrvPath != want {
			t.Errorf("%s: drv %s, nix-instantiate says %s", job, b.DrvPath, want)
		}
		if b.Status != "queued" {
			t.Errorf("%s: status %s, want queued (nothing built yet)", job, b.Status)
		}
	}
	var constituents []string
	rows, err := c.DB.Pool().Query(context.Background(), `SELECT c.job FROM aggregate_constituents ac
		JOIN builds a ON a.id = ac.aggregate_id JOIN builds c ON c.id = ac.constituent_id WHERE a.id = $1 ORDER BY c.job`, got["all"].ID)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var j string
		_ = rows.Scan(&j)
		constituents = append(constituents, j)
	}
	rows.Close()
	if strings.Join(constituents, ",") != "chain,success" {
		t.Errorf("aggregate constituents %v, want chain and success", constituents)
	}
	if got["other-system"].System != "aarch64-linux" {
		t.Errorf("other-system: %+v", got["other-system"])
	}
	// Edges match the derivations' inputs: top <- left, right <- base.
	var edges int
	if err := c.DB.Pool().QueryRow(context.Background(), `SELECT count(*) FROM step_edges e JOIN steps a ON a.id = e.step_id
		JOIN steps b ON b.id = e.depends_on WHERE a.drv_path = $1 AND b.drv_path IN ($2, $3)`,
		got["diamond.top"].DrvPath, got["diamond.left"].DrvPath, got["diamond.right"].DrvPath).Scan(&edges); err != nil || edges != 2 {
		t.Errorf("diamond top has %d input edges (err %v), want 2", edges, err)
	}
	// Every drv to build reached the cache: an empty store could realise it.
	for _, job := range []string{"diamond.top", "needs-kvm"} {
		hash := strings.TrimPrefix(got[job].DrvPath, "/nix/store/")[:32]
		var n int
		if err := c.DB.Pool().QueryRow(context.Background(), `SELECT count(*) FROM narinfos WHERE hash_part = $1`, hash).Scan(&n); err != nil || n != 1 {
			t.Errorf("%s's .drv is not in the cache", job)
		}
	}
}

func keys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestEvaluation_SameDerivationInTwoJobsetsIsOneStep(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": releaseNix(coordtest.Salt(t), false)})
	pid, js1 := c.Project("demo", repo.Dir, nil)
	var j2 struct{ ID int64 }
	if code := c.Do("POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", pid), c.Admin, map[string]any{"name": "second",
		"branch": "main", "flake_mode": false, "nix_expression": "release.nix", "check_interval": 0}, &j2); code != 201 {
		t.Fatal(code)
	}
	startEvalAgent(t, c, "evaluator", t.TempDir())
	c.Trigger(js1, false)
	e1 := waitEvaluation(t, c, js1, "succeeded")
	c.Trigger(j2.ID, false)
	e2 := waitEvaluation(t, c, j2.ID, "succeeded")
	drv := coordtest.BuildsOf(t, c, e1.ID)["success"].DrvPath
	if drv == "" || coordtest.BuildsOf(t, c, e2.ID)["success"].DrvPath != drv {
		t.Fatalf("the two evaluations disagree on success's drv")
	}
	var steps, nbuilds int
	_ = c.DB.Pool().QueryRow(context.Background(), `SELECT count(*) FROM steps WHERE drv_path = $1`, drv).Scan(&steps)
	_ = c.DB.Pool().QueryRow(context.Background(), `SELECT count(*) FROM builds WHERE drv_path = $1`, drv).Scan(&nbuilds)
	if steps != 1 || nbuilds != 2 {
		t.Errorf("%d steps and %d builds for one derivation in two jobsets, want 1 and 2", steps, nbuilds)
	}
}

func TestEvaluation_KilledAgentIsRescuedAndAStaleReportRefused(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) {
		cfg.Queue.LeaseTTL, cfg.Queue.LeaseGrace = 3, 1
	}})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": releaseNix(coordtest.Salt(t), true)})
	_, js := c.Project("demo", repo.Dir, nil)
	dirA := t.TempDir()
	a := startEvalAgent(t, c, "doomed", dirA)
	c.Trigger(js, false)
	ev := waitEvaluation(t, c, js, "running")
	// "running" is set by the claim, before the agent accepts: wait until it has.
	coordtest.Eventually(t, 60*time.Second, "the doomed agent accepted the evaluation", func() bool {
		return c.Log.Contains("evaluation assigned", fmt.Sprintf("eval=%d", ev.ID))
	})
	var epoch int64
	if err := c.DB.Pool().QueryRow(context.Background(), `SELECT lease_epoch FROM evaluations WHERE id = $1`, ev.ID).Scan(&epoch); err != nil {
		t.Fatal(err)
	}
	a.stop() // killed mid-evaluation: its nix process dies with it, nothing is reported

	startEvalAgent(t, c, "rescuer", t.TempDir())
	done := waitEvaluation(t, c, js, "succeeded")
	var attempts int
	var newEpoch int64
	_ = c.DB.Pool().QueryRow(context.Background(), `SELECT attempts, lease_epoch FROM evaluations WHERE id = $1`, ev.ID).Scan(&attempts, &newEpoch)
	if done.ID != ev.ID || attempts != 2 || newEpoch <= epoch {
		t.Fatalf("rescue: eval %d (want %d), attempts %d, epoch %d after %d", done.ID, ev.ID, attempts, newEpoch, epoch)
	}
	if coordtest.BuildsOf(t, c, ev.ID)["slow"].DrvPath == "" {
		t.Fatal("the rescued evaluation lacks its jobs")
	}

	// The dead agent's report, quoting its old epoch, is refused and changes nothing.
	cfg := agentconfig.Defaults()
	cfg.Coordinator.URL, cfg.Agent.StateDir, cfg.Agent.Name = c.URL, dirA, "doomed"
	sc, err := agentcli.SessionConfig(cfg, slog.New(slog.DiscardHandler), 0)
	if err != nil {
		t.Fatal(err)
	}
	sc.Purpose = protocol.PurposePush
	conn, err := session.Dial(context.Background(), sc, session.State{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := conn.OpenStream(protocol.StreamEvalReport)
	if err != nil {
		t.Fatal(err)
	}
	_ = protocol.WriteFrame(st, protocol.EvalReport{Work: protocol.WorkRef{Kind: protocol.WorkEval, ID: ev.ID, Epoch: epoch}, Failed: true, Error: "late"})
	var v protocol.EvalVerdict
	if err := protocol.ReadFrame(st, &v); err != nil || v.Accepted || !strings.Contains(v.Error, "stale lease") {
		t.Fatalf("stale report: %+v %v", v, err)
	}
	var after evalDetail
	c.Do("GET", fmt.Sprintf("/api/v1/evaluations/%d", ev.ID), "", nil, &after)
	if after.Status != "succeeded" {
		t.Fatalf("a stale report changed the evaluation to %s", after.Status)
	}
}

func TestEvaluation_FlakeHydraJobsOnAnAgent(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	s := coordtest.Salt(t)
	repo.Commit(map[string]string{"flake.nix": fmt.Sprintf(`{
  outputs = { self }: let
    mk = name: attrs: derivation ({ name = "${name}-%s"; system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "echo ${name} > $out" ]; } // attrs);
    base = mk "base" { };
  in {
    hydraJobs = {
      success = mk "success" { };
      chain = mk "chain" { args = [ "-c" "echo ${base} > $out" ]; };
      nested = { inherit base; top = mk "top" { args = [ "-c" "echo ${base} > $out" ]; }; };
      broken = throw "not today";
    };
  };
}`, s)})
	_, js := c.Project("demo", repo.Dir, map[string]any{"flake_mode": true, "nix_expression": "hydraJobs"})
	startEvalAgent(t, c, "evaluator", t.TempDir())
	c.Trigger(js, false)
	ev := waitEvaluation(t, c, js, "succeeded")
	got := coordtest.BuildsOf(t, c, ev.ID)
	for _, job := range []string{"success", "chain", "nested.base", "nested.top"} {
		if got[job].DrvPath == "" {
			t.Errorf("flake job %s missing; have %v", job, keys(got))
		}
	}
	if len(ev.Errors) != 1 || ev.Errors[0].Attr != "broken" || !strings.Contains(ev.Errors[0].Message, "not today") {
		t.Errorf("errors %+v", ev.Errors)
	}
	if got["nested.base"].DrvPath != "" && got["chain"].DrvPath == got["nested.base"].DrvPath {
		t.Error("distinct jobs share a drv")
	}
}

func TestCompare_EveryCategoryWithBuildIDsStatusesAndErrors(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	s := coordtest.Salt(t)
	file := func(changed, extra string) string {
		return fmt.Sprintf(`let mk = name: script: derivation { name = "${name}-%[1]s"; system = builtins.currentSystem;
  builder = "/bin/sh"; args = [ "-c" script ]; };
in { a = mk "a" "echo a %[2]s > $out"; b = mk "b" "echo b %[2]s > $out"; e = mk "e" "exit 1"; %[3]s }`, s, changed, extra)
	}
	repo.Commit(map[string]string{"release.nix": file("", `c = mk "c" "echo c > $out"; fixed = throw "was broken";`)})
	_, js := c.Project("demo", repo.Dir, nil)
	startEvalAgent(t, c, "evaluator", t.TempDir())
	c.Trigger(js, false)
	first := waitEvaluation(t, c, js, "succeeded")
	repo.Commit(map[string]string{"release.nix": file("changed", `d = mk "d" "echo d > $out"; broke = throw "now broken";`)})
	c.Trigger(js, false)
	second := coordtest.Evaluated(t, c, js, first.ID)
	// Everything succeeded but e (one build reused by both: still failing) and a,
	// which changed and failed in the second.
	if _, err := c.DB.Pool().Exec(context.Background(), `UPDATE builds SET status = CASE WHEN job = 'e' OR (job = 'a' AND evaluation_id = $1)
		THEN 'failed' ELSE 'succeeded' END, finished_at = now() WHERE jobset_id = $2`, second, js); err != nil {
		t.Fatal(err)
	}
	type build struct {
		Job            string `json:"job"`
		ID             *int64 `json:"id"`
		Status         string `json:"status"`
		PreviousID     *int64 `json:"previous_id"`
		PreviousStatus string `json:"previous_status"`
	}
	var cmp struct {
		Counts map[string]int64   `json:"counts"`
		Builds map[string][]build `json:"builds"`
		Errors map[string][]struct {
			Attr string `json:"attr"`
		} `json:"errors"`
	}
	if code := c.Do("GET", fmt.Sprintf("/api/v1/evaluations/%d/compare?with=%d", second, first.ID), "", nil, &cmp); code != 200 {
		t.Fatalf("compare: %d", code)
	}
	cur, prev := coordtest.BuildsOf(t, c, second), coordtest.BuildsOf(t, c, first.ID)
	id := func(b coordtest.Build) *int64 {
		if b.ID == 0 {
			return nil
		}
		return &b.ID
	}
	show := func(b build) string {
		v := func(p *int64) string {
			if p == nil {
				return "-"
			}
			return fmt.Sprint(*p)
		}
		return fmt.Sprintf("%s %s %s %s %s", b.Job, v(b.ID), b.Status, v(b.PreviousID), b.PreviousStatus)
	}
	want := map[string]build{
		"new":              {Job: "d", ID: id(cur["d"]), Status: "succeeded"},
		"removed":          {Job: "c", PreviousID: id(prev["c"]), PreviousStatus: "succeeded"},
		"newly_failing":    {Job: "a", ID: id(cur["a"]), Status: "failed", PreviousID: id(prev["a"]), PreviousStatus: "succeeded"},
		"still_failing":    {Job: "e", ID: id(prev["e"]), Status: "failed", PreviousID: id(prev["e"]), PreviousStatus: "failed"},
		"unchanged":        {Job: "b", ID: id(cur["b"]), Status: "succeeded", PreviousID: id(prev["b"]), PreviousStatus: "succeeded"},
		"newly_succeeding": {},
		"queued":           {},
	}
	for cat, w := range want {
		got := cmp.Builds[cat]
		if w.Job == "" {
			if len(got) != 0 || cmp.Counts[cat] != 0 {
				t.Errorf("%s: %+v, want none", cat, got)
			}
			continue
		}
		if len(got) != 1 || cmp.Counts[cat] != 1 || show(got[0]) != show(w) {
			t.Errorf("%s: %v (count %d), want %s", cat, got, cmp.Counts[cat], show(w))
		}
	}
	if e := cmp.Errors["new"]; len(e) != 1 || e[0].Attr != "broke" {
		t.Errorf("new evaluation errors: %+v, want broke", e)
	}
	if e := cmp.Errors["fixed"]; len(e) != 1 || e[0].Attr != "fixed" {
		t.Errorf("fixed evaluation errors: %+v, want fixed", e)
	}
	var ev struct {
		NrBuilds       int64            `json:"nr_builds"`
		BuildsByStatus map[string]int64 `json:"builds_by_status"`
	}
	if c.Do("GET", fmt.Sprintf("/api/v1/evaluations/%d", second), "", nil, &ev); ev.NrBuilds != 4 ||
		ev.BuildsByStatus["failed"] != 2 || ev.BuildsByStatus["succeeded"] != 2 {
		t.Errorf("evaluation's counts: %+v, want 2 failed and 2 succeeded", ev)
	}
	var list struct {
		Items []struct {
			ID             int64            `json:"id"`
			BuildsByStatus map[string]int64 `json:"builds_by_status"`
		} `json:"items"`
	}
	if c.Do("GET", fmt.Sprintf("/api/v1/evaluations?jobset_id=%d", js), "", nil, &list); len(list.Items) != 2 ||
		list.Items[1].BuildsByStatus["succeeded"] != 3 || list.Items[1].BuildsByStatus["failed"] != 1 {
		t.Errorf("evaluations list's counts: %+v, want the first with 3 succeeded and 1 failed", list.Items)
	}
	if code := c.Do("GET", fmt.Sprintf("/api/v1/evaluations/%d/compare", second), "", nil, nil); code != 422 {
		t.Errorf("compare without ?with=: %d, want 422", code)
	}
}

// The evaluating agent writes the derivations to its own eval store, not Nix's, and
// they reach the cache; a jobset that allows import-from-derivation evaluates in
// Nix's own store (where the imports are built).
func TestEvaluation_DerivationsGoToTheAgentsEvalStoreAndTheCache(t *testing.T) {
	t.Parallel()
	for _, ifd := range []bool{false, true} {
		t.Run(fmt.Sprintf("allow_ifd=%v", ifd), func(t *testing.T) {
			c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) { cfg.Eval.AllowIFD = ifd }})
			repo := coordtest.NewRepo(t)
			repo.Commit(map[string]string{"release.nix": releaseNix(coordtest.Salt(t), false)})
			_, js := c.Project("demo", repo.Dir, nil)
			parent := t.TempDir()
			t.Cleanup(func() { _ = exec.Command("chmod", "-R", "u+w", parent).Run() })
			var cfg agentconfig.Config
			startEvalAgent(t, c, "evaluator", t.TempDir(), func(c *agentconfig.Config) {
				c.Agent.EvalStore = parent
				cfg = *c
			})
			c.Trigger(js, false)
			ev := waitEvaluation(t, c, js, "succeeded")
			drv := coordtest.BuildsOf(t, c, ev.ID)["success"].DrvPath
			if drv == "" {
				t.Fatal("no drv for success")
			}
			_, statErr := os.Stat(filepath.Join(parent, cfg.EvalStoreName()) + drv)
			inNixStore := exec.Command("nix-store", "--check-validity", drv).Run() == nil
			if ifd && (statErr == nil || !inNixStore) {
				t.Errorf("with IFD allowed, %s should be in Nix's store only (eval store: %v, Nix's store: %v)", drv, statErr, inNixStore)
			}
			if !ifd && (statErr != nil || inNixStore) {
				t.Errorf("%s should be in the eval store only (eval store: %v, Nix's store: %v)", drv, statErr, inNixStore)
			}
			var cached int
			if err := c.DB.Pool().QueryRow(context.Background(), `SELECT count(*) FROM narinfos WHERE store_path = $1`, drv).Scan(&cached); err != nil || cached != 1 {
				t.Errorf("%s in the cache: %d (%v)", drv, cached, err)
			}
		})
	}
}

type executorFunc func(ctx context.Context, a protocol.Assign, link daemon.Link) error

func (f executorFunc) Run(ctx context.Context, a protocol.Assign, link daemon.Link) error {
	return f(ctx, a, link)
}

// An agent stopped by force hands its work back at once, so the coordinator requeues
// it now rather than when the lease's grace ends; also the work that ended (cancelled,
// unreported) before the agent looked at what was running.
func TestEvaluation_ForcedStopHandsBackWorkThatEndedFirst(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{}) // lease_grace 120 s
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": releaseNix(coordtest.Salt(t), false)})
	_, js := c.Project("demo", repo.Dir, nil)
	cfg := agentconfig.Defaults()
	cfg.Coordinator.URL = c.URL
	cfg.Coordinator.EnrollmentToken = c.Token(1, time.Hour)
	cfg.Agent.Name, cfg.Agent.StateDir, cfg.Agent.Roles = "quitter", t.TempDir(), []string{"eval"}
	log := slog.New(slog.NewTextHandler(c.Log, nil)).With("side", "agent-quitter")
	sc, err := agentcli.SessionConfig(cfg, log, 0)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	quit := executorFunc(func(ctx context.Context, _ protocol.Assign, _ daemon.Link) error {
		close(started)
		<-ctx.Done()
		return ctx.Err() // at once: as an evaluation whose nix process is killed
	})
	d := daemon.New(daemon.Config{Session: sc, Capabilities: agentcli.Capabilities(cfg), Logger: log,
		Executors: map[string]daemon.Executor{protocol.WorkEval: quit}, Capacity: map[string]int{protocol.WorkEval: 1}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	c.Trigger(js, false)
	select {
	case <-started:
	case <-time.After(60 * time.Second):
		t.Fatal("the evaluation never reached the agent")
	}
	cancel()
	if err := <-done; !errors.Is(err, daemon.ErrForced) {
		t.Errorf("forced stop: %v, want ErrForced", err)
	}
	coordtest.Eventually(t, 30*time.Second, "the evaluation requeued", func() bool {
		evs := coordtest.Evaluations(t, c, js)
		return len(evs) == 1 && evs[0].Status == "queued"
	})
	if !c.Log.Contains("handed back unfinished work") {
		t.Error("the agent did not say it handed the work back")
	}
}
