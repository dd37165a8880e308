package realise

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fc-ci/fc/protocol"
)

// parentOf is a process's parent pid, from /proc.
func parentOf(t *testing.T, pid int) int {
	t.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(stat)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}

// daemonOf is the nix-daemon running the builder pid (its parent).
func daemonOf(t *testing.T, builder int) int {
	t.Helper()
	pid := parentOf(t, builder)
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if !strings.HasPrefix(string(comm), "nix-daemon") {
		t.Fatalf("the builder's parent %d is %q, not nix-daemon", pid, comm)
	}
	return pid
}

func TestDaemon_DependencyFailureIsClassifiedAsOnTheProcessPath(t *testing.T) {
	t.Parallel()
	eachConnection(t, func(t *testing.T, rf realiseFunc) {
		dep := fmt.Sprintf(`dep = derivation { name = "fc-faildep-%s"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo dep fails; exit 4" ]; };`, salt(t))
		drv := instantiate(t, `echo "$dep" > $out`, dep)
		log := newLogBuffer()
		res, err := rf(context.Background(), request(t, drv, log))
		// The step itself never ran: retried (elsewhere), not reported failed.
		if !errors.Is(err, ErrInfrastructure) || res.Status != "" || !strings.Contains(err.Error(), "dependencies of derivation") {
			t.Fatalf("result %+v, err %v", res, err)
		}
		if !strings.Contains(log.String(), "failed with exit code 4") {
			t.Errorf("log lacks the dependency's failure:\n%s", log)
		}
	})
}

func TestDaemon_OutputAlreadyValidSucceedsWithoutABuild(t *testing.T) {
	t.Parallel()
	eachConnection(t, func(t *testing.T, rf realiseFunc) {
		drv := instantiate(t, `echo built once; echo x > $out`, "")
		first := realise(t, rf, request(t, drv, newLogBuffer()))
		log := newLogBuffer()
		again := realise(t, rf, request(t, drv, log))
		if again.Status != protocol.StepSucceeded || len(again.Outputs) != 1 || again.Outputs[0].NarHash != first.Outputs[0].NarHash {
			t.Fatalf("again: %+v, first %+v", again, first)
		}
		if !again.StartedAt.IsZero() || strings.Contains(log.String(), "built once") {
			t.Errorf("built again: started %v, log %q", again.StartedAt, log)
		}
	})
}

// startSleeper realises a derivation that sleeps, on b, and returns its builder's and
// the builder's child's pids once it runs, with the channel of its outcome.
func startSleeper(t *testing.T, ctx context.Context, b *Batcher) (pids []int, done chan error) {
	t.Helper()
	log := newLogBuffer()
	drv := instantiate(t, `echo "builder=$$"; sleep 300 & echo "sleeper=$!"; wait; echo ok > $out`, "")
	done = make(chan error, 1)
	go func() {
		_, err := b.Realise(ctx, request(t, drv, log))
		done <- err
	}()
	m := log.waitMatch(t, regexp.MustCompile(`builder=(\d+)\nsleeper=(\d+)\n`), time.Minute)
	for _, s := range m[1:] {
		pid, _ := strconv.Atoi(s)
		pids = append(pids, pid)
	}
	t.Cleanup(func() {
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	return pids, done
}

// buildOK realises a trivial derivation on b and fails t unless it succeeds.
func buildOK(t *testing.T, b *Batcher) {
	t.Helper()
	drv := instantiate(t, `echo ok > $out`, "")
	res, err := b.Realise(context.Background(), request(t, drv, newLogBuffer()))
	if err != nil || res.Status != protocol.StepSucceeded {
		t.Fatalf("a build after: %+v %v", res, err)
	}
}

func TestDaemon_CancelStopsItsDaemonAndTheSlotIsReused(t *testing.T) {
	t.Parallel()
	b := daemonBatcher(t, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pids, done := startSleeper(t, ctx, b)
	daemon := daemonOf(t, pids[0])
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("after the cancel: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Realise did not return within 5 s of the cancel")
	}
	for _, pid := range append(pids, daemon) {
		if !waitGone(t, pid, 5*time.Second) {
			t.Errorf("process %d still runs after the cancel", pid)
		}
	}
	buildOK(t, b)
	if b.Connection() != ConnectionDaemon || b.Processes() != 0 {
		t.Errorf("connection %s, %d nix-store processes", b.Connection(), b.Processes())
	}
}

func TestDaemon_KilledDaemonIsAClearInfrastructureFailureAndIsReplaced(t *testing.T) {
	t.Parallel()
	b := daemonBatcher(t, 1)
	pids, done := startSleeper(t, context.Background(), b)
	if err := syscall.Kill(daemonOf(t, pids[0]), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrInfrastructure) || !strings.Contains(err.Error(), "nix daemon connection failed") {
			t.Fatalf("after the daemon died: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Realise did not return within 10 s of the daemon's death")
	}
	buildOK(t, b)
	if b.Daemons() < 2 {
		t.Errorf("%d daemons started: the dead one was not replaced", b.Daemons())
	}
}

func TestDaemon_NoDaemonFallsBackToProcesses(t *testing.T) {
	t.Parallel()
	for _, cmd := range [][]string{{"/nonexistent/nix-daemon", "--stdio"}, {"/bin/sh", "-c", "echo no store here >&2"}} {
		b := NewBatcher(BatcherConfig{MaxJobs: 1, Connection: ConnectionDaemon, DaemonCommand: cmd, DaemonCacheDir: t.TempDir()})
		t.Cleanup(b.Close)
		if b.Connection() != ConnectionProcess {
			t.Fatalf("%v: connection %s", cmd, b.Connection())
		}
		buildOK(t, b)
		if b.Processes() != 1 {
			t.Errorf("%v: %d nix-store processes", cmd, b.Processes())
		}
	}
}

// TestHelperDaemonRealise is not a test: TestDaemon_KilledAgentTakesItsBuildWithIt
// runs the test binary as a stand-in agent building on a daemon connection.
func TestHelperDaemonRealise(t *testing.T) {
	drv := os.Getenv("FC_TEST_DAEMON_DRV")
	if drv == "" {
		t.Skip("helper process only")
	}
	b := NewBatcher(BatcherConfig{MaxJobs: 1, Connection: ConnectionDaemon})
	if b.Connection() != ConnectionDaemon {
		t.Fatal("no daemon connection")
	}
	_, err := b.Realise(context.Background(), Request{DrvPath: drv, CacheURL: os.Getenv("FC_TEST_DAEMON_CACHE"), Log: os.Stdout})
	t.Fatalf("Realise returned: %v", err)
}

// TestDaemon_KilledAgentTakesItsBuildWithIt: an agent killed mid-build (SIGKILL, as
// at a crash or restart) leaves no builder behind, as on the process path, so the
// restarted agent's reconciliation finds no step still running.
func TestDaemon_KilledAgentTakesItsBuildWithIt(t *testing.T) {
	t.Parallel()
	drv := instantiate(t, `echo "builder=$$"; sleep 300 & echo "sleeper=$!"; wait; echo ok > $out`, "")
	log := newLogBuffer()
	agent := exec.Command(os.Args[0], "-test.run=^TestHelperDaemonRealise$", "-test.v")
	agent.Env = append(os.Environ(), "FC_TEST_DAEMON_DRV="+drv, "FC_TEST_DAEMON_CACHE="+emptyCache(t))
	agent.Stdout = log
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = agent.Process.Kill(); _ = agent.Wait() })
	m := log.waitMatch(t, regexp.MustCompile(`builder=(\d+)\nsleeper=(\d+)\n`), time.Minute)
	builder, _ := strconv.Atoi(m[1])
	pids := []int{builder, daemonOf(t, builder)}
	sleeper, _ := strconv.Atoi(m[2])
	pids = append(pids, sleeper)
	if err := agent.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = agent.Wait()
	for _, pid := range pids {
		if !waitGone(t, pid, 10*time.Second) {
			t.Errorf("process %d outlived the agent that was killed", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func TestDaemonOptions_AreArgsOptions(t *testing.T) {
	o := daemonOptions(Request{CacheURL: "http://c/nix-cache", Substituters: []string{"https://up"}, TrustedKeys: []string{"c-1:k"},
		Features: []string{"kvm"}, Timeout: 90 * time.Second, MaxSilent: 30 * time.Second, NetrcFile: "/s/cache.netrc"}, 2, "/s/hook")
	got := fmt.Sprint(o.Overrides)
	for _, want := range []string{"[substituters http://c/nix-cache https://up]", "[timeout 90]", "[narinfo-cache-negative-ttl 0]",
		"[builders ]", "[build-hook /s/hook]", "[netrc-file /s/cache.netrc]", "[trusted-public-keys c-1:k]", "[system-features kvm]"} {
		if !strings.Contains(got, want) {
			t.Errorf("overrides %s lack %s", got, want)
		}
	}
	if o.MaxJobs != 2 || o.MaxSilent != 30*time.Second || !o.KeepGoing {
		t.Errorf("options %+v", o)
	}
	bare := fmt.Sprint(daemonOptions(Request{}, 1, "").Overrides)
	if strings.Contains(bare, "netrc") || strings.Contains(bare, "build-hook") || strings.Contains(bare, "features") || !strings.Contains(bare, "[timeout 0]") || !strings.Contains(bare, "[substituters ]") {
		t.Errorf("bare overrides %s", bare)
	}
	// Nix takes whole seconds, and 0 means no timeout: a shorter one is a second.
	if short := fmt.Sprint(daemonOptions(Request{Timeout: 300 * time.Millisecond}, 1, "").Overrides); !strings.Contains(short, "[timeout 1]") {
		t.Errorf("overrides for a 300 ms timeout: %s", short)
	}
}

// TestDaemon_OtherSubstitutersGetAFreshDaemon: Nix opens its substituters once per
// process, so a daemon that built with one cache never serves a batch with another.
func TestDaemon_OtherSubstitutersGetAFreshDaemon(t *testing.T) {
	t.Parallel()
	b := daemonBatcher(t, 1)
	build := func(cache string) {
		req := request(t, instantiate(t, `echo > $out`, ""), newLogBuffer())
		req.CacheURL = cache
		if res, err := b.Realise(context.Background(), req); err != nil || res.Status != protocol.StepSucceeded {
			t.Fatalf("%+v %v", res, err)
		}
	}
	one, other := emptyCache(t), emptyCache(t)
	build(one)
	started := b.Daemons()
	build(one)
	if b.Daemons() != started {
		t.Errorf("the same cache started another daemon: %d, then %d", started, b.Daemons())
	}
	build(other)
	if b.Daemons() == started {
		t.Errorf("another cache was served by the daemon of the first (%d daemons started)", b.Daemons())
	}
}

// BenchmarkNixBegins: from a request handed to the Batcher to Nix beginning its
// derivation (Result.StartedAt), 20 trivial derivations one after another, on each
// connection in turn (interleaved, so both see the same load); p50/p99 per connection.
// Each request names its outputs, as a step's assignment does (otherwise a
// nix show-derivation process would be timed too). The cache the builds may
// substitute from is, per sub-benchmark: none; a file:// directory; an HTTP cache
// on loopback answering every narinfo at once with a 404 (what FC's cache answers for
// a step's outputs, which it does not hold) — so what Nix itself spends asking a
// substituter shows apart from the rest.
func BenchmarkNixBegins(b *testing.B) {
	fileCache := "file://" + b.TempDir()
	if err := os.WriteFile(strings.TrimPrefix(fileCache, "file://")+"/nix-cache-info", []byte("StoreDir: /nix/store\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	var narinfos atomic.Int64
	httpCache := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/nix-cache-info" {
			_, _ = io.WriteString(w, "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n")
			return
		}
		narinfos.Add(1)
		http.NotFound(w, r)
	}))
	b.Cleanup(httpCache.Close)
	for _, c := range []struct{ name, url string }{{"none", ""}, {"file", fileCache}, {"http", httpCache.URL}} {
		b.Run("cache="+c.name, func(b *testing.B) {
			narinfos.Store(0)
			benchNixBegins(b, c.url)
			if c.name == "http" {
				b.Logf("narinfo requests answered: %d", narinfos.Load())
			}
		})
	}
}

func benchNixBegins(b *testing.B, cache string) {
	const n = 20
	batchers := map[string]*Batcher{}
	for _, conn := range []string{ConnectionProcess, ConnectionDaemon} {
		bt := NewBatcher(BatcherConfig{MaxJobs: 1, Connection: conn, DaemonCacheDir: b.TempDir()})
		if bt.Connection() != conn {
			b.Fatalf("no %s connection", conn)
		}
		b.Cleanup(bt.Close)
		batchers[conn] = bt
	}
	lat := map[string][]time.Duration{}
	for range b.N {
		for i := range 2 * n {
			conn := []string{ConnectionProcess, ConnectionDaemon}[i%2]
			drv := benchDrv(b, fmt.Sprintf("%d-%d", time.Now().UnixNano(), i))
			outs, err := derivationOutputs(context.Background(), drv)
			if err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			res, err := batchers[conn].Realise(context.Background(), Request{DrvPath: drv, Outputs: outs[drv], CacheURL: cache, GCRootDir: b.TempDir()})
			if err != nil || res.Status != protocol.StepSucceeded || res.StartedAt.IsZero() {
				b.Fatalf("%s: %+v %v", conn, res, err)
			}
			lat[conn] = append(lat[conn], res.StartedAt.Sub(start))
		}
	}
	for _, conn := range []string{ConnectionProcess, ConnectionDaemon} {
		d := lat[conn]
		slices.Sort(d)
		p50, p99 := d[len(d)/2], d[min(len(d)-1, len(d)*99/100)]
		b.ReportMetric(float64(p50.Microseconds())/1000, conn+"-p50-ms")
		b.ReportMetric(float64(p99.Microseconds())/1000, conn+"-p99-ms")
		b.Logf("%s: request → Nix begins p50 %v, p99 %v (%d builds)", conn, p50.Round(time.Millisecond), p99.Round(time.Millisecond), len(d))
	}
	load, _ := os.ReadFile("/proc/loadavg")
	b.Logf("load average: %s", strings.Join(strings.Fields(string(load))[:3], " "))
}

// benchDrv instantiates a trivial derivation named by tag.
func benchDrv(b *testing.B, tag string) string {
	b.Helper()
	expr := fmt.Sprintf(`derivation { name = "fc-begins-%s"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }`, tag)
	out, err := exec.Command("nix-instantiate", "--option", "substituters", "", "-E", expr).Output()
	if err != nil {
		b.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}
