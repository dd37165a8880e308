package nixworker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/derivation"
	"github.com/nix-community/go-nix/pkg/wire"
	"golang.org/x/sys/unix"
)

// instantiate writes a /bin/sh derivation running script and returns its .drv path.
func instantiate(t *testing.T, script string) string {
	t.Helper()
	return instantiateIn(t, "", script)
}

// instantiateIn is instantiate into the chroot store at root ("": the system's
// store); the system's store then has no such .drv.
func instantiateIn(t *testing.T, root, script string) string {
	t.Helper()
	if _, err := exec.LookPath("nix-daemon"); err != nil {
		t.Fatal("nix-daemon not found (nix-bin has it)")
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	expr := fmt.Sprintf(`derivation { name = "fc-nixworker-%s"; system = builtins.currentSystem;
  builder = "/bin/sh"; args = [ "-c" ''export PATH=/bin:/usr/bin; %s'' ]; }`, hex.EncodeToString(b), script)
	file := filepath.Join(t.TempDir(), "drv.nix")
	if err := os.WriteFile(file, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--option", "substituters", ""}
	if root != "" {
		args = append(args, "--store", root)
	}
	out, err := exec.Command("nix-instantiate", append(args, file)...).Output()
	if err != nil {
		t.Fatalf("nix-instantiate: %v", err)
	}
	return strings.TrimSpace(string(out))
}

var ansi = regexp.MustCompile("\x1b\\[[0-9;]*[A-Za-z]")

func plain(s string) string { return ansi.ReplaceAllString(s, "") }

// recorder is a Logger keeping what it is told.
type recorder struct {
	mu    sync.Mutex
	msgs  []string
	lines []string
	acts  map[uint64]uint64 // activity → type
}

func (r *recorder) Message(text string) { r.mu.Lock(); r.msgs = append(r.msgs, text); r.mu.Unlock() }
func (r *recorder) StartActivity(id, _, typ uint64, _ string, _ []any, _ uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.acts == nil {
		r.acts = map[uint64]uint64{}
	}
	r.acts[id] = typ
}
func (r *recorder) StopActivity(uint64) {}
func (r *recorder) Result(id, typ uint64, fields []any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if typ == 101 && len(fields) == 1 && r.acts[id] == 105 {
		r.lines = append(r.lines, fields[0].(string))
	}
}

func start(t *testing.T) *Process {
	t.Helper()
	if _, err := exec.LookPath("nix-daemon"); err != nil {
		t.Fatal("nix-daemon not found (nix-bin has it)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := Start(ctx, nil, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Stop(time.Second) })
	return p
}

func opts(extra ...[2]string) Options {
	return Options{KeepGoing: true, MaxJobs: 1, Overrides: append([][2]string{{"substituters", ""}}, extra...)}
}

func TestConn_BuildsSuccessAndFailureWithTheirLogsAndReusesTheConnection(t *testing.T) {
	t.Parallel()
	p := start(t)
	if p.Conn.DaemonVersion&0xff < MinDaemonMinor || p.Conn.NixVersion == "" {
		t.Fatalf("daemon %#x %q", p.Conn.DaemonVersion, p.Conn.NixVersion)
	}
	ok := instantiate(t, `echo hello from the builder; echo done > $out`)
	bad := instantiate(t, `echo about to fail; exit 3`)
	rec := &recorder{}
	if err := p.Conn.SetOptions(opts(), rec); err != nil {
		t.Fatal(err)
	}
	res, err := p.Conn.BuildPaths([]string{ok + "!out", bad + "!out"}, rec)
	if err != nil {
		t.Fatal(err)
	}
	// Results come in Nix's order, each naming its path.
	by := map[string]BuildResult{}
	for _, r := range res {
		by[r.Path] = r
	}
	if len(res) != 2 || by[ok+"!out"].Status != Built || by[bad+"!out"].Status != PermanentFailure ||
		!strings.Contains(plain(by[bad+"!out"].ErrorMsg), "failed with exit code 3") || by[ok+"!out"].StartTime.IsZero() {
		t.Fatalf("results %+v", res)
	}
	if got := strings.Join(rec.lines, "|"); !strings.Contains(got, "hello from the builder") || !strings.Contains(got, "about to fail") {
		t.Errorf("build lines %q", got)
	}
	// The same connection answers more operations: the output is valid, with its info.
	valid, err := p.Conn.QueryValidPaths([]string{"/nix/store/00000000000000000000000000000000-absent"})
	if err != nil || len(valid) != 0 {
		t.Fatalf("valid %v, %v", valid, err)
	}
	info, err := p.Conn.QueryPathInfo(ok)
	if err != nil || info == nil || info.NarSize == 0 || len(info.NarHash) != 64 {
		t.Fatalf("path info of the derivation: %+v, %v", info, err)
	}
	absent, err := p.Conn.QueryPathInfo("/nix/store/00000000000000000000000000000000-absent")
	if err != nil || absent != nil {
		t.Fatalf("absent path: %+v, %v", absent, err)
	}
	// The daemon's own errors are DaemonErrors.
	var de *DaemonError
	if _, err := p.Conn.QueryPathInfo("/not/a/store/path"); !errors.As(err, &de) || !strings.Contains(err.Error(), "not in the Nix store") {
		t.Fatalf("bad path: %v", err)
	}
}

// basicOutsideTheStore instantiates script in a throwaway store and returns the
// .drv path, which the system's store does not have, and its BasicDerivation.
func basicOutsideTheStore(t *testing.T, script string) (string, BasicDerivation) {
	t.Helper()
	root := t.TempDir()
	drvPath := instantiateIn(t, root, script)
	f, err := os.Open(filepath.Join(root, drvPath))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := derivation.ReadDerivation(f)
	if err != nil {
		t.Fatalf("read %s: %v", drvPath, err)
	}
	return drvPath, BasicFromDerivation(d, nil)
}

func TestConn_BuildDerivationBuildsWithoutTheDrvFile(t *testing.T) {
	t.Parallel()
	p := start(t)
	ok, okDrv := basicOutsideTheStore(t, `echo hello from basic; echo built > $out`)
	bad, badDrv := basicOutsideTheStore(t, `echo about to fail; exit 1`)
	if len(okDrv.Outputs) != 1 || okDrv.Outputs[0].Name != "out" || okDrv.Outputs[0].HashAlgo != "" ||
		okDrv.Builder != "/bin/sh" || len(okDrv.InputSrcs) != 0 {
		t.Fatalf("basic derivation %+v", okDrv)
	}
	out := okDrv.Outputs[0].Path
	valid, err := p.Conn.QueryValidPaths([]string{ok, bad, out})
	if err != nil || len(valid) != 0 {
		t.Fatalf("valid before the builds: %v, %v", valid, err)
	}
	rec := &recorder{}
	if err := p.Conn.SetOptions(opts(), rec); err != nil {
		t.Fatal(err)
	}
	res, err := p.Conn.BuildDerivation(ok, okDrv, rec)
	if err != nil || res.Status != Built || res.Path != ok+"!out" || res.ErrorMsg != "" || res.TimesBuilt != 1 || res.StartTime.IsZero() {
		t.Fatalf("build: %+v, %v", res, err)
	}
	if got := strings.Join(rec.lines, "|"); !strings.Contains(got, "hello from basic") {
		t.Errorf("build lines %q", got)
	}
	// The output is valid, derived from the .drv path sent, which is still not.
	info, err := p.Conn.QueryPathInfo(out)
	if err != nil || info == nil || info.Deriver != ok {
		t.Fatalf("path info of the output: %+v, %v", info, err)
	}
	if b, err := os.ReadFile(out); err != nil || string(b) != "built\n" {
		t.Errorf("output %q, %v", b, err)
	}
	// A failing builder is a result, and the connection goes on.
	res, err = p.Conn.BuildDerivation(bad, badDrv, rec)
	if err != nil || res.Status != PermanentFailure || !strings.Contains(plain(res.ErrorMsg), "failed with exit code 1") {
		t.Fatalf("failing build: %+v, %v", res, err)
	}
	valid, err = p.Conn.QueryValidPaths([]string{ok, bad, out, badDrv.Outputs[0].Path})
	if err != nil || len(valid) != 1 || !valid[out] {
		t.Fatalf("valid after the builds: %v, %v", valid, err)
	}
}

func TestBasicFromDerivation_SortsAndMergesTheInputs(t *testing.T) {
	t.Parallel()
	d := &derivation.Derivation{
		Outputs: map[string]*derivation.Output{
			"out": {Path: "/nix/store/b-x"}, "dev": {Path: "/nix/store/a-x-dev"},
		},
		InputSources:     []string{"/nix/store/s-src", "/nix/store/c-src"},
		InputDerivations: map[string][]string{"/nix/store/d-dep.drv": {"out"}},
		Platform:         "x86_64-linux",
		Builder:          "/bin/sh",
		Arguments:        []string{"-c", "true"},
		Env:              map[string]string{"out": "/nix/store/b-x", "dev": "/nix/store/a-x-dev", "name": "x"},
	}
	b := BasicFromDerivation(d, []string{"/nix/store/e-dep", "/nix/store/c-src"})
	want := BasicDerivation{
		Outputs: []DerivationOutput{
			{Name: "dev", Path: "/nix/store/a-x-dev"}, {Name: "out", Path: "/nix/store/b-x"},
		},
		InputSrcs: []string{"/nix/store/c-src", "/nix/store/e-dep", "/nix/store/s-src"},
		Platform:  "x86_64-linux",
		Builder:   "/bin/sh",
		Args:      []string{"-c", "true"},
		Env:       [][2]string{{"dev", "/nix/store/a-x-dev"}, {"name", "x"}, {"out", "/nix/store/b-x"}},
	}
	if !reflect.DeepEqual(b, want) {
		t.Fatalf("got  %+v\nwant %+v", b, want)
	}
	// Strings as Nix writes them into a .drv, escapes and all, come out as Nix reads them.
	aterm := `Derive([("out","/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-x","","")],[],[],"x86_64-linux","/bin/sh",["-c","echo \"a\\tb\"\nexit 0\n"],` +
		`[("name","x"),("out","/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-x"),("script","line\none")])`
	d, err := derivation.ReadDerivation(strings.NewReader(aterm))
	if err != nil {
		t.Fatal(err)
	}
	b = BasicFromDerivation(d, nil)
	if got, want := b.Args[1], "echo \"a\\tb\"\nexit 0\n"; got != want {
		t.Errorf("script %q, want %q", got, want)
	}
	if got := b.Env[2]; got != [2]string{"script", "line\none"} {
		t.Errorf("env %q", got)
	}
}

func TestConn_TimeoutAndMaxSilentAreTimedOut(t *testing.T) {
	t.Parallel()
	p := start(t)
	drv := instantiate(t, `echo started; sleep 30`)
	o := opts()
	o.MaxSilent = time.Second
	if err := p.Conn.SetOptions(o, nil); err != nil {
		t.Fatal(err)
	}
	res, err := p.Conn.BuildPaths([]string{drv + "!out"}, nil)
	if err != nil || res[0].Status != TimedOut || !strings.Contains(plain(res[0].ErrorMsg), "of silence") {
		t.Fatalf("max-silent: %+v, %v", res, err)
	}
	drv = instantiate(t, `echo started; sleep 30`)
	if err := p.Conn.SetOptions(opts([2]string{"timeout", "1"}), nil); err != nil {
		t.Fatal(err)
	}
	res, err = p.Conn.BuildPaths([]string{drv + "!out"}, nil)
	if err != nil || res[0].Status != TimedOut || !strings.Contains(plain(res[0].ErrorMsg), "timed out after 1 seconds") {
		t.Fatalf("timeout: %+v, %v", res, err)
	}
}

func TestConn_DaemonKilledMidBuildIsAProtocolError(t *testing.T) {
	t.Parallel()
	p := start(t)
	drv := instantiate(t, `echo started; sleep 300`)
	if err := p.Conn.SetOptions(opts(), nil); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(500 * time.Millisecond)
		p.Stop(0)
	}()
	_, err := p.Conn.BuildPaths([]string{drv + "!out"}, nil)
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("err %v, want ErrProtocol", err)
	}
	if _, err := p.Conn.QueryValidPaths([]string{drv}); !errors.Is(err, ErrProtocol) {
		t.Fatalf("a broken connection answered: %v", err)
	}
}

func TestDial_RefusesWhatIsNotANewEnoughDaemon(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		reply []uint64
		want  string
	}{
		{"not a daemon", []uint64{0x1234}, "not a Nix daemon"},
		{"too old", []uint64{magic2, 1<<8 | 21}, "need 1.34"},
		{"silent", nil, "EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var in bytes.Buffer
			for _, n := range tc.reply {
				_ = wire.WriteUint64(&in, n)
			}
			_, err := Dial(&fakeRW{r: &in})
			if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}

type fakeRW struct {
	r *bytes.Buffer
	w bytes.Buffer
}

func (f *fakeRW) Read(p []byte) (int, error)  { return f.r.Read(p) }
func (f *fakeRW) Write(p []byte) (int, error) { return f.w.Write(p) }

func TestStart_MissingCommandFails(t *testing.T) {
	t.Parallel()
	_, err := Start(context.Background(), []string{"/nonexistent/nix-daemon"}, t.TempDir())
	if err == nil {
		t.Fatal("started a missing command")
	}
	_, err = Start(context.Background(), []string{"/bin/sh", "-c", "echo cannot open the store >&2; exit 1"}, t.TempDir())
	if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "cannot open the store") {
		t.Fatalf("err %v", err)
	}
}

func TestPool_KeepsSizeDaemonsAndReplacesDiscardedOnes(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("nix-daemon"); err != nil {
		t.Fatal("nix-daemon not found (nix-bin has it)")
	}
	p := NewPool(PoolConfig{Size: 2, CacheParent: t.TempDir(), StopGrace: time.Second})
	defer p.Close()
	if _, err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Taking and giving back healthy daemons starts none.
	for range 5 {
		proc, err := p.Get(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		p.Put(proc)
	}
	if n := p.Started(); n != 1 {
		t.Errorf("%d daemons started for one at a time", n)
	}
	a, err := p.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Get(context.Background()) // none idle: started now
	if err != nil || a == b {
		t.Fatalf("second daemon: %v", err)
	}
	p.Discard(a)
	<-a.Exited()
	p.Put(b)
	// The replacement of a and b are the two kept.
	c, _ := p.Get(context.Background())
	d, err := p.Get(context.Background())
	if err != nil || c == a || d == a {
		t.Fatalf("got a discarded daemon back: %v", err)
	}
	p.Put(c)
	p.Put(d)
	// 3: one replacement; 4 if d was taken before the replacement was ready (the
	// pool then keeps two of them, stopping the extra one).
	if n := p.Started(); n < 3 || n > 4 {
		t.Errorf("%d daemons started, want 3 or 4", n)
	}
	p.mu.Lock()
	idle := len(p.idle) + p.starting
	p.mu.Unlock()
	if idle > 2 {
		t.Errorf("%d daemons kept, size 2", idle)
	}
}

// The pipe the daemon writes a chatty build's log to is large, where Linux gives one
// without privileges (up to /proc/sys/fs/pipe-max-size).
func TestStart_DaemonPipeIsLarge(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("/proc/sys/fs/pipe-max-size")
	if err != nil {
		t.Fatal(err)
	}
	limit, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	p := start(t)
	sc, err := p.stdout.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var size int
	var getErr error
	if err := sc.Control(func(fd uintptr) { size, getErr = unix.FcntlInt(fd, unix.F_GETPIPE_SZ, 0) }); err != nil || getErr != nil {
		t.Fatal(err, getErr)
	}
	if want := min(daemonPipe, limit); size < want {
		t.Errorf("the daemon's pipe holds %d bytes, want %d", size, want)
	}
}
