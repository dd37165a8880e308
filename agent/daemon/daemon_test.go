package daemon

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fc-ci/fc/agent/identity"
	"github.com/fc-ci/fc/agent/session"
	"github.com/fc-ci/fc/protocol"
)

// lockedLog collects the daemon's log lines.
type lockedLog struct {
	mu      sync.Mutex
	b       strings.Builder
	changed chan struct{} // made by a waiter, closed by the next write
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
	return l.b.Write(p)
}

// waitLogged waits until s has been logged at least n times, failing the test at the
// deadline: every write wakes it, so it sees the line as soon as the daemon logs it.
func (l *lockedLog) waitLogged(t *testing.T, within time.Duration, s string, n int) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		got := strings.Count(l.b.String(), s)
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		changed := l.changed
		l.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %d lines with %q; log:\n%s", within, n, s, l)
		}
	}
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func closedPortURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return "http://" + addr
}

func unreachableDaemon(t *testing.T, log *lockedLog) *Daemon {
	t.Helper()
	id, err := identity.Generate(filepath.Join(t.TempDir(), "agent_key"), "")
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(log, nil))
	return New(Config{
		Session: session.Config{URL: closedPortURL(t), Identity: id, Name: "lonely", AgentVersion: "test", Logger: logger},
		Capabilities: func(context.Context) (protocol.Capabilities, error) {
			return protocol.Capabilities{Systems: []string{"x86_64-linux"}, MaxJobs: 1, SpeedFactor: 1, Roles: []string{protocol.RoleBuild}}, nil
		},
		MinBackoff: 10 * time.Millisecond,
		MaxBackoff: 40 * time.Millisecond,
		StoreDir:   t.TempDir(),
		Logger:     logger,
	})
}

// running is a daemon's Run in a goroutine; done closes when Run returns, then err holds its result.
type running struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func runDaemon(t *testing.T, d *Daemon) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{})}
	go func() { r.err = d.Run(ctx); close(r.done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
			t.Error("daemon still running 30 s after cancel")
		}
	})
	return r
}

func TestRun_UnreachableCoordinatorRetriesUntilCancelled(t *testing.T) {
	t.Parallel()
	log := &lockedLog{}
	d := unreachableDaemon(t, log)
	r := runDaemon(t, d)

	log.waitLogged(t, 30*time.Second, "cannot reach coordinator; retrying", 5)
	select {
	case <-r.done:
		t.Fatalf("daemon gave up on an unreachable coordinator: %v\n%s", r.err, log)
	default:
	}
	if !strings.Contains(log.String(), "connection refused") {
		t.Errorf("retry log does not say why:\n%s", log)
	}

	start := time.Now()
	r.cancel()
	select {
	case <-r.done:
		if r.err != nil {
			t.Errorf("idle daemon cancelled: %v, want nil", r.err)
		}
		t.Logf("stopped %v after cancel", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatal("daemon did not stop within 5 s of cancel")
	}
}

// A drained idle agent that cannot reach its coordinator has nothing to report: it
// stops instead of retrying forever.
func TestRun_DrainWhileUnreachableStopsWithoutCancel(t *testing.T) {
	t.Parallel()
	log := &lockedLog{}
	d := unreachableDaemon(t, log)
	r := runDaemon(t, d)
	log.waitLogged(t, 30*time.Second, "cannot reach coordinator; retrying", 1)
	start := time.Now()
	d.Drain()
	d.Drain() // a second call is harmless
	select {
	case <-r.done:
		if r.err != nil {
			t.Errorf("drained idle daemon: %v, want nil", r.err)
		}
		t.Logf("stopped %v after drain", time.Since(start))
	case <-time.After(5 * time.Second):
		t.Fatalf("drained idle daemon still running after 5 s:\n%s", log)
	}
}

func TestRun_CapabilitiesErrorStopsAtOnce(t *testing.T) {
	t.Parallel()
	boom := errors.New("no nix")
	d := New(Config{Session: session.Config{URL: closedPortURL(t)},
		Capabilities: func(context.Context) (protocol.Capabilities, error) { return protocol.Capabilities{}, boom }})
	r := runDaemon(t, d)
	select {
	case <-r.done:
		if !errors.Is(r.err, boom) {
			t.Errorf("Run = %v, want the capabilities error", r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("daemon kept going without capabilities")
	}
}

func TestStopped_ForcedOnlyWithRunningWork(t *testing.T) {
	d := New(Config{})
	if err := d.stopped(); err != nil {
		t.Errorf("idle: %v", err)
	}
	d.running[protocol.WorkRef{Kind: "step", ID: 1}] = func() {}
	if err := d.stopped(); !errors.Is(err, ErrForced) {
		t.Errorf("with work: %v, want ErrForced", err)
	}
}

func TestHandle_RejectsWorkWhenDrainedAndAcksControlCommands(t *testing.T) {
	d := New(Config{})
	shutdown := make(chan struct{}, 1)
	ctx := context.Background()
	assign := protocol.Message{Type: protocol.TypeAssign, Assign: &protocol.Assign{Work: protocol.WorkRef{Kind: "step", ID: 3}}}

	if r := d.handle(ctx, protocol.Message{Type: protocol.TypeDrain, Drain: &protocol.Drain{On: true}}, shutdown); r.Type != protocol.TypeAck {
		t.Fatalf("drain: %+v", r)
	}
	if r := d.handle(ctx, assign, shutdown); r.Type != protocol.TypeReject || !strings.Contains(r.Reject.Reason, "draining") {
		t.Errorf("assign while admin-drained: %+v", r)
	}
	if r := d.handle(ctx, protocol.Message{Type: protocol.TypeDrain, Drain: &protocol.Drain{On: false}}, shutdown); r.Type != protocol.TypeAck {
		t.Fatalf("enable: %+v", r)
	}
	if r := d.handle(ctx, assign, shutdown); r.Type != protocol.TypeReject || strings.Contains(r.Reject.Reason, "draining") {
		t.Errorf("assign after enable must not say draining: %+v", r)
	}
	d.Drain()
	if r := d.handle(ctx, assign, shutdown); r.Type != protocol.TypeReject || !strings.Contains(r.Reject.Reason, "draining") {
		t.Errorf("assign while self-draining: %+v", r)
	}
	if r := d.handle(ctx, protocol.Message{Type: protocol.TypeShutdown}, shutdown); r.Type != protocol.TypeAck || len(shutdown) != 1 {
		t.Errorf("shutdown: %+v, signalled %d", r, len(shutdown))
	}
	if r := d.handle(ctx, protocol.Message{Type: protocol.TypeShutdown}, shutdown); r.Type != protocol.TypeAck {
		t.Errorf("a second shutdown must not block: %+v", r)
	}
	if r := d.handle(ctx, protocol.Message{Type: "bogus"}, shutdown); r.Type != protocol.TypeReject || !strings.Contains(r.Reject.Reason, "bogus") {
		t.Errorf("unknown command: %+v", r)
	}
}

func TestLowDisk_StepsRejectedAndHeartbeatSaysSo(t *testing.T) {
	dir := t.TempDir()
	// More free space than any disk has: the agent is always short of it.
	d := New(Config{StoreDir: dir, MinFreeDisk: 1 << 62})
	ctx := context.Background()
	step := protocol.Message{Type: protocol.TypeAssign, Assign: &protocol.Assign{Work: protocol.WorkRef{Kind: protocol.WorkStep, ID: 1}}}
	if r := d.handle(ctx, step, make(chan struct{}, 1)); r.Type != protocol.TypeReject || !strings.Contains(r.Reject.Reason, "low disk") {
		t.Errorf("step on a full disk: %+v, want a low-disk rejection", r)
	}
	if st := d.state(); !st.LowDisk || st.FreeDiskBytes <= 0 {
		t.Errorf("heartbeat state %+v, want LowDisk with the free bytes", st)
	}
	// An evaluation needs no store space for outputs: it is not refused for disk.
	ev := protocol.Message{Type: protocol.TypeAssign, Assign: &protocol.Assign{Work: protocol.WorkRef{Kind: protocol.WorkEval, ID: 2}}}
	if r := d.handle(ctx, ev, make(chan struct{}, 1)); r.Type == protocol.TypeReject && strings.Contains(r.Reject.Reason, "low disk") {
		t.Errorf("evaluation refused for disk: %+v", r)
	}
	ok := New(Config{StoreDir: dir, MinFreeDisk: 1})
	if st := ok.state(); st.LowDisk {
		t.Errorf("1 byte minimum: LowDisk set")
	}
	// A reload (SIGHUP) changes the threshold of a running daemon both ways.
	ok.SetMinFreeDisk(1 << 62)
	if r := ok.handle(ctx, step, make(chan struct{}, 1)); r.Type != protocol.TypeReject || !strings.Contains(r.Reject.Reason, "low disk") {
		t.Errorf("step after raising min_free_disk: %+v, want a low-disk rejection", r)
	}
	if st := ok.state(); !st.LowDisk {
		t.Errorf("heartbeat after raising min_free_disk: %+v, want LowDisk", st)
	}
	d.SetMinFreeDisk(0)
	if st := d.state(); st.LowDisk {
		t.Errorf("heartbeat after turning min_free_disk off: LowDisk set")
	}
}
