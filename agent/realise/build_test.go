package realise

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fc-ci/fc/protocol"
)

// salt makes every derivation of a run unique, so nothing passes because an old
// output was lying in the shared store.
func salt(t *testing.T) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := regexp.MustCompile(`[^a-zA-Z0-9]+`).ReplaceAllString(t.Name(), "-")
	return strings.ToLower(name) + "-" + hex.EncodeToString(b)
}

// instantiate writes a derivation whose builder runs script with /bin/sh and returns
// its .drv path. extra is more attributes of the derivation.
func instantiate(t *testing.T, script, extra string) string {
	t.Helper()
	if _, err := exec.LookPath("nix-instantiate"); err != nil {
		t.Skip("nix-instantiate not found")
	}
	s := salt(t)
	expr := fmt.Sprintf(`derivation {
  name = "fc-build-%s";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" ''
    export PATH=/bin:/usr/bin
    %s
  '' ];
  %s
}
`, s, script, extra)
	file := filepath.Join(t.TempDir(), "drv.nix")
	if err := os.WriteFile(file, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nix-instantiate", "--option", "substituters", "", file).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("nix-instantiate: %v: %s", err, ee.Stderr)
		}
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// emptyCache is a local binary cache holding nothing: a substituter that answers
// "not here" at once, without a network.
func emptyCache(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nix-cache-info"), []byte("StoreDir: /nix/store\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return "file://" + dir
}

// logBuffer collects the build log and wakes waiters on every write.
type logBuffer struct {
	mu   sync.Mutex
	b    bytes.Buffer
	wake chan struct{}
}

func newLogBuffer() *logBuffer { return &logBuffer{wake: make(chan struct{}, 1)} }

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitMatch waits until the log matches re, returning the submatches.
func (l *logBuffer) waitMatch(t *testing.T, re *regexp.Regexp, within time.Duration) []string {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		if m := re.FindStringSubmatch(l.String()); m != nil {
			return m
		}
		select {
		case <-l.wake:
		case <-deadline.C:
			t.Fatalf("log never matched %s; log:\n%s", re, l.String())
		}
	}
}

// waitAnyContains waits until one of logs contains s; a write to any of them wakes it.
func waitAnyContains(t *testing.T, within time.Duration, s string, logs ...*logBuffer) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	wakes := []reflect.SelectCase{{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(deadline.C)}}
	for _, l := range logs {
		wakes = append(wakes, reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(l.wake)})
	}
	for {
		for _, l := range logs {
			if strings.Contains(l.String(), s) {
				return
			}
		}
		if chosen, _, _ := reflect.Select(wakes); chosen == 0 {
			t.Fatalf("no log contains %q after %v", s, within)
		}
	}
}

func request(t *testing.T, drv string, log *logBuffer) Request {
	state := t.TempDir()
	return Request{DrvPath: drv, CacheURL: emptyCache(t), GCRootDir: filepath.Join(state, "gcroots", "1"),
		CacheHome: filepath.Join(state, "xdg-cache"), Log: log}
}

// realiseFunc is Realise's contract, for the tests each way of reaching Nix passes.
type realiseFunc func(context.Context, Request) (Result, error)

// eachConnection runs f for the process path (Realise: a nix-store process) and for
// the daemon path (a Batcher on nix-daemon --stdio connections).
func eachConnection(t *testing.T, f func(t *testing.T, rf realiseFunc)) {
	t.Helper()
	t.Run("process", func(t *testing.T) {
		t.Parallel()
		f(t, Realise)
	})
	t.Run("daemon", func(t *testing.T) {
		t.Parallel()
		f(t, daemonBatcher(t, 1).Realise)
	})
}

// daemonBatcher is a Batcher on daemon connections, closed when t ends.
func daemonBatcher(t *testing.T, maxJobs int) *Batcher {
	t.Helper()
	if _, err := exec.LookPath("nix-daemon"); err != nil {
		t.Skip("nix-daemon not found")
	}
	b := NewBatcher(BatcherConfig{MaxJobs: maxJobs, Connection: ConnectionDaemon, DaemonCacheDir: t.TempDir()})
	if b.Connection() != ConnectionDaemon {
		t.Fatal("the batcher fell back to processes: no nix daemon connection")
	}
	t.Cleanup(b.Close)
	return b
}

func realise(t *testing.T, rf realiseFunc, req Request) Result {
	t.Helper()
	res, err := rf(context.Background(), req)
	if err != nil {
		t.Fatalf("Realise: %v\nlog:\n%s", err, req.Log)
	}
	return res
}

func TestRealise_SuccessReadsProductsMetricsAndReleaseName(t *testing.T) {
	t.Parallel()
	eachConnection(t, func(t *testing.T, rf realiseFunc) {
		log := newLogBuffer()
		drv := instantiate(t, `
    echo "building the thing"
    mkdir -p $out/nix-support "$out/share/my doc"
    printf 'hello product' > $out/share/report.txt
    echo '<html/>' > "$out/share/my doc/index.html"
    cat > $out/nix-support/hydra-build-products <<EOF
file report $out/share/report.txt
doc manual "$out/share/my doc" index.html
file secrets /etc/passwd
file missing $out/share/absent
not a product line at all
EOF
    printf 'runtime 12.5 s\nsize 3\nbroken notanumber\n' > $out/nix-support/hydra-metrics
    echo "thing-1.0" > $out/nix-support/hydra-release-name`, "")
		req := request(t, drv, log)
		res := realise(t, rf, req)
		if res.Status != protocol.StepSucceeded || res.ExitCode != 0 || res.Error != "" {
			t.Fatalf("result %+v", res)
		}
		if !strings.Contains(log.String(), "building the thing\n") {
			t.Errorf("log lacks the builder's line:\n%s", log)
		}
		if res.LogSize != int64(len(log.String())) {
			t.Errorf("LogSize %d, log has %d bytes", res.LogSize, len(log.String()))
		}
		out := res.OutputPaths["out"]
		if len(res.OutputPaths) != 1 || !strings.HasPrefix(out, StoreDir+"/") {
			t.Fatalf("output paths %v", res.OutputPaths)
		}
		if len(res.Outputs) != 1 || res.Outputs[0].StorePath != out || res.Outputs[0].NarSize <= 0 ||
			res.Outputs[0].Deriver != drv || !strings.HasPrefix(res.Outputs[0].NarHash, "sha256:") {
			t.Errorf("outputs %+v", res.Outputs)
		}
		if res.OutputSize != res.Outputs[0].NarSize {
			t.Errorf("output size %d, NAR size %d", res.OutputSize, res.Outputs[0].NarSize)
		}
		sum := sha256.Sum256([]byte("hello product"))
		want := []protocol.BuildProduct{
			{Type: "file", Subtype: "report", Path: out + "/share/report.txt", Name: "report.txt", FileSize: 13, SHA256: hex.EncodeToString(sum[:])},
			{Type: "doc", Subtype: "manual", Path: out + "/share/my doc", Name: "my doc", DefaultPath: "index.html"},
		}
		if !slices.Equal(res.Products, want) {
			t.Errorf("products\n got  %+v\n want %+v", res.Products, want)
		}
		wantMetrics := []protocol.BuildMetric{{Name: "runtime", Value: 12.5, Unit: "s"}, {Name: "size", Value: 3}}
		if !slices.Equal(res.Metrics, wantMetrics) {
			t.Errorf("metrics %+v, want %+v", res.Metrics, wantMetrics)
		}
		if res.ReleaseName != "thing-1.0" {
			t.Errorf("release name %q", res.ReleaseName)
		}
		// The output is held by a GC root until the caller removes the directory.
		roots, _ := filepath.Glob(filepath.Join(req.GCRootDir, "*"))
		if len(roots) != 1 {
			t.Fatalf("GC roots %v", roots)
		}
		if target, err := os.Readlink(roots[0]); err != nil || target != out {
			t.Errorf("GC root %s -> %q (%v), want %s", roots[0], target, err, out)
		}
	})
}

func TestRealise_BuilderFailureIsFailedWithTheBuildersLines(t *testing.T) {
	t.Parallel()
	eachConnection(t, func(t *testing.T, rf realiseFunc) {
		log := newLogBuffer()
		drv := instantiate(t, `echo "about to fail"; echo "to stderr" >&2; exit 2`, "")
		res := realise(t, rf, request(t, drv, log))
		if res.Status != protocol.StepFailed || res.ExitCode != 100 {
			t.Fatalf("result %+v", res)
		}
		for _, want := range []string{"about to fail\n", "to stderr\n", "failed with exit code 2\n"} {
			if !strings.Contains(log.String(), want) {
				t.Errorf("log lacks %q:\n%s", want, log)
			}
		}
		if strings.Contains(log.String(), "@nix") || strings.Contains(log.String(), "\x1b[") {
			t.Errorf("log has raw records or colours:\n%q", log)
		}
		if !strings.Contains(res.Error, "builder for '"+drv+"' failed with exit code 2") {
			t.Errorf("error %q", res.Error)
		}
		if res.Outputs != nil || res.Products != nil {
			t.Errorf("a failure has no outputs: %+v", res)
		}
	})
}

func TestRealise_TimeoutAndMaxSilentAreTimedOut(t *testing.T) {
	t.Parallel()
	eachConnection(t, func(t *testing.T, rf realiseFunc) {
		for _, tc := range []struct {
			name string
			set  func(*Request)
			want string
		}{
			{"timeout", func(r *Request) { r.Timeout = time.Second }, "timed out after 1 seconds"},
			{"max-silent", func(r *Request) { r.MaxSilent = time.Second }, "timed out after 1 seconds of silence"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				log := newLogBuffer()
				drv := instantiate(t, `echo started; sleep 30; echo ok > $out`, "")
				req := request(t, drv, log)
				tc.set(&req)
				start := time.Now()
				res := realise(t, rf, req)
				if res.Status != protocol.StepTimedOut || res.ExitCode != 101 || !strings.Contains(res.Error, tc.want) {
					t.Fatalf("result %+v", res)
				}
				if took := time.Since(start); took > 20*time.Second {
					t.Errorf("took %v", took)
				}
				if !strings.Contains(log.String(), "started\n") || !strings.Contains(log.String(), tc.want) {
					t.Errorf("log:\n%s", log)
				}
			})
		}
	})
}

func TestRealise_FailedMarkerGivesFailedWithOutput(t *testing.T) {
	t.Parallel()
	eachConnection(t, func(t *testing.T, rf realiseFunc) {
		log := newLogBuffer()
		drv := instantiate(t, `
    mkdir -p $out/nix-support
    echo "test report" > $out/report
    echo "file report $out/report" > $out/nix-support/hydra-build-products
    touch $out/nix-support/failed`, "")
		res := realise(t, rf, request(t, drv, log))
		if res.Status != protocol.StepFailedWithOutput || res.ExitCode != 0 {
			t.Fatalf("result %+v", res)
		}
		if len(res.Outputs) != 1 || len(res.Products) != 1 {
			t.Errorf("a failure with output keeps its outputs and products: %+v", res)
		}
	})
}

func TestRealise_LogLimitCutsTheLogExactlyAndStopsTheBuild(t *testing.T) {
	t.Parallel()
	eachConnection(t, func(t *testing.T, rf realiseFunc) {
		log := newLogBuffer()
		drv := instantiate(t, `
    i=0
    while [ $i -lt 5000 ]; do echo "line $i of a chatty build"; i=$((i+1)); done
    sleep 300
    echo ok > $out`, "")
		req := request(t, drv, log)
		req.MaxLogSize = 1000
		start := time.Now()
		res := realise(t, rf, req)
		if res.Status != protocol.StepLogLimitExceeded || res.LogSize != 1000 {
			t.Fatalf("result %+v", res)
		}
		if got := len(log.String()); got != 1000 {
			t.Errorf("log is %d bytes, want exactly 1000", got)
		}
		if !strings.HasPrefix(log.String(), "line 0 of a chatty build\n") {
			t.Errorf("log starts %q", log.String()[:40])
		}
		if took := time.Since(start); took > 30*time.Second {
			t.Errorf("the build was not stopped at the limit: took %v", took)
		}
	})
}

func TestRealise_OutputLimitExceeded(t *testing.T) {
	t.Parallel()
	eachConnection(t, func(t *testing.T, rf realiseFunc) {
		drv := instantiate(t, `head -c 100000 /dev/zero > $out`, "")
		req := request(t, drv, newLogBuffer())
		req.MaxOutputSize = 1000
		res := realise(t, rf, req)
		if res.Status != protocol.StepOutputLimitExceeded || res.OutputSize <= 100000 || res.Outputs != nil {
			t.Fatalf("result %+v", res)
		}
		if !strings.Contains(res.Error, strconv.FormatInt(res.OutputSize, 10)) {
			t.Errorf("error %q does not give the size", res.Error)
		}
	})
}

func TestRealise_MultipleOutputs(t *testing.T) {
	t.Parallel()
	eachConnection(t, func(t *testing.T, rf realiseFunc) {
		drv := instantiate(t, `echo lib > $out; mkdir -p $dev/include; echo h > $dev/include/x.h`, `outputs = [ "out" "dev" ];`)
		req := request(t, drv, newLogBuffer())
		res := realise(t, rf, req)
		if res.Status != protocol.StepSucceeded || len(res.OutputPaths) != 2 || len(res.Outputs) != 2 {
			t.Fatalf("result %+v", res)
		}
		got := []string{res.Outputs[0].StorePath, res.Outputs[1].StorePath}
		want := []string{res.OutputPaths["out"], res.OutputPaths["dev"]}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) || !strings.HasSuffix(res.OutputPaths["dev"], "-dev") {
			t.Errorf("outputs %v, output paths %v", got, res.OutputPaths)
		}
		var targets []string
		roots, _ := filepath.Glob(filepath.Join(req.GCRootDir, "*"))
		for _, r := range roots {
			target, _ := os.Readlink(r)
			targets = append(targets, target)
		}
		slices.Sort(targets)
		if !slices.Equal(targets, want) {
			t.Errorf("GC roots point at %v, want %v", targets, want)
		}

		// The outputs the step names are used as given.
		req = request(t, drv, newLogBuffer())
		req.Outputs = res.OutputPaths
		again := realise(t, rf, req)
		if again.Status != protocol.StepSucceeded || len(again.Outputs) != 2 {
			t.Errorf("with outputs given: %+v", again)
		}
	})
}

// alive says whether a process exists and is not a zombie waiting to be reaped.
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(stat)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && len(s) > i+2 {
		return s[i+2] != 'Z'
	}
	return syscall.Kill(pid, 0) == nil
}

// waitGone waits until process pid has ended (a zombie counts: reaping an orphan is up
// to init) and reports whether it did within the time given. The processes waited for
// are not this test's children, so there is no wait(2): a pidfd becomes readable when
// its process ends, which is the event itself, not a poll of /proc.
func waitGone(t *testing.T, pid int, within time.Duration) bool {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return true // ended and reaped already
	}
	if err != nil {
		t.Fatalf("pidfd_open %d: %v", pid, err)
	}
	defer unix.Close(fd)
	deadline := time.Now().Add(within)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return !alive(pid)
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("poll the pidfd of %d: %v", pid, err)
		}
		if n > 0 {
			return true
		}
	}
}

func TestRealise_CancelStopsTheBuilderAndItsChildren(t *testing.T) {
	t.Parallel()
	eachConnection(t, func(t *testing.T, rf realiseFunc) {
		log := newLogBuffer()
		drv := instantiate(t, `echo "builder=$$"; sleep 300 & echo "sleeper=$!"; wait; echo ok > $out`, "")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan error, 1)
		go func() {
			_, err := rf(ctx, request(t, drv, log))
			done <- err
		}()
		m := log.waitMatch(t, regexp.MustCompile(`builder=(\d+)\nsleeper=(\d+)\n`), time.Minute)
		var pids []int
		for _, s := range m[1:] {
			pid, _ := strconv.Atoi(s)
			if !alive(pid) {
				t.Fatalf("process %d is not running before the cancel", pid)
			}
			pids = append(pids, pid)
		}
		start := time.Now()
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Realise after cancel: %v, want context.Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Realise did not return within 5 s of the cancel")
		}
		t.Logf("Realise returned %v after the cancel", time.Since(start).Round(time.Millisecond))
		// The builder is gone once Realise returns; its orphaned child is killed with it,
		// though reaping it is up to init.
		for _, pid := range pids {
			if !waitGone(t, pid, 5*time.Second) {
				t.Errorf("process %d still runs after the cancel", pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
}

// TestHelperRealise is not a test: TestRealise_KilledAgentTakesItsBuildWithIt runs
// the test binary as a stand-in agent that realises one derivation.
func TestHelperRealise(t *testing.T) {
	drv := os.Getenv("FC_TEST_REALISE_DRV")
	if drv == "" {
		t.Skip("helper process only")
	}
	_, err := Realise(context.Background(), Request{DrvPath: drv, CacheURL: os.Getenv("FC_TEST_REALISE_CACHE"), Log: os.Stdout})
	t.Fatalf("Realise returned: %v", err)
}

func TestRealise_KilledAgentTakesItsBuildWithIt(t *testing.T) {
	t.Parallel()
	drv := instantiate(t, `echo "builder=$$"; sleep 300 & echo "sleeper=$!"; wait; echo ok > $out`, "")
	log := newLogBuffer()
	agent := exec.Command(os.Args[0], "-test.run=^TestHelperRealise$", "-test.v")
	agent.Env = append(os.Environ(), "FC_TEST_REALISE_DRV="+drv, "FC_TEST_REALISE_CACHE="+emptyCache(t))
	agent.Stdout = log
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = agent.Process.Kill(); _ = agent.Wait() })
	m := log.waitMatch(t, regexp.MustCompile(`builder=(\d+)\nsleeper=(\d+)\n`), time.Minute)
	if err := agent.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = agent.Wait()
	for _, s := range m[1:] {
		pid, _ := strconv.Atoi(s)
		if !waitGone(t, pid, 10*time.Second) {
			t.Errorf("process %d outlived the agent that was killed", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func TestRealise_InfrastructureFailures(t *testing.T) {
	t.Parallel()
	eachConnection(t, func(t *testing.T, rf realiseFunc) {
		t.Run("missing feature", func(t *testing.T) {
			t.Parallel()
			drv := instantiate(t, `echo ok > $out`, `requiredSystemFeatures = [ "fc-test-absent-feature" ];`)
			req := request(t, drv, newLogBuffer())
			req.Features = []string{"big-parallel"}
			res, err := rf(context.Background(), req)
			if !errors.Is(err, ErrInfrastructure) || res.Status != "" || res.ExitCode != 1 {
				t.Fatalf("result %+v, err %v", res, err)
			}
			if !strings.Contains(err.Error(), "fc-test-absent-feature") {
				t.Errorf("error does not say why: %v", err)
			}
		})
		t.Run("unknown derivation", func(t *testing.T) {
			t.Parallel()
			req := request(t, "/nix/store/00000000000000000000000000000000-fc-absent.drv", newLogBuffer())
			if _, err := rf(context.Background(), req); !errors.Is(err, ErrInfrastructure) {
				t.Fatalf("err %v", err)
			}
		})
		t.Run("deadline of the caller", func(t *testing.T) {
			t.Parallel()
			drv := instantiate(t, `sleep 300`, "")
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, err := rf(ctx, request(t, drv, newLogBuffer()))
			if !errors.Is(err, ErrInfrastructure) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("err %v", err)
			}
		})
	})
}

func TestArgs_PassOnlyTheGivenSubstitutersKeysAndLimits(t *testing.T) {
	args := strings.Join(Args(2, Request{DrvPath: "/nix/store/x.drv", CacheURL: "http://c/nix-cache",
		Substituters: []string{"https://up"}, TrustedKeys: []string{"c-1:k", "up-1:k"}, Features: []string{"kvm", "big-parallel"},
		Timeout: 90 * time.Second, MaxSilent: 30 * time.Second, GCRootDir: "/s/gcroots/7", NetrcFile: "/s/cache.netrc"},
		Request{DrvPath: "/nix/store/y.drv"}), "|")
	for _, want := range []string{
		"--log-format|internal-json|--realise|/nix/store/x.drv|/nix/store/y.drv|",
		"--max-jobs|2", "--keep-going",
		"--option|substituters|http://c/nix-cache https://up",
		"--option|trusted-public-keys|c-1:k up-1:k",
		"--option|narinfo-cache-negative-ttl|0",
		"--option|system-features|kvm big-parallel",
		"--timeout|90", "--option|max-silent-time|30",
		"--option|netrc-file|/s/cache.netrc",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("args %q lack %q", args, want)
		}
	}
	args = strings.Join(Args(1, Request{DrvPath: "/nix/store/x.drv"}), "|")
	if !strings.Contains(args, "--option|substituters||") {
		t.Errorf("without a cache the substituters must still be set (to nothing): %q", args)
	}
	for _, absent := range []string{"--timeout", "max-silent-time", "system-features", "trusted-public-keys", "--add-root", "netrc-file"} {
		if strings.Contains(args, absent) {
			t.Errorf("args %q have %s without it being asked for", args, absent)
		}
	}
}

func TestParseLog_KeepsBuildLinesAndErrorsOnly(t *testing.T) {
	in := strings.Join([]string{
		`@nix {"action":"start","id":1,"level":3,"text":"building '/nix/store/x.drv'","type":105,"fields":["/nix/store/x.drv","",1,1]}`,
		`@nix {"action":"result","fields":[1,1,0,0],"id":2,"type":105}`,
		`@nix {"action":"result","fields":["hello \u001b[1mworld"],"id":1,"type":101}`,
		`@nix {"action":"result","fields":["unpackPhase"],"id":1,"type":104}`,
		`@nix {"action":"msg","level":3,"msg":"this derivation will be built:"}`,
		`@nix {"action":"msg","level":1,"msg":"warning: something"}`,
		`plain line from somewhere`,
		`@nix {not json`,
		`@nix {"action":"msg","level":0,"msg":"\u001b[31;1merror:\u001b[0m builder for 'x' failed with exit code 1"}`,
		`@nix {"action":"result","fields":["post hook"],"id":3,"type":107}`,
		`no newline at the end`,
	}, "\n")
	var out bytes.Buffer
	j := &job{req: Request{DrvPath: "/nix/store/00000000000000000000000000000000-x.drv"}, lw: newLimitWriter(&out, 0)}
	general := newDemux([]*job{j}).parse(strings.NewReader(in))
	lw := j.lw
	want := "hello \x1b[1mworld\nplain line from somewhere\n@nix {not json\nerror: builder for 'x' failed with exit code 1\npost hook\nno newline at the end"
	if out.String() != want {
		t.Errorf("log\n got  %q\n want %q", out.String(), want)
	}
	if !slices.Equal(general, []string{"builder for 'x' failed with exit code 1"}) {
		t.Errorf("errors %q", general)
	}
	if lw.n != int64(len(want)) {
		t.Errorf("counted %d bytes", lw.n)
	}
}

func TestLimitWriter_CutsAtTheLimitAndStops(t *testing.T) {
	var out bytes.Buffer
	lw := newLimitWriter(&out, 10)
	lw.write([]byte("12345"))
	lw.write([]byte("67890"))
	select {
	case <-lw.stop:
		t.Fatal("a log exactly at the limit is not over it")
	default:
	}
	lw.write([]byte("x"))
	lw.write([]byte("more"))
	<-lw.stop
	if out.String() != "1234567890" || !lw.exceeded || lw.n != 10 {
		t.Errorf("log %q exceeded %v n %d", out.String(), lw.exceeded, lw.n)
	}
	out.Reset()
	lw = newLimitWriter(&out, 4)
	lw.write([]byte("abcdef\n"))
	if out.String() != "abcd" || !lw.exceeded {
		t.Errorf("log %q", out.String())
	}
}

func TestParseMetricAndProductLines(t *testing.T) {
	for line, want := range map[string]*protocol.BuildMetric{
		"time 1.5 s":          {Name: "time", Value: 1.5, Unit: "s"},
		"a.b-c_d 7":           {Name: "a.b-c_d", Value: 7},
		"x -2e3 ms extra":     {Name: "x", Value: -2000, Unit: "ms"},
		"onlyname":            nil,
		"x NaN":               nil,
		"x Inf":               nil,
		"bad/name 1":          nil,
		"value notanumber km": nil,
	} {
		got, ok := parseMetric(line)
		if (want == nil) == ok || (want != nil && got != *want) {
			t.Errorf("parseMetric(%q) = %+v, %v; want %+v", line, got, ok, want)
		}
	}
	for _, line := range []string{
		"file x relative/path",
		"file x /etc/passwd",
		"file x /nix/store/../../etc/passwd",
		"file x /nix/store",
		"bad type! x /nix/store/abc",
		"file x /nix/store/00000000000000000000000000000000-absent",
		`file x "/nix/store/unterminated`,
	} {
		if p, ok, err := parseProduct(line); ok || err != nil {
			t.Errorf("parseProduct(%q) = %+v, %v, %v; want it skipped", line, p, ok, err)
		}
	}
}
