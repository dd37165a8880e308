package fleet_test

// BenchmarkQueue100k (issue 20, "a queue of 100,000"): 100,000 runnable steps seeded
// with SQL as the ingest would store them (an evaluation, its builds, their steps and
// outputs, the outputs uploaded and awaiting the step's success), then one or two
// fc-coordinator serve processes on that one database and simulated agents that speak
// the real protocol (their own keys, enrolment, the WebSocket+yamux session, the
// command stream for assignments, the step report stream) and finish every step at
// once, without Nix. Figures: sustained steps/s over the whole queue and per decile
// (the curve against the queue still waiting), dispatch latency (an agent's slot freed
// by an accepted report → the next assignment reaching that agent), report round trip
// (FinishStep), and each coordinator process's RSS (/proc/PID/status; peak VmHWM),
// CPU, PostgreSQL's CPU and the load average. Run it with scripts/bench-queue, or:
//
//	go test -run '^$' -bench Queue100k -benchtime 1x -timeout 60m ./coordinator/fleet/
//
// FC_QUEUE_STEPS (default 100000), FC_QUEUE_RUNS (default
// "1x200,2x200,1x50,1x10,1x200@0.3,2x200@0.3": coordinators x agents, @CPUS a CPU
// quota for each coordinator) and FC_QUEUE_SLOTS (steps an agent takes at once,
// default 16, an agent's default step_slots with max_jobs 1) change the load.
//
// Why quotas: on one machine every process shares its cores, so with the machine
// busy a second coordinator only moves CPU from one process to another. A quota per
// coordinator (its own cgroup's cpu controller, like a head node of its own with that
// much CPU) makes the coordinators the bound and shows whether a second one adds its
// share of throughput, as a second host would.

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fc-ci/fc/agent/session"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/coordinator/fleet"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func queueEnv(b *testing.B, name string, def int) int {
	b.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive number", name, v)
	}
	return n
}

func BenchmarkQueue100k(b *testing.B) {
	steps := queueEnv(b, "FC_QUEUE_STEPS", 100_000)
	slots := queueEnv(b, "FC_QUEUE_SLOTS", 16)
	runs := os.Getenv("FC_QUEUE_RUNS")
	if runs == "" {
		runs = "1x200,2x200,1x50,1x10,1x200@0.3,2x200@0.3"
	}
	bin := queueBuild(b)
	for _, r := range strings.Split(runs, ",") {
		r, quota, hasQuota := strings.Cut(strings.TrimSpace(r), "@")
		c, a, ok := strings.Cut(r, "x")
		coords, err1 := strconv.Atoi(c)
		agents, err2 := strconv.Atoi(a)
		cpus := 0.0
		var err3 error
		if hasQuota {
			cpus, err3 = strconv.ParseFloat(quota, 64)
		}
		if !ok || err1 != nil || err2 != nil || err3 != nil || coords < 1 || agents < 1 || cpus < 0 || (hasQuota && cpus == 0) {
			b.Fatalf("FC_QUEUE_RUNS: %q is not COORDINATORSxAGENTS[@CPUS]", r)
		}
		name := fmt.Sprintf("coordinators=%d/agents=%d", coords, agents)
		if hasQuota {
			name += "/cpu=" + quota
		}
		b.Run(name, func(b *testing.B) {
			queueRun(b, bin, coords, agents, slots, steps, cpus)
		})
	}
}

// queueCPUQuota puts the process into a cgroup of its own whose cpu controller lets
// it use cpus CPUs (cgroup v2's cpu.max, or v1's cfs quota), removed when the
// benchmark ends. Threads the process starts later stay in it.
func queueCPUQuota(b *testing.B, pid int, cpus float64) error {
	const period = 100_000 // µs
	quota := int(cpus * period)
	name := fmt.Sprintf("fc-bench-queue-%d-%d", os.Getpid(), pid)
	var dir string
	var files [][2]string // name, value, written in this order
	if ctl, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers"); err == nil && slices.Contains(strings.Fields(string(ctl)), "cpu") {
		dir = filepath.Join("/sys/fs/cgroup", name)
		files = [][2]string{{"cpu.max", fmt.Sprintf("%d %d", quota, period)}}
		if err := os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+cpu"), 0o644); err != nil {
			return fmt.Errorf("CPU quota: enable the cpu controller for child cgroups: %w", err)
		}
	} else if _, err := os.Stat("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"); err == nil {
		dir = filepath.Join("/sys/fs/cgroup/cpu", name)
		files = [][2]string{{"cpu.cfs_period_us", strconv.Itoa(period)}, {"cpu.cfs_quota_us", strconv.Itoa(quota)}}
	} else {
		return fmt.Errorf("CPU quota @%g: this machine has no cgroup cpu controller at /sys/fs/cgroup (v2) or /sys/fs/cgroup/cpu (v1)", cpus)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("CPU quota: %w (quotas need root and a writable cgroup hierarchy)", err)
	}
	b.Cleanup(func() {
		// After the process has exited (cleanups run last first): the cgroup is empty.
		if err := os.Remove(dir); err != nil {
			b.Errorf("CPU quota: remove %s: %v", dir, err)
		}
	})
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, f[0]), []byte(f[1]), 0o644); err != nil {
			return fmt.Errorf("CPU quota: write %s: %w", f[0], err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("CPU quota: move process %d into %s: %w", pid, dir, err)
	}
	return nil
}

// queueBuild builds fc-coordinator once for every run; FC_QUEUE_BIN names one built
// already (another revision, to compare).
func queueBuild(b *testing.B) string {
	b.Helper()
	if bin := os.Getenv("FC_QUEUE_BIN"); bin != "" {
		return bin
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(b.TempDir(), "fc-coordinator")
	if out, err := exec.Command(gobin, "build", "-o", bin, "github.com/fc-ci/fc/coordinator/cmd/fc-coordinator").CombinedOutput(); err != nil {
		b.Fatalf("go build fc-coordinator: %v\n%s", err, out)
	}
	return bin
}

// queueCoordinator is one fc-coordinator serve process.
type queueCoordinator struct {
	cmd  *exec.Cmd
	url  string
	tail *queueTail
}

// queueTail keeps the last lines a coordinator logged (info level logs two lines per
// step; keeping them all would weigh on the benchmark's own memory).
type queueTail struct {
	mu    sync.Mutex
	lines []string
}

func (t *queueTail) add(l string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) >= 200 {
		t.lines = t.lines[1:]
	}
	t.lines = append(t.lines, l)
}

func (t *queueTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}

// queueStart runs fc-coordinator serve on dbURL until the benchmark ends, with the
// default configuration (log level info) but for a long agent heartbeat; cpus > 0 is
// a CPU quota for the process (queueCPUQuota).
func queueStart(b *testing.B, bin, dbURL string, cpus float64) *queueCoordinator {
	b.Helper()
	dir := b.TempDir()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FC_") {
			env = append(env, kv)
		}
	}
	env = append(env, "FC_DATABASE__URL="+dbURL, "FC_STATE_DIR="+dir, "FC_LOG_LEVEL=info",
		"FC_SERVER__HOST=127.0.0.1", "FC_SERVER__PORT=0", "FC_SERVER__AGENT_HEARTBEAT="+strconv.Itoa(benchHeartbeat))
	c := &queueCoordinator{cmd: exec.Command(bin, "serve"), tail: &queueTail{}}
	c.cmd.Dir, c.cmd.Env = dir, env
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	if cpus > 0 {
		if err := queueCPUQuota(b, c.cmd.Process.Pid, cpus); err != nil {
			_ = c.cmd.Process.Kill()
			b.Fatal(err)
		}
	}
	addr := make(chan string, 1)
	exited := make(chan struct{})
	var logFile *os.File
	if d := os.Getenv("FC_QUEUE_LOG_DIR"); d != "" { // every line, to look into a run
		if logFile, err = os.CreateTemp(d, "coordinator-*.log"); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { logFile.Close() })
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			c.tail.add(line)
			if logFile != nil {
				_, _ = logFile.WriteString(line + "\n")
			}
			if m := benchListenRE.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
		_ = c.cmd.Wait()
		close(exited)
	}()
	b.Cleanup(func() {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = c.cmd.Process.Kill()
			<-exited
			b.Errorf("fc-coordinator serve did not stop within 30 s of SIGTERM")
		}
	})
	select {
	case a := <-addr:
		c.url = "http://" + a
	case <-exited:
		b.Fatalf("fc-coordinator serve exited: %v; its log:\n%s", c.cmd.ProcessState, c.tail)
	case <-time.After(60 * time.Second):
		b.Fatalf("fc-coordinator serve did not listen within 60 s; its log:\n%s", c.tail)
	}
	return c
}

// queueStats is what the simulated agents saw.
type queueStats struct {
	mu       sync.Mutex
	done     []time.Time     // when each accepted report's verdict arrived
	dispatch []time.Duration // slot freed → next assignment on that agent
	report   []time.Duration // report stream opened → verdict
	refused  atomic.Int64
	errs     atomic.Int64
	lastErr  atomic.Value
	finished chan struct{}
	want     int
}

func (s *queueStats) fail(err error) {
	s.errs.Add(1)
	s.lastErr.Store(err.Error())
}

// queueAgent is a simulated agent: it accepts every assignment and reports success
// at once over a step report stream, as fc-agent does after building and uploading.
type queueAgent struct {
	conn  *session.Conn
	stats *queueStats
	mu    sync.Mutex
	freed []time.Time // slots freed and not yet refilled, oldest first
}

func (a *queueAgent) handle(ctx context.Context, m protocol.Message) protocol.Message {
	if m.Type != protocol.TypeAssign || m.Assign == nil || m.Assign.Step == nil {
		return protocol.Message{Type: protocol.TypeAck}
	}
	now := time.Now()
	a.mu.Lock()
	if len(a.freed) > 0 {
		d := now.Sub(a.freed[0])
		a.freed = a.freed[1:]
		a.stats.mu.Lock()
		a.stats.dispatch = append(a.stats.dispatch, d)
		a.stats.mu.Unlock()
	}
	a.mu.Unlock()
	work := m.Assign.Work
	go a.report(ctx, work, now)
	return protocol.Message{Type: protocol.TypeAccept}
}

func (a *queueAgent) report(ctx context.Context, work protocol.WorkRef, started time.Time) {
	t0 := time.Now()
	st, err := a.conn.OpenStream(protocol.StreamStepReport)
	if err != nil {
		a.stats.fail(err)
		return
	}
	defer st.Close()
	rep := protocol.StepReport{Work: work, Status: protocol.StepSucceeded, StartedAt: started, FinishedAt: time.Now()}
	var v protocol.StepVerdict
	if err := protocol.WriteFrame(st, rep); err != nil {
		a.stats.fail(err)
		return
	}
	if err := protocol.ReadFrame(st, &v); err != nil {
		a.stats.fail(err)
		return
	}
	now := time.Now()
	if !v.Accepted {
		a.stats.refused.Add(1)
		a.stats.lastErr.Store("refused: " + v.Error)
	}
	a.mu.Lock()
	a.freed = append(a.freed, now)
	a.mu.Unlock()
	s := a.stats
	s.mu.Lock()
	s.report = append(s.report, now.Sub(t0))
	if v.Accepted {
		s.done = append(s.done, now)
		if len(s.done) == s.want {
			close(s.finished)
		}
	}
	s.mu.Unlock()
}

// queueConnect enrols and connects n simulated agents, agent i to coordinator i mod
// len(coords), and serves their sessions until the benchmark ends.
func queueConnect(b *testing.B, db *storage.DB, coords []*queueCoordinator, n, slots int, stats *queueStats) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	_, token, err := fleet.CreateToken(ctx, db, "queue-bench", n, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	ids := benchKeys(b, n)
	state := session.State{Capabilities: protocol.Capabilities{Systems: []string{"x86_64-linux"}, MaxJobs: 1, Slots: slots,
		SpeedFactor: 1, Roles: []string{protocol.RoleBuild}}}
	agents := make([]*queueAgent, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			conn, err := session.Dial(ctx, session.Config{URL: coords[i%len(coords)].url, Identity: id,
				Name: fmt.Sprintf("queue-%03d", i), AgentVersion: "bench", EnrollmentToken: token}, state)
			agents[i], errs[i] = &queueAgent{conn: conn, stats: stats}, err
		})
	}
	wg.Wait()
	var serving sync.WaitGroup
	b.Cleanup(func() {
		cancel()
		for _, a := range agents {
			if a.conn != nil {
				a.conn.Close()
			}
		}
		serving.Wait()
	})
	for i, err := range errs {
		if err != nil {
			b.Fatalf("agent %d: %v", i, err)
		}
	}
	for _, a := range agents {
		serving.Go(func() { _ = a.conn.Serve(ctx, a.handle) })
		serving.Go(func() { // the coordinator drops a session silent for three heartbeats
			t := time.NewTicker(benchHeartbeat * time.Second / 2)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					_ = a.conn.Heartbeat(ctx, state)
				}
			}
		})
	}
	benchWaitSessions(b, db, int64(n))
}

// queueSeed stores, in one transaction, what the ingest stores for an evaluation of n
// new independent jobs: a project, a jobset, the evaluation, n steps (one output
// each), n builds (linked to the evaluation by the builds trigger, with their
// outputs), and each output already uploaded by its builder, awaiting the step's
// success to be signed (narinfos.pending_step). Its commit notifies the coordinators
// as an ingest's does; it returns that moment.
func queueSeed(b *testing.B, db *storage.DB, n int) time.Time {
	b.Helper()
	ctx := context.Background()
	tx, err := db.Pool().Begin(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var js, eval int64
	if err := tx.QueryRow(ctx, `WITH p AS (INSERT INTO projects (name, repository_url) VALUES ('queue', 'https://example.org/queue.git') RETURNING id)
		INSERT INTO jobsets (project_id, name) SELECT id, 'main' FROM p RETURNING id`).Scan(&js); err != nil {
		b.Fatal(err)
	}
	if err := tx.QueryRow(ctx, `INSERT INTO evaluations (jobset_id, status, commit, trigger, nr_jobs, nr_new_builds, started_at, finished_at)
		VALUES ($1, 'succeeded', md5('queue'), 'api', $2, $2, now(), now()) RETURNING id`, js, n).Scan(&eval); err != nil {
		b.Fatal(err)
	}
	// Parameters: $1 the jobset, $2 the evaluation, $3 the number of steps.
	for _, q := range []string{
		`INSERT INTO steps (drv_path, system, jobset_id, scheduling_priority, critical_path)
			SELECT '/nix/store/' || md5('drv' || g) || '-q' || g || '.drv', 'x86_64-linux', $1, 100, 1 FROM generate_series(1, $3::int) g`,
		`INSERT INTO step_outputs (step_id, name, path) SELECT id, 'out', '/nix/store/' || md5('out' || id) || '-q' || id
			FROM steps WHERE jobset_id = $1`,
		`INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, step_id, system, nix_name, description, license)
			SELECT $2, $1, 'pkgs.q' || s.id, s.drv_path, s.id, s.system, 'q-' || s.id, 'a queue benchmark job', 'mit'
			FROM steps s WHERE s.jobset_id = $1 ORDER BY s.id`,
		`INSERT INTO build_outputs (build_id, name, path) SELECT b.id, o.name, o.path
			FROM builds b JOIN step_outputs o ON o.step_id = b.step_id WHERE b.evaluation_id = $2`,
		`INSERT INTO narinfos (hash_part, store_path, url, compression, file_hash, file_size, nar_hash, nar_size, deriver, pending_step)
			SELECT substr(o.path, 12, 32), o.path, 'nar/' || md5('file' || o.step_id) || '.nar.zst', 'zstd', 'sha256:' || md5('file' || o.step_id),
				400, 'sha256:' || md5('nar' || o.step_id), 1000, 'q-' || o.step_id || '.drv', o.step_id
			FROM step_outputs o JOIN steps s ON s.id = o.step_id WHERE s.jobset_id = $1`,
	} {
		q = `WITH params AS (SELECT $1::bigint AS js, $2::bigint AS eval, $3::int AS n) ` + q
		if _, err := tx.Exec(ctx, q, js, eval, n); err != nil {
			b.Fatalf("seed %d steps: %v\n%s", n, err, q)
		}
	}
	// Planner statistics as autovacuum would soon have them (ANALYZE sees the
	// transaction's own rows).
	if _, err := tx.Exec(ctx, `ANALYZE steps, step_outputs, builds, build_outputs, evaluation_builds, narinfos, jobs`); err != nil {
		b.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, string(storage.StepsChannel)); err != nil {
		b.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		b.Fatal(err)
	}
	return time.Now()
}

// queueRun is one measurement: a fresh database, coords coordinator processes,
// agents simulated agents (split between them), then the queue of steps.
func queueRun(b *testing.B, bin string, coords, agents, slots, steps int, cpus float64) {
	ctx := context.Background()
	dbURL := storagetest.URL(b)
	db, err := storage.Open(ctx, storage.Config{URL: dbURL, MaxConnections: 4}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(db.Close)
	cs := make([]*queueCoordinator, coords)
	for i := range cs {
		cs[i] = queueStart(b, bin, dbURL, cpus)
	}
	stats := &queueStats{finished: make(chan struct{}), want: steps}
	queueConnect(b, db, cs, agents, slots, stats)

	probe := &coordtest.Coordinator{DB: db} // CPUNow reads PostgreSQL's CPU through its pool
	cpu0 := coordtest.CPUNow(b, probe)
	coordCPU0 := queueCoordCPU(cs)
	load0 := queueLoad()
	peak := make([]int64, coords) // highest RSS seen, KB
	stopSampling := queueSample(b, cs, peak)

	b.ResetTimer()
	start := queueSeed(b, db, steps)
	timeout := time.Duration(queueEnv(b, "FC_QUEUE_TIMEOUT", 1800)) * time.Second
	timedOut := false
	select {
	case <-stats.finished:
	case <-time.After(timeout):
		timedOut = true
	}
	end := time.Now()
	b.StopTimer()
	stopSampling()
	cpu := coordtest.CPUNow(b, probe).Since(cpu0)
	coordCPU := queueCoordCPU(cs) - coordCPU0
	load1 := queueLoad()

	stats.mu.Lock()
	done := slices.Clone(stats.done)
	dispatch, report := slices.Clone(stats.dispatch), slices.Clone(stats.report)
	stats.mu.Unlock()
	slices.SortFunc(done, func(x, y time.Time) int { return x.Compare(y) })
	if len(done) == 0 {
		b.Fatalf("no step finished in %v; errors %d (last %v); a coordinator's log:\n%s", timeout, stats.errs.Load(),
			stats.lastErr.Load(), cs[0].tail)
	}
	wall := done[len(done)-1].Sub(start)
	rate := float64(len(done)) / wall.Seconds()
	note := ""
	if timedOut {
		note = fmt.Sprintf(" (TIMED OUT after %v: %d of %d steps)", timeout, len(done), steps)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(rate, "steps/s")
	b.ReportMetric(coordtest.Msf(coordtest.Pct(dispatch, 50)), "dispatch-p50-ms")
	b.ReportMetric(coordtest.Msf(coordtest.Pct(dispatch, 99)), "dispatch-p99-ms")
	var rssMax int64
	for _, p := range peak {
		rssMax = max(rssMax, p)
	}
	b.ReportMetric(float64(rssMax)/1024, "max-rss-MB")
	b.Logf("%d steps, %d coordinator(s), %d agents × %d slots: last step done %.1f s after the seed's commit: %.0f steps/s sustained%s; "+
		"refused reports %d, agent-side errors %d (last: %v)", steps, coords, agents, slots, wall.Seconds(), rate, note,
		stats.refused.Load(), stats.errs.Load(), stats.lastErr.Load())
	b.Logf("dispatch latency (an agent's slot freed by an accepted report → its next assignment arrives), %d samples: p50 %s, p90 %s, p99 %s, max %s",
		len(dispatch), coordtest.PctMs(dispatch, 50), coordtest.PctMs(dispatch, 90), coordtest.PctMs(dispatch, 99), coordtest.PctMs(dispatch, 100))
	b.Logf("report round trip (stream opened → verdict; FinishStep), %d samples: p50 %s, p99 %s",
		len(report), coordtest.PctMs(report, 50), coordtest.PctMs(report, 99))
	b.Logf("curve, steps/s per tenth of the queue (queue still waiting at its start): %s", queueCurve(done, start, steps))
	for i, c := range cs {
		m := benchProcStatus(b, c.cmd.Process.Pid)
		heap, goroutines := benchScrape(b, c.url)
		b.Logf("coordinator %d: RSS highest sampled %.1f MB, now %.1f MB, peak (VmHWM) %.1f MB, %d threads, Go heap in use %.1f MB, %d goroutines",
			i+1, float64(peak[i])/1024, float64(m.rssKB)/1024, float64(m.hwmKB)/1024, m.threads, float64(heap)/(1<<20), goroutines)
	}
	b.Logf("CPU over the run (%.1f s): coordinator process(es) %.1f s, PostgreSQL %.1f s, this process (agents, benchmark) %.1f s; "+
		"machine %.0f%% busy; load average before %s, after %s", end.Sub(start).Seconds(), coordCPU.Seconds(), cpu.Postgres.Seconds(),
		cpu.Self.Seconds(), 100*cpu.Busy.Seconds()/max(cpu.Total.Seconds(), 1e-9), load0, load1)
}

// queueCurve is the rate over each tenth of the steps, by completion order.
func queueCurve(done []time.Time, start time.Time, steps int) string {
	var parts []string
	for d := range 10 {
		k0, k1 := d*steps/10, min((d+1)*steps/10, len(done))
		if k1 <= k0 {
			break
		}
		t0 := start
		if k0 > 0 {
			t0 = done[k0-1]
		}
		parts = append(parts, fmt.Sprintf("%dk:%.0f", (steps-k0)/1000, float64(k1-k0)/done[k1-1].Sub(t0).Seconds()))
	}
	return strings.Join(parts, " ")
}

func queueCoordCPU(cs []*queueCoordinator) time.Duration {
	var t time.Duration
	for _, c := range cs {
		d, _ := coordtest.ProcessCPU(c.cmd.Process.Pid)
		t += d
	}
	return t
}

func queueLoad() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(raw))[:3], " ")
}

// queueSample reads each coordinator's RSS every 250 ms into peak until stopped.
func queueSample(b *testing.B, cs []*queueCoordinator, peak []int64) (stop func()) {
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			for i, c := range cs {
				if raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid)); err == nil {
					for _, l := range strings.Split(string(raw), "\n") {
						if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
							kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
							peak[i] = max(peak[i], kb)
						}
					}
				}
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); <-stopped }
}
