package realise

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fc-ci/fc/agent/push"
	"github.com/fc-ci/fc/protocol"
)

type batchCase struct {
	drv string
	req Request
	log *logBuffer
	ctx context.Context
	res Result
	err error
	ret time.Time
}

// submitAll submits every case to b at once and waits for all results.
func submitAll(t *testing.T, b *Batcher, cases []*batchCase) {
	t.Helper()
	var wg sync.WaitGroup
	for _, c := range cases {
		if c.ctx == nil {
			c.ctx = context.Background()
		}
		wg.Go(func() {
			c.res, c.err = b.Realise(c.ctx, c.req)
			c.ret = time.Now()
		})
	}
	wg.Wait()
	b.Wait()
}

// eachBatcher runs f with each connection: nix-store processes and nix-daemon
// connections.
func eachBatcher(t *testing.T, f func(t *testing.T, conn string)) {
	t.Helper()
	for _, conn := range []string{ConnectionProcess, ConnectionDaemon} {
		t.Run(conn, func(t *testing.T) {
			t.Parallel()
			f(t, conn)
		})
	}
}

// newTestBatcher is NewBatcher(cfg) with the connection conn (which it must get),
// closed when t ends.
func newTestBatcher(t *testing.T, conn string, cfg BatcherConfig) *Batcher {
	t.Helper()
	if conn == ConnectionDaemon {
		if _, err := exec.LookPath("nix-daemon"); err != nil {
			t.Fatal("nix-daemon not found (nix-bin has it)")
		}
		cfg.DaemonCacheDir = t.TempDir()
	}
	cfg.Connection = conn
	b := NewBatcher(cfg)
	if b.Connection() != conn {
		t.Fatalf("connection %s, want %s", b.Connection(), conn)
	}
	t.Cleanup(b.Close)
	return b
}

// newCase is a request with the given cache: requests share a batch only when they
// share their substituters.
func newCase(t *testing.T, cache, script, extra string) *batchCase {
	log := newLogBuffer()
	drv := instantiate(t, script, extra)
	req := request(t, drv, log)
	req.CacheURL = cache
	return &batchCase{drv: drv, req: req, log: log}
}

func TestBatcher_OneProcessEachRequestItsOwnStatusAndLog(t *testing.T) {
	t.Parallel()
	eachBatcher(t, func(t *testing.T, conn string) {
		cache := emptyCache(t)
		dep := fmt.Sprintf(`dep = derivation { name = "fc-dep-%s"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo dep > $out" ]; };`, salt(t))
		ok := newCase(t, cache, `echo "line of ok"; echo "$dep" > $out`, dep)
		bad := newCase(t, cache, `echo "line of bad"; exit 3`, "")
		slow := newCase(t, cache, `echo "line of slow"; sleep 60; echo > $out`, "")
		multi := newCase(t, cache, `echo "line of multi"; echo lib > $out; echo h > $dev`, `outputs = [ "out" "dev" ];`)
		cases := []*batchCase{ok, bad, slow, multi}
		for _, c := range cases {
			c.req.Timeout = 3 * time.Second // the same for all: one batch
		}
		// As many builds as requests: one batch builds them all at once.
		b := newTestBatcher(t, conn, BatcherConfig{MaxJobs: len(cases), Slots: len(cases), Gather: 10 * time.Second})
		submitAll(t, b, cases)
		if n := b.Batches(); n != 1 {
			t.Errorf("%d nix-store processes for one batch", n)
		}
		for name, c := range map[string]*batchCase{"ok": ok, "bad": bad, "slow": slow, "multi": multi} {
			for other := range map[string]bool{"ok": true, "bad": true, "slow": true, "multi": true} {
				if has := strings.Contains(c.log.String(), "line of "+other+"\n"); has != (other == name) {
					t.Errorf("%s's log has %q: %v\n%s", name, "line of "+other, has, c.log)
				}
			}
			if c.res.LogSize != int64(len(c.log.String())) {
				t.Errorf("%s: LogSize %d, log %d bytes", name, c.res.LogSize, len(c.log.String()))
			}
			if c.res.StartedAt.IsZero() {
				t.Errorf("%s: no start time", name)
			}
		}
		if ok.err != nil || ok.res.Status != protocol.StepSucceeded || ok.res.ExitCode != 0 || len(ok.res.Outputs) != 1 {
			t.Errorf("ok: %+v %v", ok.res, ok.err)
		}
		if bad.err != nil || bad.res.Status != protocol.StepFailed || bad.res.ExitCode != 100 ||
			!strings.Contains(bad.res.Error, "builder for '"+bad.drv+"' failed with exit code 3") || strings.Contains(bad.res.Error, slow.drv) {
			t.Errorf("bad: %+v %v", bad.res, bad.err)
		}
		if !strings.Contains(bad.log.String(), "failed with exit code 3\n") || strings.Contains(ok.log.String(), "failed") {
			t.Errorf("failure message in the wrong log:\nbad:\n%s\nok:\n%s", bad.log, ok.log)
		}
		if slow.err != nil || slow.res.Status != protocol.StepTimedOut || slow.res.ExitCode != 101 || !strings.Contains(slow.res.Error, "timed out") {
			t.Errorf("slow: %+v %v", slow.res, slow.err)
		}
		if multi.err != nil || multi.res.Status != protocol.StepSucceeded || len(multi.res.Outputs) != 2 || len(multi.res.OutputPaths) != 2 {
			t.Errorf("multi: %+v %v", multi.res, multi.err)
		}
		// The closure is what nix path-info --recursive says, dependency included.
		out := ok.res.OutputPaths["out"]
		raw, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "path-info", "--json", "--recursive", out).Output()
		if err != nil {
			t.Fatal(err)
		}
		want, err := push.ParsePathInfo(raw)
		if err != nil {
			t.Fatal(err)
		}
		key := func(ii []protocol.PathInfo) []string {
			var k []string
			for _, i := range ii {
				slices.Sort(i.References)
				k = append(k, fmt.Sprintf("%s %s %d %v %s", i.StorePath, i.NarHash, i.NarSize, i.References, i.Deriver))
			}
			slices.Sort(k)
			return k
		}
		if got := key(ok.res.Closure); len(got) != 2 || !slices.Equal(got, key(want)) {
			t.Errorf("closure\n got  %v\n want %v", got, key(want))
		}
		if got := key(multi.res.Closure); len(got) != 2 {
			t.Errorf("multi closure %v", got)
		}
	})
}

func TestBatcher_ConcurrentRequestsShareFewProcesses(t *testing.T) {
	t.Parallel()
	eachBatcher(t, func(t *testing.T, conn string) {
		cache := emptyCache(t)
		const n = 12
		var cases []*batchCase
		for i := range n {
			cases = append(cases, newCase(t, cache, fmt.Sprintf(`echo "step %d"; echo %d > $out`, i, i), ""))
		}
		other := newCase(t, cache, `echo "other options"; echo > $out`, "")
		other.req.MaxSilent = time.Minute // another batch
		b := newTestBatcher(t, conn, BatcherConfig{MaxJobs: 2, Slots: n + 1})
		submitAll(t, b, append(cases, other))
		for i, c := range append(cases, other) {
			if c.err != nil || c.res.Status != protocol.StepSucceeded {
				t.Errorf("request %d: %+v %v", i, c.res, c.err)
			}
			if i < n && c.log.String() != fmt.Sprintf("step %d\n", i) {
				t.Errorf("request %d log %q", i, c.log)
			}
		}
		if p := b.Batches(); p < 2 || p >= n {
			t.Errorf("%d nix-store processes for %d requests (two sets of options)", p, n+1)
		}
		t.Logf("%d requests, %d nix-store processes", n+1, b.Batches())
	})
}

// startTwo submits a (stopped by the test) and b in one batch and waits for both to
// print their first line.
func startTwo(t *testing.T, conn string, a, b *batchCase) (*Batcher, chan struct{}) {
	bt := newTestBatcher(t, conn, BatcherConfig{MaxJobs: 2, Slots: 2, Gather: 10 * time.Second})
	done := make(chan struct{})
	go func() { submitAll(t, bt, []*batchCase{a, b}); close(done) }()
	b.log.waitMatch(t, regexp.MustCompile(`b started\n`), time.Minute)
	return bt, done
}

func TestBatcher_CancelOneStopsItsBatchOthersAreRetried(t *testing.T) {
	t.Parallel()
	eachBatcher(t, func(t *testing.T, conn string) {
		cache := emptyCache(t)
		a := newCase(t, cache, `echo "a started"; sleep 300; echo > $out`, "")
		b := newCase(t, cache, `echo "b started"; sleep 300; echo > $out`, "")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		a.ctx = ctx
		bt, done := startTwo(t, conn, a, b)
		a.log.waitMatch(t, regexp.MustCompile(`a started\n`), time.Minute)
		start := time.Now()
		cancel()
		select {
		case <-done:
		case <-time.After(60 * time.Second): // the builders would run 300 s
			t.Fatal("the batch did not end within 60 s of the cancel")
		}
		if !errors.Is(a.err, context.Canceled) || a.ret.Sub(start) > 5*time.Second {
			t.Errorf("cancelled request: %v after %v", a.err, a.ret.Sub(start))
		}
		if !errors.Is(b.err, ErrInfrastructure) || !strings.Contains(b.err.Error(), "stopped with the other builds") {
			t.Errorf("the other request: %+v %v", b.res, b.err)
		}
		if bt.Batches() != 1 {
			t.Errorf("%d processes", bt.Batches())
		}
	})
}

func TestBatcher_LogLimitOfOneStopsItsBatch(t *testing.T) {
	t.Parallel()
	eachBatcher(t, func(t *testing.T, conn string) {
		cache := emptyCache(t)
		// a floods its log only once b has started (b makes the gate file), so the
		// limit stops a batch that holds both, however slowly b starts.
		gate := gateFile(t)
		a := newCase(t, cache, fmt.Sprintf(`
    echo "a started"
    while [ ! -e %s ]; do sleep 0.05; done
    i=0`, gate)+`
    while [ $i -lt 5000 ]; do echo "line $i of a chatty build"; i=$((i+1)); done
    sleep 300
    echo ok > $out`, "")
		a.req.MaxLogSize = 1000
		b := newCase(t, cache, fmt.Sprintf(`echo "b started"; touch %s; sleep 300; echo > $out`, gate), "")
		_, done := startTwo(t, conn, a, b)
		select {
		case <-done:
		case <-time.After(120 * time.Second): // the builders would run 300 s
			t.Fatal("the batch was not stopped at the log limit")
		}
		if a.err != nil || a.res.Status != protocol.StepLogLimitExceeded || a.res.LogSize != 1000 || len(a.log.String()) != 1000 {
			t.Errorf("chatty request: %+v %v, log %d bytes", a.res, a.err, len(a.log.String()))
		}
		if strings.Contains(a.log.String(), "b started") || strings.Contains(b.log.String(), "chatty") {
			t.Error("logs mixed")
		}
		if !errors.Is(b.err, ErrInfrastructure) {
			t.Errorf("the other request: %+v %v", b.res, b.err)
		}
	})
}

func TestBatcher_CancelWhileWaitingLeavesAtOnce(t *testing.T) {
	t.Parallel()
	eachBatcher(t, func(t *testing.T, conn string) {
		cache := emptyCache(t)
		c := newCase(t, cache, `echo > $out`, "")
		b := newTestBatcher(t, conn, BatcherConfig{MaxJobs: 1, Slots: 4, Gather: time.Minute})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		// The only batch gathers for a minute (4 slots, one request): cancel first.
		ctx2, cancel2 := context.WithCancel(context.Background())
		cancel2()
		if _, err := b.Realise(ctx2, c.req); !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled before: %v", err)
		}
		_, err := b.Realise(ctx, c.req)
		if !errors.Is(err, ErrInfrastructure) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("deadline while waiting: %v", err)
		}
	})
}

// BenchmarkBatcher_200Trivial: 200 trivial derivations through a Batcher (max_jobs 2,
// 8 slots, each slot submitting its next request when the last returns) against one
// nix-store --realise of all 200 with -j2 (the same derivations, another salt).
func BenchmarkBatcher_200Trivial(b *testing.B) {
	mk := func(tag string) []string {
		dir := b.TempDir()
		expr := fmt.Sprintf(`builtins.genList (i: derivation { name = "fc-bench-%s-${toString i}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo $name > $out" ]; }) 200`, tag)
		out, err := exec.Command("nix-instantiate", "--option", "substituters", "", "-E", expr, "--add-root", dir+"/r", "--indirect").Output()
		if err != nil {
			b.Fatal(err)
		}
		var drvs []string
		for _, l := range strings.Fields(string(out)) {
			if target, err := exec.Command("readlink", "-f", l).Output(); err == nil {
				drvs = append(drvs, strings.TrimSpace(string(target)))
			}
		}
		return drvs
	}
	for range b.N {
		salt := fmt.Sprint(time.Now().UnixNano())
		drvs := mk("fc-" + salt)
		base := mk("base-" + salt)
		cache := b.TempDir()
		outs, err := derivationOutputs(context.Background(), drvs...) // as the coordinator sends them
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		bt := NewBatcher(BatcherConfig{MaxJobs: 2, Slots: 8})
		next := make(chan string, len(drvs))
		for _, d := range drvs {
			next <- d
		}
		close(next)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for d := range next {
					res, err := bt.Realise(context.Background(), Request{DrvPath: d, Outputs: outs[d], CacheURL: "file://" + cache, GCRootDir: cache + "/roots/" + d[11:20]})
					if err != nil || res.Status != protocol.StepSucceeded {
						b.Errorf("%s: %+v %v", d, res, err)
					}
				}
			})
		}
		wg.Wait()
		fc := time.Since(start)
		start = time.Now()
		if out, err := exec.Command("nix-store", append([]string{"-r", "-j2", "--option", "substituters", ""}, base...)...).CombinedOutput(); err != nil {
			b.Fatalf("%v %s", err, out)
		}
		nix := time.Since(start)
		b.ReportMetric(fc.Seconds(), "batcher-s/op")
		b.ReportMetric(nix.Seconds(), "nix-store-s/op")
		b.ReportMetric(fc.Seconds()/nix.Seconds(), "ratio")
		b.Logf("200 trivial derivations: Batcher %v in %d nix-store processes, one nix-store -r -j2 %v", fc.Round(time.Millisecond), bt.Processes(), nix.Round(time.Millisecond))
	}
}

// TestBatcher_FinishedDerivationsLeaveBeforeTheirBatch: a derivation built early in a
// batch gets its result (with its whole log) while a slower one still builds. (A
// failure waits for the batch: Nix 2.8 names the failed derivation only when
// nix-store ends, and its counters do not say which one failed.)
func TestBatcher_FinishedDerivationsLeaveBeforeTheirBatch(t *testing.T) {
	t.Parallel()
	eachBatcher(t, func(t *testing.T, conn string) {
		cache := emptyCache(t)
		// The slow builder waits for a file the test makes only once fast has its
		// result: fast leaving first is then the batcher's doing, not the clock's.
		gate := gateFile(t)
		fast := newCase(t, cache, `echo "fast 1"; echo "fast 2"; echo > $out; echo "fast 3"`, "")
		bad := newCase(t, cache, `echo "bad 1"; exit 2`, "")
		slow := newCase(t, cache, fmt.Sprintf(`echo "slow 1"; while [ ! -e %s ]; do sleep 0.05; done; echo > $out`, gate), "")
		b := newTestBatcher(t, conn, BatcherConfig{MaxJobs: 3, Slots: 3, Gather: 10 * time.Second})
		fastDone := make(chan struct{})
		go func() {
			defer close(fastDone)
			fast.res, fast.err = b.Realise(context.Background(), fast.req)
			fast.ret = time.Now()
		}()
		others := make(chan struct{})
		go func() { defer close(others); submitAll(t, b, []*batchCase{bad, slow}) }()
		select {
		case <-fastDone:
		case <-time.After(2 * time.Minute):
			t.Fatal("fast got no result while slow was still building")
		}
		if err := os.WriteFile(gate, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		<-others
		if b.Batches() != 1 {
			t.Fatalf("%d nix-store processes, want the three in one batch", b.Batches())
		}
		if fast.err != nil || fast.res.Status != protocol.StepSucceeded || fast.log.String() != "fast 1\nfast 2\nfast 3\n" || len(fast.res.Closure) != 1 {
			t.Errorf("fast: %+v %v, log %q", fast.res, fast.err, fast.log)
		}
		if bad.err != nil || bad.res.Status != protocol.StepFailed || !strings.HasPrefix(bad.log.String(), "bad 1\n") {
			t.Errorf("bad: %+v %v, log %q", bad.res, bad.err, bad.log)
		}
		if slow.err != nil || slow.res.Status != protocol.StepSucceeded {
			t.Errorf("slow: %+v %v", slow.res, slow.err)
		}
		// On the daemon path the early finisher asks its own daemon (no Nix
		// process per check, so it checks as soon as Nix counts a build done).
		if want := map[string]int{ConnectionDaemon: 1}[conn]; b.QueryDaemons() != want {
			t.Errorf("%d query daemons, want %d", b.QueryDaemons(), want)
		}
	})
}

// gateFile is a path a builder (a build user) can wait for, in a directory readable
// by all; the test creates the file to let the builder go on.
func gateFile(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fc-realise-gate-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "go")
}

// buildSpans checks that every case succeeded and returns when each builder ran, from
// its log's "start <ns>" and "end <ns>" lines.
func buildSpans(t *testing.T, cases []*batchCase) [][2]int64 {
	t.Helper()
	var spans [][2]int64
	for i, c := range cases {
		if c.err != nil || c.res.Status != protocol.StepSucceeded {
			t.Fatalf("request %d: %+v %v", i, c.res, c.err)
		}
		var start, end int64
		if _, err := fmt.Sscanf(c.log.String(), "start %d\nend %d\n", &start, &end); err != nil {
			t.Fatalf("request %d log %q: %v", i, c.log, err)
		}
		spans = append(spans, [2]int64{start, end})
	}
	return spans
}

// TestBatcher_MoreRequestsThanBuildsShareOneBuildBatches: six requests at once with
// two builds free go to two nix-store processes of three requests each, each building
// one at a time, so that one process starts or finishes while the other builds.
func TestBatcher_MoreRequestsThanBuildsShareOneBuildBatches(t *testing.T) {
	t.Parallel()
	eachBatcher(t, func(t *testing.T, conn string) {
		cache := emptyCache(t)
		var cases []*batchCase
		for i := range 6 {
			cases = append(cases, newCase(t, cache, fmt.Sprintf(`echo "start $(date +%%s%%N)"; sleep 0.3; echo "end $(date +%%s%%N)"; echo %d > $out`, i), ""))
		}
		b := newTestBatcher(t, conn, BatcherConfig{MaxJobs: 2, Slots: 6, Gather: 10 * time.Second})
		submitAll(t, b, cases)
		if p := b.Batches(); p != 2 {
			t.Fatalf("%d nix-store processes for six requests and two builds, want 2", p)
		}
		// Two at a time, never three: each batch builds its three one after the other.
		spans := buildSpans(t, cases)
		for _, s := range spans {
			overlapping := 0
			for _, o := range spans {
				if o[0] <= s[0] && s[0] < o[1] {
					overlapping++
				}
			}
			if overlapping > 2 {
				t.Errorf("%d builds ran at once, max_jobs is 2", overlapping)
			}
		}
	})
}

// TestBatcher_AllBatchesTogetherRunAtMostMaxJobsBuilds: however the requests are
// split into batches, no more than MaxJobs builders run at once.
func TestBatcher_AllBatchesTogetherRunAtMostMaxJobsBuilds(t *testing.T) {
	t.Parallel()
	eachBatcher(t, func(t *testing.T, conn string) {
		cache := emptyCache(t)
		var cases []*batchCase
		// Each builder marks its start in a shared directory and waits (at most 30 s)
		// until two have started, so two do overlap when max_jobs lets them, however
		// slowly a loaded machine starts them; with one at a time it waits in vain.
		meet := filepath.Dir(gateFile(t))
		for i := range 6 {
			cases = append(cases, newCase(t, cache, fmt.Sprintf(`echo "start $(date +%%s%%N)"; touch %[2]s/%[1]d; n=0; `+
				`while [ "$(ls %[2]s | wc -l)" -lt 2 ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done; sleep 0.1; `+
				`echo "end $(date +%%s%%N)"; echo %[1]d > $out`, i, meet), ""))
		}
		b := newTestBatcher(t, conn, BatcherConfig{MaxJobs: 2, Slots: 6, Gather: time.Millisecond})
		// Two waves: the second arrives while the first batch builds, so it needs a batch
		// of its own, which must share the two builds.
		var wg sync.WaitGroup
		submit := func(cs []*batchCase) {
			for _, c := range cs {
				wg.Go(func() { c.res, c.err = b.Realise(context.Background(), c.req) })
			}
		}
		submit(cases[:3])
		waitAnyContains(t, 30*time.Second, "start", cases[0].log, cases[1].log, cases[2].log)
		submit(cases[3:])
		wg.Wait()
		b.Wait()
		type edge struct {
			at    int64
			delta int
		}
		var edges []edge
		for _, s := range buildSpans(t, cases) {
			edges = append(edges, edge{s[0], +1}, edge{s[1], -1})
		}
		slices.SortFunc(edges, func(a, b edge) int { return cmp.Compare(a.at, b.at)*2 + cmp.Compare(a.delta, b.delta) })
		running, most := 0, 0
		for _, e := range edges {
			running += e.delta
			most = max(most, running)
		}
		if most > 2 {
			t.Errorf("%d builders ran at once, max_jobs is 2", most)
		}
		if most < 2 {
			t.Errorf("only %d builder at a time: the batches did not use max_jobs", most)
		}
	})
}
