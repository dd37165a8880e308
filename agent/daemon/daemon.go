// Package daemon is the agent's lifecycle: keep one session to the coordinator,
// reconnect with capped, jittered exponential backoff, heartbeat, re-advertise
// capabilities when they change, answer commands, and drain: take no new work,
// keep heartbeating, finish what runs, then stop.
package daemon

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"sync"
	"time"

	"github.com/fc-ci/fc/agent/probe"
	"github.com/fc-ci/fc/agent/session"
	"github.com/fc-ci/fc/protocol"
)

// Config configures the daemon.
type Config struct {
	Session session.Config
	// Capabilities reports what the agent can build; it is called at start and every
	// ProbeEvery, and a change is sent to the coordinator.
	Capabilities func(ctx context.Context) (protocol.Capabilities, error)
	ProbeEvery   time.Duration
	// StoreDir is measured for free disk in heartbeats.
	StoreDir   string
	MinBackoff time.Duration
	MaxBackoff time.Duration
	Logger     *slog.Logger
	// OnWelcome, if set, is called after each successful handshake.
	OnWelcome func(protocol.Welcome)
}

// Daemon runs the agent.
type Daemon struct {
	cfg Config
	log *slog.Logger

	drainOnce sync.Once
	drainCh   chan struct{}

	mu           sync.Mutex
	adminDrained bool
	caps         protocol.Capabilities
	running      map[protocol.WorkRef]struct{}
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
	return &Daemon{cfg: cfg, log: cfg.Logger, drainCh: make(chan struct{}), running: map[protocol.WorkRef]struct{}{}}
}

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
	return session.State{Capabilities: d.caps, Running: running, Draining: d.draining(),
		Load1: probe.Load1(), FreeDiskBytes: probe.FreeDisk(d.cfg.StoreDir)}
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
	caps, err := d.cfg.Capabilities(ctx)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.caps = caps
	d.mu.Unlock()

	attempt := 0
	for {
		if d.draining() && d.idle() {
			return nil
		}
		if ctx.Err() != nil {
			return d.stopped()
		}
		conn, err := session.Dial(ctx, d.cfg.Session, d.state())
		if err != nil {
			var refused *protocol.Refused
			if errors.As(err, &refused) && refused.Permanent() {
				d.log.Error("coordinator refused this agent", "code", refused.Code, "reason", refused.Message)
				return refused
			}
			wait := backoff(attempt, d.cfg.MinBackoff, d.cfg.MaxBackoff)
			attempt++
			d.log.Warn("cannot reach coordinator; retrying", "err", err, "retry_in", wait.Round(time.Millisecond))
			if !d.sleep(ctx, wait) {
				return d.stopped()
			}
			continue
		}
		connectedAt := time.Now()
		d.log.Info("connected to coordinator", "agent", conn.Welcome.AgentID, "coordinator", conn.Welcome.Coordinator,
			"enrolled", conn.Welcome.Enrolled)
		if d.cfg.OnWelcome != nil {
			d.cfg.OnWelcome(conn.Welcome)
		}
		reason := d.runConn(ctx, conn)
		conn.Close()
		switch {
		case reason == errDrained:
			d.log.Info("drained; stopping")
			return nil
		case ctx.Err() != nil:
			return d.stopped()
		}
		// Only a session that lasted resets the backoff: one dropped right after the
		// handshake (a flapping proxy, two agents sharing a key) must not make the
		// agent reconnect several times a second forever.
		if time.Since(connectedAt) > stableSession {
			attempt = 0
		}
		wait := backoff(attempt, d.cfg.MinBackoff, d.cfg.MaxBackoff)
		attempt++
		d.log.Warn("session to coordinator ended; reconnecting", "reason", reason, "retry_in", wait.Round(time.Millisecond))
		if !d.sleep(ctx, wait) {
			return d.stopped()
		}
	}
}

func (d *Daemon) stopped() error {
	if d.idle() {
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
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-conn.Done():
			return errors.New("connection closed")
		case <-shutdown:
			return errors.New("coordinator shutting down")
		case <-drainCh:
			drainCh = nil // tell the coordinator once, now, rather than at the next beat
			if err := conn.Heartbeat(ctx, d.state()); err != nil {
				return err
			}
			if d.idle() {
				return errDrained
			}
		case <-beat.C:
			if err := conn.Heartbeat(ctx, d.state()); err != nil {
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
		return protocol.Message{Type: protocol.TypeAck}
	case protocol.TypeAssign:
		d.mu.Lock()
		admin := d.adminDrained
		d.mu.Unlock()
		if admin || d.draining() {
			return protocol.Message{Type: protocol.TypeReject, Reject: &protocol.Reject{Reason: "agent is draining"}}
		}
		kind := ""
		if m.Assign != nil {
			kind = m.Assign.Work.Kind
		}
		return protocol.Message{Type: protocol.TypeReject, Reject: &protocol.Reject{Reason: "no executor for work of kind " + kind}}
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

// backoff is exponential from min, capped at max, with jitter over its upper half so
// a fleet that lost its coordinator does not reconnect in lockstep.
func backoff(attempt int, min, max time.Duration) time.Duration {
	d := min
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d/2 + rand.N(d/2+1)
}
