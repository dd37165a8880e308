// Package daemon is the agent's lifecycle: keep one session to a coordinator
// (agent/session), reconnect to the next of its coordinators with capped, jittered
// exponential backoff (rotation, internal/backoff), heartbeat, re-advertise
// capabilities when they change, answer commands, run assigned work on its
// Executors (agent/work) and drain: take no new work, keep heartbeating, finish what
// runs, then stop. Its counterpart on the
// coordinator is coordinator/fleet, which holds every agent's session.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fc-ci/fc/agent/probe"
	"github.com/fc-ci/fc/agent/session"
	"github.com/fc-ci/fc/protocol"
)

// Config configures the daemon.
type Config struct {
	Session session.Config
	// URLs are the coordinators' base URLs, dialed in turn (see rotation); empty:
	// Session.URL alone.
	URLs []string
	// Capabilities reports what the agent can build; it is called at start and every
	// ProbeEvery, and a change is sent to the coordinator.
	Capabilities func(ctx context.Context) (protocol.Capabilities, error)
	ProbeEvery   time.Duration
	// StoreDir is measured for free disk in heartbeats.
	StoreDir string
	// MinFreeDisk, if > 0, is the free space (bytes) under which the agent rejects
	// steps and says so in its heartbeats.
	MinFreeDisk int64
	// GC, if set, runs every GCInterval (> 0) while the daemon runs: it collects the
	// store's garbage (running and unreported steps hold GC roots).
	GC         func(ctx context.Context) error
	GCInterval time.Duration
	MinBackoff time.Duration
	MaxBackoff time.Duration
	Logger     *slog.Logger
	// OnConnected, if set, is called after each successful handshake, before
	// OnWelcome, with the base URL of the coordinator the session is with.
	OnConnected func(url string)
	// OnWelcome, if set, is called after each successful handshake.
	OnWelcome func(protocol.Welcome)
	// OnSessionEnd, if set, is called when a session ends and the daemon goes on
	// (reconnecting), with why it ended.
	OnSessionEnd func(reason error)
	// Executors run assigned work, by kind (protocol.WorkEval, protocol.WorkStep);
	// Capacity bounds how many of a kind run at once (default 1).
	Executors map[string]Executor
	Capacity  map[string]int
}

// Executor runs one piece of leased work. ctx ends when the coordinator cancels the
// work, the lease is lost, or the agent is stopped by force. Streams to the
// coordinator go through link, which waits across reconnects.
type Executor interface {
	Run(ctx context.Context, a protocol.Assign, link Link) error
}

// closeExecutors closes the executors that hold something (those with a Close
// method) when Run ends.
func (d *Daemon) closeExecutors() {
	for kind, e := range d.cfg.Executors {
		if c, ok := e.(io.Closer); ok {
			if err := c.Close(); err != nil {
				d.log.Warn("close executor", "work", kind, "err", err)
			}
		}
	}
}

// Link is what Executor.Run is handed to reach the coordinator: the daemon itself,
// which opens streams on whatever session is current. It is an alias of an interface
// literal, not a type of its own, so executors state the same interface where they
// use it (agent/work.Link) and satisfy Executor without importing this package.
type Link = interface {
	OpenStream(ctx context.Context, kind string) (io.ReadWriteCloser, error)
}

// Daemon runs the agent.
type Daemon struct {
	cfg Config
	log *slog.Logger

	drainOnce   sync.Once
	drainCh     chan struct{}
	forced      atomic.Bool  // running work was cancelled by a forced stop
	minFreeDisk atomic.Int64 // Config.MinFreeDisk, changed by SetMinFreeDisk

	mu           sync.Mutex
	adminDrained bool
	caps         protocol.Capabilities
	running      map[protocol.WorkRef]context.CancelFunc
	unreported   []protocol.WorkRef // ended cancelled by a forced stop, not reported (see release)
	conn         *session.Conn
	connChanged  chan struct{} // closed and replaced whenever conn changes
	workDone     chan struct{} // signalled when a piece of work ends
	runCtx       context.Context
	work         sync.WaitGroup
}

// New returns a daemon; Run starts it.
func New(cfg Config) *Daemon {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 250 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.ProbeEvery <= 0 {
		cfg.ProbeEvery = 5 * time.Minute
	}
	if cfg.StoreDir == "" {
		cfg.StoreDir = "/nix/store"
	}
	d := &Daemon{cfg: cfg, log: cfg.Logger, drainCh: make(chan struct{}), running: map[protocol.WorkRef]context.CancelFunc{},
		connChanged: make(chan struct{}), workDone: make(chan struct{}, 1)}
	d.minFreeDisk.Store(cfg.MinFreeDisk)
	return d
}

// SetMinFreeDisk changes MinFreeDisk while the daemon runs (a reload): the next
// assignment and heartbeat use it.
func (d *Daemon) SetMinFreeDisk(bytes int64) { d.minFreeDisk.Store(bytes) }

// Drain asks the agent to stop gracefully: no new work, finish running work, exit.
func (d *Daemon) Drain() {
	d.drainOnce.Do(func() {
		d.log.Info("draining: taking no new work, finishing running work")
		close(d.drainCh)
	})
}

func (d *Daemon) draining() bool {
	select {
	case <-d.drainCh:
		return true
	default:
		return false
	}
}

func (d *Daemon) state() session.State {
	d.mu.Lock()
	defer d.mu.Unlock()
	running := make([]protocol.WorkRef, 0, len(d.running))
	for w := range d.running {
		running = append(running, w)
	}
	free, minFree := probe.FreeDisk(d.cfg.StoreDir), d.minFreeDisk.Load()
	return session.State{Capabilities: d.caps, Running: running, Draining: d.draining(),
		Load1: probe.Load1(), FreeDiskBytes: free, LowDisk: minFree > 0 && free < minFree}
}

func (d *Daemon) idle() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.running) == 0
}

// ErrForced is returned when the daemon was stopped before its work finished.
var ErrForced = errors.New("stopped before running work finished")

// Run keeps the agent connected until it has drained (nil), ctx ends (ErrForced
// when work was running, else nil), or the coordinator refuses it for good
// (*protocol.Refused).
func (d *Daemon) Run(ctx context.Context) error {
	d.mu.Lock()
	d.runCtx = ctx
	d.mu.Unlock()
	defer d.closeExecutors() // after the Wait below: no work is left to use them
	defer d.work.Wait()      // every executor has ended (ctx cancels them) before Run returns
	if d.cfg.GC != nil && d.cfg.GCInterval > 0 {
		gcCtx, stopGC := context.WithCancel(ctx)
		gcDone := make(chan struct{})
		go func() {
			defer close(gcDone)
			d.collectGarbage(gcCtx)
		}()
		defer func() { stopGC(); <-gcDone }()
	}
	caps, err := d.cfg.Capabilities(ctx)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.caps = caps
	d.mu.Unlock()

	rot := newRotation(d.urls())
	for {
		if d.draining() && d.idle() {
			return nil
		}
		if ctx.Err() != nil {
			return d.stopped()
		}
		url := rot.url()
		sc := d.cfg.Session
		sc.URL = url
		conn, err := session.Dial(ctx, sc, d.state())
		if err != nil {
			var refused *protocol.Refused
			if errors.As(err, &refused) && refused.Permanent() {
				// The coordinators share one database: another would say the same.
				d.log.Error("coordinator refused this agent", "code", refused.Code, "reason", refused.Message, "coordinator_url", url)
				return refused
			}
			rot.dialFailed()
			wait := rot.delay(d.cfg.MinBackoff, d.cfg.MaxBackoff)
			d.log.Warn("cannot reach coordinator; retrying", "err", err, "coordinator_url", url, "next", rot.url(),
				"retry_in", wait.Round(time.Millisecond))
			if !d.sleep(ctx, wait) {
				return d.stopped()
			}
			continue
		}
		connectedAt := time.Now()
		d.log.Info("connected to coordinator", "agent", conn.Welcome.AgentID, "name", conn.Welcome.Name, "coordinator", conn.Welcome.Coordinator,
			"coordinator_url", url, "enrolled", conn.Welcome.Enrolled)
		if d.cfg.OnConnected != nil {
			d.cfg.OnConnected(url)
		}
		if d.cfg.OnWelcome != nil {
			d.cfg.OnWelcome(conn.Welcome)
		}
		d.setConn(conn)
		reason := d.runConn(ctx, conn)
		d.setConn(nil)
		conn.Close()
		switch {
		case reason == errDrained:
			d.log.Info("drained; stopping")
			return nil
		case ctx.Err() != nil:
			return d.stopped()
		}
		if d.cfg.OnSessionEnd != nil {
			d.cfg.OnSessionEnd(reason)
		}
		rot.sessionEnded(time.Since(connectedAt) > stableSession)
		wait := rot.delay(d.cfg.MinBackoff, d.cfg.MaxBackoff)
		d.log.Warn("session to coordinator ended; reconnecting", "reason", reason, "coordinator_url", url, "next", rot.url(),
			"retry_in", wait.Round(time.Millisecond))
		if !d.sleep(ctx, wait) {
			return d.stopped()
		}
	}
}

// urls are the coordinators to dial: Config.URLs, else Session.URL.
func (d *Daemon) urls() []string {
	if len(d.cfg.URLs) > 0 {
		return d.cfg.URLs
	}
	return []string{d.cfg.Session.URL}
}

// collectGarbage runs the GC every GCInterval until ctx ends.
func (d *Daemon) collectGarbage(ctx context.Context) {
	t := time.NewTicker(d.cfg.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		start := time.Now()
		before := probe.FreeDisk(d.cfg.StoreDir)
		if err := d.cfg.GC(ctx); err != nil {
			if ctx.Err() == nil {
				d.log.Warn("garbage collection", "err", err)
			}
			continue
		}
		d.log.Info("garbage collected", "freed_bytes", probe.FreeDisk(d.cfg.StoreDir)-before,
			"elapsed", time.Since(start).Round(time.Millisecond))
	}
}

// release runs when the agent is stopped by force: running work was cancelled with
// ctx; once it has ended (or a few seconds passed), one last heartbeat hands it back
// so the coordinator requeues it now instead of when its lease expires.
func (d *Daemon) release(conn *session.Conn) {
	d.mu.Lock()
	n := len(d.running) + len(d.unreported)
	d.mu.Unlock()
	if n == 0 {
		return
	}
	d.forced.Store(true)
	ended := make(chan struct{})
	go func() { d.work.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
	}
	// What still runs, and what ended cancelled without reporting (work that ended
	// as ctx was cancelled is in one or the other, whichever goroutine came first).
	d.mu.Lock()
	refs := slices.Clone(d.unreported)
	for w := range d.running {
		if !slices.Contains(refs, w) {
			refs = append(refs, w)
		}
	}
	d.mu.Unlock()
	if len(refs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st := d.state()
	st.Released = refs
	if err := conn.Heartbeat(ctx, st); err != nil {
		d.log.Warn("hand back unfinished work", "err", err)
		return
	}
	d.log.Info("handed back unfinished work", "work", refs)
}

func (d *Daemon) stopped() error {
	if d.idle() && !d.forced.Load() {
		return nil
	}
	return ErrForced
}

var errDrained = errors.New("drained")

// stableSession is how long a session must last for the next reconnect to start
// from the smallest backoff again.
const stableSession = 30 * time.Second

// runConn serves one session until it ends, returning why.
func (d *Daemon) runConn(ctx context.Context, conn *session.Conn) error {
	shutdown := make(chan struct{}, 1)
	serveErr := make(chan error, 1)
	go func() {
		serveErr <- conn.Serve(ctx, func(ctx context.Context, m protocol.Message) protocol.Message {
			return d.handle(ctx, m, shutdown)
		})
	}()
	defer func() { conn.Close(); <-serveErr }()

	every := time.Duration(conn.Welcome.HeartbeatSeconds) * time.Second
	if every <= 0 {
		every = protocol.HeartbeatEvery
	}
	beat := time.NewTicker(every)
	defer beat.Stop()
	reprobe := time.NewTicker(d.cfg.ProbeEvery)
	defer reprobe.Stop()
	drainCh := d.drainCh
	for {
		// A stop by force hands running work back, whichever case select picked when
		// ctx ended at the same time as another (a heartbeat due, work ending): their
		// sends fail once ctx is done.
		if ctx.Err() != nil {
			d.release(conn)
			return ctx.Err()
		}
		select {
		case <-ctx.Done():
			continue
		case <-conn.Done():
			return errors.New("connection closed")
		case <-shutdown:
			return errors.New("coordinator shutting down")
		case <-drainCh:
			drainCh = nil // tell the coordinator once, now, rather than at the next beat
			if err := conn.Heartbeat(ctx, d.state()); err != nil {
				if ctx.Err() != nil {
					continue // stopped by force: hand the work back above
				}
				return err
			}
			if d.idle() {
				return errDrained
			}
		case <-d.workDone:
			// Report at once that the work ended, so the coordinator can assign more
			// (and a draining agent can stop).
			if err := conn.Heartbeat(ctx, d.state()); err != nil {
				if ctx.Err() != nil {
					continue // stopped by force: hand the work back above
				}
				return err
			}
			if d.draining() && d.idle() {
				return errDrained
			}
		case <-beat.C:
			if err := conn.Heartbeat(ctx, d.state()); err != nil {
				if ctx.Err() != nil {
					continue // stopped by force: hand the work back above
				}
				return err
			}
			if d.draining() && d.idle() {
				return errDrained
			}
		case <-reprobe.C:
			caps, err := d.cfg.Capabilities(ctx)
			if err != nil {
				d.log.Warn("probe capabilities", "err", err)
				continue
			}
			d.mu.Lock()
			changed := !reflect.DeepEqual(caps, d.caps)
			d.caps = caps
			d.mu.Unlock()
			if changed {
				d.log.Info("capabilities changed", "systems", caps.Systems, "features", caps.Features)
				if err := conn.SendCapabilities(caps); err != nil {
					return err
				}
			}
		}
	}
}

// handle answers one command from the coordinator.
func (d *Daemon) handle(_ context.Context, m protocol.Message, shutdown chan<- struct{}) protocol.Message {
	switch m.Type {
	case protocol.TypeDrain:
		on := m.Drain != nil && m.Drain.On
		d.mu.Lock()
		d.adminDrained = on
		d.mu.Unlock()
		if on {
			d.log.Info("drained by an admin: taking no new work until enabled")
		} else {
			d.log.Info("enabled by an admin: taking work again")
		}
		return protocol.Message{Type: protocol.TypeAck}
	case protocol.TypeShutdown:
		select {
		case shutdown <- struct{}{}:
		default:
		}
		return protocol.Message{Type: protocol.TypeAck}
	case protocol.TypeCancel:
		if m.Cancel != nil {
			d.mu.Lock()
			for w, cancel := range d.running {
				if w.Kind == m.Cancel.Work.Kind && w.ID == m.Cancel.Work.ID {
					d.log.Info("cancelling work", "kind", w.Kind, "id", w.ID)
					cancel()
				}
			}
			d.mu.Unlock()
		}
		return protocol.Message{Type: protocol.TypeAck}
	case protocol.TypeAssign:
		if m.Assign == nil {
			return reject("assignment without work")
		}
		return d.start(*m.Assign)
	}
	return protocol.Message{Type: protocol.TypeReject, Reject: &protocol.Reject{Reason: "unknown command " + m.Type}}
}

// sleep waits d, returning false if ctx ended first. A drain does not cut the wait
// short: a draining agent with work must still reconnect to report it.
func (d *Daemon) sleep(ctx context.Context, wait time.Duration) bool {
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	case <-d.drainCh:
		if d.idle() {
			return true // nothing to report: the loop ends at once
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
}

func reject(reason string) protocol.Message {
	return protocol.Message{Type: protocol.TypeReject, Reject: &protocol.Reject{Reason: reason}}
}

// start accepts an assignment if the agent can take it, and runs it.
func (d *Daemon) start(a protocol.Assign) protocol.Message {
	if minFree := d.minFreeDisk.Load(); a.Work.Kind == protocol.WorkStep && minFree > 0 {
		if free := probe.FreeDisk(d.cfg.StoreDir); free < minFree {
			return reject(fmt.Sprintf("low disk: %d bytes free, min_free_disk %d", free, minFree))
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.adminDrained || d.draining() {
		return reject("agent is draining")
	}
	ex := d.cfg.Executors[a.Work.Kind]
	if ex == nil || d.runCtx == nil {
		return reject("no executor for work of kind " + a.Work.Kind)
	}
	limit := d.cfg.Capacity[a.Work.Kind]
	if limit <= 0 {
		limit = 1
	}
	n := 0
	for w := range d.running {
		if w.Kind == a.Work.Kind {
			n++
		}
	}
	if n >= limit {
		return reject("busy")
	}
	ctx, cancel := context.WithCancel(d.runCtx)
	d.running[a.Work] = cancel
	d.work.Add(1)
	go func() {
		defer d.work.Done()
		defer func() {
			cancel()
			d.mu.Lock()
			delete(d.running, a.Work)
			d.mu.Unlock()
			select {
			case d.workDone <- struct{}{}:
			default:
			}
		}()
		if err := ex.Run(ctx, a, d); err != nil {
			d.log.Warn("work ended with an error", "kind", a.Work.Kind, "id", a.Work.ID, "err", err)
			if errors.Is(err, context.Canceled) && d.runCtx.Err() != nil {
				// Stopped by force before it reported: release hands it back, even
				// if this goroutine ends before release looks at what runs.
				d.mu.Lock()
				d.unreported = append(d.unreported, a.Work)
				d.mu.Unlock()
			}
		}
	}()
	return protocol.Message{Type: protocol.TypeAccept}
}

func (d *Daemon) setConn(c *session.Conn) {
	d.mu.Lock()
	d.conn = c
	close(d.connChanged)
	d.connChanged = make(chan struct{})
	d.mu.Unlock()
}

// OpenStream opens a stream on the current session, waiting for a reconnect if
// there is none (Link).
func (d *Daemon) OpenStream(ctx context.Context, kind string) (io.ReadWriteCloser, error) {
	for {
		d.mu.Lock()
		c, changed := d.conn, d.connChanged
		d.mu.Unlock()
		if c != nil {
			st, err := c.OpenStream(kind)
			if err == nil {
				return st, nil
			}
			select {
			case <-c.Done(): // the session died: wait for the next one
			default:
				return nil, err
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-changed:
		}
	}
}
