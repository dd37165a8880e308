// Package localagent runs an agent inside the coordinator's process ([local_agent]):
// the same daemon as fc-agent run, dialling the coordinator's own listener over a
// loopback WebSocket, enrolled automatically with a one-use token it creates in the
// database when its key is not registered yet.
package localagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	agentcli "github.com/fc-ci/fc/agent/cli"
	agentconfig "github.com/fc-ci/fc/agent/config"
	"github.com/fc-ci/fc/agent/daemon"
	"github.com/fc-ci/fc/agent/identity"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/fleet"
	"github.com/fc-ci/fc/storage"
)

// Config describes the local agent.
type Config struct {
	// URL is the coordinator's base URL as the agent dials it (see URLFor).
	URL      string
	Name     string
	StateDir string
	MaxJobs  int // 0: one per CPU core
	Roles    []string
	// DrainTimeout is how long Stop lets running work finish before cancelling it.
	DrainTimeout time.Duration
	// AllowedInputPaths are the directories path inputs may name (the coordinator's
	// evaluator.allowed_input_paths); Protected are the coordinator's own files, which
	// no path input may reach, besides the agent's state directory and key.
	AllowedInputPaths []string
	Protected         []string
	Logger            *slog.Logger
}

// ErrRevoked means an admin revoked the local agent's key: it is not started again
// with it (delete the key file to enroll a new one).
var ErrRevoked = errors.New("the local agent's key was revoked")

// EnrollmentTTL is how long the token made for a first start stays valid.
const EnrollmentTTL = time.Hour

// Agent is a running local agent.
type Agent struct {
	d            *daemon.Daemon
	log          *slog.Logger
	cancel       context.CancelFunc
	done         chan struct{}
	err          error
	drainTimeout time.Duration
}

// URLFor is the base URL an agent in this process dials to reach a listener on addr:
// the listener's own address, or 127.0.0.1 when it listens on every address.
func URLFor(addr net.Addr) string {
	host, port := "127.0.0.1", ""
	if tcp, ok := addr.(*net.TCPAddr); ok {
		port = strconv.Itoa(tcp.Port)
		if tcp.IP != nil && !tcp.IP.IsUnspecified() {
			host = tcp.IP.String()
		}
	} else if h, p, err := net.SplitHostPort(addr.String()); err == nil {
		port = p
		if ip := net.ParseIP(h); ip != nil && !ip.IsUnspecified() {
			host = h
		}
	}
	return "http://" + net.JoinHostPort(host, port)
}

// Start prepares the agent (its key, created on first start, and an enrollment token
// when the key is not registered) and runs it until Stop.
func Start(ctx context.Context, cfg Config, db *storage.DB) (*Agent, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ac := agentconfig.Defaults()
	ac.Coordinator.URL = cfg.URL
	ac.Agent.Name = cfg.Name
	ac.Agent.StateDir = cfg.StateDir
	ac.Agent.MaxJobs = cfg.MaxJobs
	ac.Agent.Roles = cfg.Roles
	ac.Agent.AllowedInputPaths = append([]string{}, cfg.AllowedInputPaths...)
	ac.Agent.Protected = cfg.Protected
	if err := ac.Validate(); err != nil {
		return nil, fmt.Errorf("local agent: %w", err)
	}
	id, _, err := identity.LoadOrGenerate(ac.KeyPath(), ac.Name())
	if err != nil {
		return nil, fmt.Errorf("local agent key: %w", err)
	}
	known, err := db.AgentByFingerprint(ctx, id.Fingerprint())
	switch {
	case err == nil && known.RevokedAt != nil:
		return nil, fmt.Errorf("%w (agent %d, key %s in %s)", ErrRevoked, known.ID, id.Fingerprint(), ac.KeyPath())
	case errors.Is(err, storage.ErrNotFound):
		_, token, err := fleet.CreateToken(ctx, db, "local-agent-"+cfg.Name, 1, EnrollmentTTL)
		if err != nil {
			return nil, fmt.Errorf("local agent enrollment token: %w", err)
		}
		ac.Coordinator.EnrollmentToken = token
		log.Info("enrolling the local agent", "fingerprint", id.Fingerprint())
	case err != nil:
		return nil, fmt.Errorf("look up the local agent: %w", err)
	}
	d, err := agentcli.NewDaemon(ac, log, 0)
	if err != nil {
		return nil, fmt.Errorf("local agent: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a := &Agent{d: d, log: log, cancel: cancel, done: make(chan struct{}), drainTimeout: cfg.DrainTimeout}
	go func() {
		defer close(a.done)
		a.err = d.Run(runCtx)
		if a.err != nil && !errors.Is(a.err, daemon.ErrForced) {
			log.Error("local agent stopped", "err", a.err)
		}
	}()
	log.Info("local agent started", "url", cfg.URL, "state_dir", cfg.StateDir, "roles", cfg.Roles)
	return a, nil
}

// FromConfig is the [local_agent] section as a Config, dialling the listener at addr.
func FromConfig(cfg config.Config, addr net.Addr, log *slog.Logger) Config {
	// The coordinator's state (database, signing key, cache) is on this machine too.
	protected := []string{cfg.StateDir}
	for _, p := range []string{cfg.Cache.SecretKeyFile, cfg.Cache.Dir} {
		if p != "" {
			protected = append(protected, p)
		}
	}
	return Config{URL: URLFor(addr), Name: cfg.LocalAgent.Name, StateDir: cfg.AgentStateDir(),
		MaxJobs: cfg.LocalAgent.MaxJobs, Roles: cfg.LocalAgent.Roles,
		DrainTimeout: config.Seconds(cfg.LocalAgent.DrainTimeout), AllowedInputPaths: cfg.Eval.AllowedInputPaths,
		Protected: protected, Logger: log.With("component", "local-agent")}
}

// StopFirst orders the shutdown: once ctx ends, the agent drains and stops, and only
// then does the returned context end (the server's), so the agent's last reports
// still reach the coordinator. The returned function stops the agent if ctx has not
// ended (the server failed) and waits for it.
func (a *Agent) StopFirst(ctx context.Context) (context.Context, func()) {
	serveCtx, stopServe := context.WithCancel(context.WithoutCancel(ctx))
	ended, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-ctx.Done():
		case <-ended:
		}
		_ = a.Stop()
		stopServe()
	}()
	return serveCtx, func() { close(ended); <-stopped }
}

// Done is closed once the agent has stopped.
func (a *Agent) Done() <-chan struct{} { return a.done }

// Stop drains the agent (no new work; running work may finish within the drain
// timeout), then cancels what still runs, and waits for it to end. The error is why
// the agent stopped, if not by Stop.
func (a *Agent) Stop() error {
	a.d.Drain()
	t := time.NewTimer(a.drainTimeout)
	defer t.Stop()
	select {
	case <-a.done:
	case <-t.C:
		a.log.Warn("local agent still busy after the drain timeout: cancelling its work", "drain_timeout", a.drainTimeout)
		a.cancel()
		<-a.done
	}
	a.cancel()
	return a.err
}
