package evalqueue_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	agentcli "github.com/fc-ci/fc/agent/cli"
	agentconfig "github.com/fc-ci/fc/agent/config"
	"github.com/fc-ci/fc/agent/evaluator"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/protocol"
)

// benchRuns alternates, across the runs of one test binary (-count), whether FC or
// the baseline goes first, so neither always meets a warmer page cache or store.
var benchRuns atomic.Int64

// BenchmarkTriggerToGraph10k measures, per iteration, the wall time from
// POST /api/v1/evaluations/trigger to the evaluation being succeeded (builds, steps
// and edges stored, every .drv in the coordinator's cache) for a legacy jobset of
// 10,000 trivial derivations, evaluated by one in-process agent with the eval role;
// and, in the same run, nix-instantiate of the same kind of expression. Both sides
// use fresh salts every iteration, so both write 10,000 new .drv files. Run with
// -benchtime 1x.
//
// The agent writes the .drv files to its eval store ([agent] eval_store, "auto": a
// store of its own on tmpfs); FC_BENCH_EVAL_STORE=system makes it use Nix's own store
// like the baseline. A second baseline, nix-instantiate --store <a store on tmpfs>,
// is what Nix itself does given the same kind of store.
func BenchmarkTriggerToGraph10k(b *testing.B) {
	benchmarkTriggerToGraph(b, 10000)
}

// triggerRun is one iteration's figures.
type triggerRun struct {
	total, inst         time.Duration
	instTmpfs           time.Duration // nix-instantiate into a store on tmpfs
	checkout, evalSecs  float64       // measured by the agent
	schedule, dispatch  time.Duration
	reportAndStore      time.Duration
	jobs, builds, steps int
	newBuilds, edges    int
	drvsCached          int
	attempts            int
	agentSplit          string
	coordSplit          string
	cpu                 cpuSplit   // FC's part: from trigger to graph stored
	instCPU, tmpfsCPU   [2]float64 // the baselines' user and sys seconds
	storeSeen           int        // entries in /nix/store when nix-instantiate ran
	tmpfsSeen           int        // entries in the tmpfs store's nix/store then (a fresh one)
}

func benchmarkTriggerToGraph(b *testing.B, n int) {
	for _, bin := range []string{"nix", "nix-instantiate", "nix-store", "git"} {
		if _, err := exec.LookPath(bin); err != nil {
			b.Skipf("%s not on PATH", bin)
		}
	}
	ctx := context.Background()
	// Defaults: the trigger wakes the scheduler, which creates the evaluation and
	// dispatches it to the idle eval agent in the same pass.
	// FC_BENCH_EVAL_WORKERS sets [evaluator] workers (default 2).
	var opts coordtest.Options
	if v := os.Getenv("FC_BENCH_EVAL_WORKERS"); v != "" {
		w, err := strconv.Atoi(v)
		if err != nil || w < 1 {
			b.Fatalf("FC_BENCH_EVAL_WORKERS=%q", v)
		}
		opts.Config = func(cfg *config.Config) { cfg.Eval.Workers = w }
	}
	c := coordtest.Start(b, opts)
	repoDir := b.TempDir()
	benchGit(b, repoDir, "init", "-q", "-b", "main")
	commitFile(b, repoDir, "release.nix", evaluator.TrivialJobset(1, "setup-"+coordtest.Salt(b)))
	js := benchSetup(b, c, repoDir)

	cfg := agentconfig.Defaults()
	cfg.Coordinator.URL = c.URL
	cfg.Coordinator.EnrollmentToken = c.Token(1, time.Hour)
	cfg.Agent.Name = "evaluator"
	cfg.Agent.StateDir = b.TempDir()
	cfg.Agent.Roles = []string{protocol.RoleEval}
	if v := os.Getenv("FC_BENCH_EVAL_STORE"); v != "" {
		cfg.Agent.EvalStore = v
	}
	if err := cfg.Validate(); err != nil {
		b.Fatal(err)
	}
	d, err := agentcli.NewDaemon(cfg, slog.New(slog.NewTextHandler(c.Log, nil)).With("side", "agent"), 0)
	if err != nil {
		b.Fatal(err)
	}
	actx, cancel := context.WithCancel(context.Background())
	agent := &evalAgent{cancel: cancel, done: make(chan error, 1), dir: cfg.Agent.StateDir}
	go func() { agent.done <- d.Run(actx) }()
	b.Cleanup(agent.stop)
	coordtest.Eventually(b, 60*time.Second, "the eval agent is connected", func() bool {
		return len(c.CurrentFleet().AgentIDs()) == 1
	})

	instDir := b.TempDir()
	var runs []triggerRun
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s := coordtest.Salt(b)
		commit := commitFile(b, repoDir, "release.nix", evaluator.TrivialJobset(n, "fc-"+s))
		instFile := filepath.Join(instDir, fmt.Sprintf("inst-%d.nix", i))
		if err := os.WriteFile(instFile, []byte(evaluator.TrivialJobset(n, "inst-"+s)), 0o644); err != nil {
			b.Fatal(err)
		}
		var r triggerRun
		var inst time.Duration
		fc := func() {
			before := cpuNow()
			b.StartTimer()
			r = triggerToGraph(b, c, js, commit)
			b.StopTimer()
			r.cpu = cpuNow().sub(before)
		}
		tmpfsFile := filepath.Join(instDir, fmt.Sprintf("inst-tmpfs-%d.nix", i))
		if err := os.WriteFile(tmpfsFile, []byte(evaluator.TrivialJobset(n, "inst-tmpfs-"+s)), 0o644); err != nil {
			b.Fatal(err)
		}
		var instTmpfs time.Duration
		var instCPU, tmpfsCPU [2]float64
		var storeSeen, tmpfsSeen int
		baseline := func() {
			storeSeen = storeEntries("/nix/store")
			inst, instCPU = instantiateAll(b, instFile)
			store := tmpfsStore(b)
			tmpfsSeen = max(storeEntries(filepath.Join(store, "nix", "store")), 0)
			instTmpfs, tmpfsCPU = instantiateAll(b, tmpfsFile, "--store", store)
		}
		order := "FC first"
		if benchRuns.Add(1)%2 == 1 {
			fc()
			baseline()
		} else {
			order = "nix-instantiate first"
			baseline()
			fc()
		}
		r.inst, r.instTmpfs = inst, instTmpfs
		r.instCPU, r.tmpfsCPU, r.storeSeen, r.tmpfsSeen = instCPU, tmpfsCPU, storeSeen, tmpfsSeen
		checkRun(ctx, b, c, repoDir, r, n)
		runs = append(runs, r)
		// The agent's own split of its part (evaluate, graph, .drv closure, upload).
		for _, line := range strings.Split(c.Log.String(), "\n") {
			if strings.Contains(line, "msg=evaluated") && strings.Contains(line, fmt.Sprintf("jobs=%d", n)) {
				r.agentSplit = line[strings.Index(line, "msg=evaluated"):]
			}
			if strings.Contains(line, `msg="evaluation finished"`) && strings.Contains(line, fmt.Sprintf("jobs=%d", n)) {
				r.coordSplit = line[strings.Index(line, `msg="evaluation finished"`):]
			}
		}
		b.Logf("run %d, the agent's split: %s; the coordinator's: %s", i+1, r.agentSplit, r.coordSplit)
		b.Logf("run %d, CPU: FC %s; nix-instantiate %.2f user + %.2f sys (/nix/store had %d entries); into tmpfs %.2f user + %.2f sys "+
			"(its store had %d); load average %s", i+1, r.cpu, r.instCPU[0], r.instCPU[1], r.storeSeen, r.tmpfsCPU[0], r.tmpfsCPU[1],
			r.tmpfsSeen, loadAverage())
		agentPart := time.Duration((r.checkout + r.evalSecs) * float64(time.Second))
		b.Logf("run %d: trigger→graph stored %.2fs, nix-instantiate %.2fs, ratio %.2f (goal ≤ 1.3); nix-instantiate into a store on "+
			"tmpfs %.2fs, ratio %.2f; agent: checkout %.2fs + eval %.2fs "+
			"(evaluate + graph + .drv upload); coordinator side (total − agent) %.2fs = trigger→queued %.2fs + queued→claimed %.2fs "+
			"+ report and store %.2fs; %d jobs, %d builds (%d new), %d steps, %d edges, %d .drv files in the cache; %d attempt(s) (%s)",
			i+1, r.total.Seconds(), r.inst.Seconds(), r.total.Seconds()/r.inst.Seconds(), r.instTmpfs.Seconds(),
			r.total.Seconds()/r.instTmpfs.Seconds(), r.checkout, r.evalSecs,
			(r.total - agentPart).Seconds(), r.schedule.Seconds(), r.dispatch.Seconds(), r.reportAndStore.Seconds(),
			r.jobs, r.builds, r.newBuilds, r.steps, r.edges, r.drvsCached, r.attempts, order)
	}
	b.StopTimer()
	var total, inst, instTmpfs, checkout, evalSecs time.Duration
	for _, r := range runs {
		total += r.total
		inst += r.inst
		instTmpfs += r.instTmpfs
		checkout += time.Duration(r.checkout * float64(time.Second))
		evalSecs += time.Duration(r.evalSecs * float64(time.Second))
	}
	per := func(d time.Duration) float64 { return d.Seconds() / float64(len(runs)) }
	b.ReportMetric(per(total), "fc-s/op")
	b.ReportMetric(per(inst), "nix-instantiate-s/op")
	b.ReportMetric(total.Seconds()/inst.Seconds(), "ratio")
	b.ReportMetric(per(instTmpfs), "nix-instantiate-tmpfs-s/op")
	b.ReportMetric(total.Seconds()/instTmpfs.Seconds(), "ratio-tmpfs")
	b.ReportMetric(per(checkout), "checkout-s/op")
	b.ReportMetric(per(evalSecs), "eval-s/op")
	b.ReportMetric(per(total-checkout-evalSecs), "ingest-s/op")
	b.ReportMetric(float64(runs[len(runs)-1].steps), "steps")
	b.ReportMetric(float64(runs[len(runs)-1].builds), "builds")
}

// triggerToGraph triggers the jobset and waits until the evaluation of commit has
// succeeded, returning the wall time and the evaluation row's figures.
func triggerToGraph(b *testing.B, c *coordtest.Coordinator, jobsetID int64, commit string) triggerRun {
	b.Helper()
	ctx := context.Background()
	start := time.Now()
	if code := c.Do("POST", "/api/v1/evaluations/trigger", c.Admin, map[string]any{"jobset_id": jobsetID, "force": false}, nil); code != 202 {
		b.Fatalf("trigger: %d", code)
	}
	var id int64
	var status, msg string
	deadline := start.Add(20 * time.Minute)
	for {
		// Straight from the database, so polling costs the coordinator nothing.
		err := c.DB.Pool().QueryRow(ctx, `SELECT id, status, coalesce(error, '') FROM evaluations
			WHERE jobset_id = $1 AND commit = $2 ORDER BY id DESC LIMIT 1`, jobsetID, commit).Scan(&id, &status, &msg)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			b.Fatal(err)
		}
		if status == "succeeded" {
			break
		}
		if status == "failed" {
			b.Fatalf("evaluation %d failed: %s\n%s", id, msg, coordtest.Tail(c.Log.String(), 4000))
		}
		if time.Now().After(deadline) {
			b.Fatalf("evaluation of %s not succeeded after %v (status %q)\n%s", commit, time.Since(start), status, coordtest.Tail(c.Log.String(), 4000))
		}
		time.Sleep(10 * time.Millisecond)
	}
	r := triggerRun{total: time.Since(start)}
	var ev struct {
		NrJobs          int        `json:"nr_jobs"`
		NrNewBuilds     int        `json:"nr_new_builds"`
		Attempts        int        `json:"attempts"`
		CheckoutSeconds *float64   `json:"checkout_seconds"`
		EvalSeconds     *float64   `json:"eval_seconds"`
		CreatedAt       time.Time  `json:"created_at"`
		StartedAt       *time.Time `json:"started_at"`
	}
	if code := c.Do("GET", fmt.Sprintf("/api/v1/evaluations/%d", id), "", nil, &ev); code != 200 || ev.CheckoutSeconds == nil ||
		ev.EvalSeconds == nil || ev.StartedAt == nil {
		b.Fatalf("evaluation %d: %d %+v", id, code, ev)
	}
	r.checkout, r.evalSecs, r.jobs, r.newBuilds, r.attempts = *ev.CheckoutSeconds, *ev.EvalSeconds, ev.NrJobs, ev.NrNewBuilds, ev.Attempts
	if r.attempts != 1 {
		// The row's checkout and eval seconds are the last attempt's only: say why
		// there was more than one, since the split is then not the agent's whole part.
		var warn []string
		for _, line := range strings.Split(c.Log.String(), "\n") {
			if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
				warn = append(warn, line)
			}
		}
		b.Logf("evaluation %d took %d attempts; warnings:\n%s", id, r.attempts, coordtest.Tail(strings.Join(warn, "\n"), 6000))
	}
	// created_at and started_at are the database's clock, which is this machine's.
	r.schedule = ev.CreatedAt.Sub(start)
	r.dispatch = ev.StartedAt.Sub(ev.CreatedAt)
	r.reportAndStore = r.total - r.schedule - r.dispatch - time.Duration((r.checkout+r.evalSecs)*float64(time.Second))
	pool := c.DB.Pool()
	if err := pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT step_id) FROM builds WHERE evaluation_id = $1`, id).Scan(&r.builds, &r.steps); err != nil {
		b.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM step_edges e JOIN builds x ON x.step_id = e.step_id WHERE x.evaluation_id = $1`, id).Scan(&r.edges); err != nil {
		b.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM narinfos n JOIN builds x ON n.store_path = x.drv_path WHERE x.evaluation_id = $1`, id).Scan(&r.drvsCached); err != nil {
		b.Fatal(err)
	}
	return r
}

// checkRun makes sure the figures are for the whole graph: every job a build with a
// step of its own, every .drv in the cache, and the stored drv paths Nix's.
func checkRun(ctx context.Context, b *testing.B, c *coordtest.Coordinator, repoDir string, r triggerRun, n int) {
	b.Helper()
	if r.jobs != n || r.builds != n || r.steps != n || r.newBuilds != n || r.drvsCached != n {
		b.Fatalf("incomplete graph: %d jobs, %d builds (%d new), %d steps, %d .drv files cached; want %d each", r.jobs, r.builds,
			r.newBuilds, r.steps, r.drvsCached, n)
	}
	want, err := exec.Command("nix-instantiate", "--option", "substituters", "", filepath.Join(repoDir, "release.nix"), "-A", "j7").Output()
	if err != nil {
		b.Fatalf("nix-instantiate -A j7: %v", err)
	}
	var got string
	if err := c.DB.Pool().QueryRow(ctx, `SELECT drv_path FROM builds WHERE job = 'j7' ORDER BY id DESC LIMIT 1`).Scan(&got); err != nil ||
		got != strings.TrimSpace(string(want)) {
		b.Fatalf("j7 stored as %q (%v), nix-instantiate says %q", got, err, strings.TrimSpace(string(want)))
	}
}

// tmpfsStore is a new, empty store root on tmpfs for the second baseline, removed
// when the benchmark ends.
func tmpfsStore(b *testing.B) string {
	b.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "fc-bench-inst-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = exec.Command("chmod", "-R", "u+w", dir).Run()
		_ = os.RemoveAll(dir)
	})
	return dir
}

// instantiateAll is the baseline: nix-instantiate of the whole expression (extra
// arguments: e.g. --store).
func instantiateAll(b *testing.B, file string, extra ...string) (time.Duration, [2]float64) {
	b.Helper()
	start := time.Now()
	cmd := exec.Command("nix-instantiate", append([]string{"--option", "substituters", "", file}, extra...)...)
	out, err := cmd.Output()
	d := time.Since(start)
	var cpu [2]float64
	if cmd.ProcessState != nil {
		cpu = [2]float64{cmd.ProcessState.UserTime().Seconds(), cmd.ProcessState.SystemTime().Seconds()}
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			b.Fatalf("nix-instantiate: %v: %s", err, ee.Stderr)
		}
		b.Fatalf("nix-instantiate: %v", err)
	}
	if len(out) == 0 {
		b.Fatal("nix-instantiate printed nothing")
	}
	return d, cpu
}

func loadAverage() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// The package's helpers take *testing.T; these are the few a benchmark needs.

func benchGit(tb testing.TB, dir string, args ...string) string {
	tb.Helper()
	cmd := exec.Command("git", append([]string{"-c", "user.name=FC Bench", "-c", "user.email=bench@example.org"}, args...)...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

func commitFile(tb testing.TB, dir, name, body string) string {
	tb.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		tb.Fatal(err)
	}
	benchGit(tb, dir, "add", "-A")
	benchGit(tb, dir, "commit", "-q", "-m", "change")
	return benchGit(tb, dir, "rev-parse", "HEAD")
}

func benchSetup(tb testing.TB, c *coordtest.Coordinator, repoDir string) int64 {
	tb.Helper()
	var p, j struct{ ID int64 }
	if code := c.Do("POST", "/api/v1/projects", c.Admin, map[string]any{"name": "bench", "repository_url": repoDir}, &p); code != 201 {
		tb.Fatalf("create project: %d", code)
	}
	if code := c.Do("POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", p.ID), c.Admin, map[string]any{"name": "trivial",
		"branch": "main", "flake_mode": false, "nix_expression": "release.nix", "check_interval": 0}, &j); code != 201 {
		tb.Fatalf("create jobset: %d", code)
	}
	return j.ID
}
