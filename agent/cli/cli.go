// Package cli is the fc-agent command line: run (the default: load the settings,
// build the daemon and its executors from them and run it), keygen and push. The
// main package only calls Run; coordinator/localagent embeds the same daemon in the
// coordinator.
package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/fc-ci/fc/agent/config"
	"github.com/fc-ci/fc/agent/daemon"
	"github.com/fc-ci/fc/agent/identity"
	"github.com/fc-ci/fc/agent/probe"
	"github.com/fc-ci/fc/agent/realise"
	"github.com/fc-ci/fc/agent/session"
	"github.com/fc-ci/fc/agent/work"
	"github.com/fc-ci/fc/internal/sdnotify"
	"github.com/fc-ci/fc/protocol"
)

// Exit codes (documented in the README). systemd units use
// RestartPreventExitStatus=3 4 so a permanently refused agent does not hot-loop.
const (
	ExitOK           = 0
	ExitError        = 1
	ExitUsage        = 2
	ExitIncompatible = 3 // the coordinator speaks an incompatible protocol version
	ExitRefused      = 4 // the coordinator refused the agent: key revoked or unknown without a valid token, name invalid or taken
)

const usage = `usage: fc-agent [--config FILE] [COMMAND]

commands:
  run       connect to the coordinator and take work (the default)
  keygen    create the agent key if missing; print its public key and fingerprint
  push PATH...
            upload store paths and their closures to the coordinator's cache,
            skipping what it (or an upstream cache) already has
  config check
            load and validate the configuration, print what it means
  version   print the version

Configuration: ./agent.toml, then --config FILE (or FC_CONFIG_FILE), then
FC_<SECTION>__<KEY> environment variables. See agent.toml for every key.
Signals: the first SIGTERM or SIGINT drains (no new work, finish running work,
exit 0); a second one cancels running work and exits.
`

// Env is what a command runs with.
type Env struct {
	Args    []string
	Environ []string
	Stdout  io.Writer
	Stderr  io.Writer
	// Signals delivers SIGTERM/SIGINT; nil means no signal handling.
	Signals <-chan os.Signal
	// Reload delivers SIGHUP: the configuration is read again and what is safe to
	// change applied (see reload); nil means none.
	Reload <-chan os.Signal
	// ProtocolVersion overrides the version spoken (tests of version skew).
	ProtocolVersion int
}

// Run is the real process's entry point.
func Run() int {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	env := Env{Args: os.Args[1:], Environ: os.Environ(), Stdout: os.Stdout, Stderr: os.Stderr, Signals: sigs, Reload: hup}
	return Main(context.Background(), env)
}

// Main runs one command and returns the exit code.
func Main(ctx context.Context, env Env) int {
	fs := flag.NewFlagSet("fc-agent", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() { fmt.Fprint(env.Stderr, usage) }
	configFile := fs.String("config", "", "configuration file")
	if err := fs.Parse(env.Args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return ExitUsage
	}
	cmd := "run"
	if fs.NArg() > 0 {
		cmd = fs.Arg(0)
	}
	if cmd == "version" {
		fmt.Fprintf(env.Stdout, "fc-agent %s (protocol %d)\n", protocol.BuildVersion, protocol.Version)
		return ExitOK
	}
	if cmd != "run" && cmd != "keygen" && cmd != "push" && cmd != "config" {
		fmt.Fprintf(env.Stderr, "fc-agent: unknown command %q\n\n%s", cmd, usage)
		return ExitUsage
	}
	cfg, err := config.Load(*configFile, env.Environ)
	if err != nil {
		fmt.Fprintf(env.Stderr, "fc-agent: %v\n", err)
		return ExitError
	}
	if cmd == "keygen" {
		return keygen(cfg, env)
	}
	if cmd == "config" {
		return configCheck(cfg, env, fs.Args()[1:])
	}
	if cmd == "push" {
		err = pushPaths(ctx, cfg, env, fs.Args()[1:])
	} else {
		err = run(ctx, cfg, env, func() (config.Config, error) { return config.Load(*configFile, env.Environ) })
	}
	var refused *protocol.Refused
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &refused) && refused.Code == protocol.RefusedVersion:
		fmt.Fprintf(env.Stderr, "fc-agent: %v\n", err)
		return ExitIncompatible
	case errors.As(err, &refused):
		fmt.Fprintf(env.Stderr, "fc-agent: %v\n", err)
		return ExitRefused
	}
	fmt.Fprintf(env.Stderr, "fc-agent: %v\n", err)
	return ExitError
}

func keygen(cfg config.Config, env Env) int {
	id, created, err := identity.LoadOrGenerate(cfg.KeyPath(), cfg.Name())
	if err != nil {
		fmt.Fprintf(env.Stderr, "fc-agent: %v\n", err)
		return ExitError
	}
	if created {
		fmt.Fprintf(env.Stderr, "created %s\n", id.Path)
	} else {
		fmt.Fprintf(env.Stderr, "%s exists; not replaced\n", id.Path)
	}
	fmt.Fprintln(env.Stdout, id.PublicKey(cfg.Name()))
	fmt.Fprintln(env.Stdout, id.Fingerprint())
	return ExitOK
}

// configCheck is `fc-agent config check`: the configuration loaded and validated
// (Load already refused what is wrong), said back, with nothing started.
func configCheck(cfg config.Config, env Env, args []string) int {
	if len(args) != 1 || args[0] != "check" {
		fmt.Fprintf(env.Stderr, "fc-agent: config needs a command: check\n\n%s", usage)
		return ExitUsage
	}
	fmt.Fprintf(env.Stdout, "configuration OK: coordinator %s, state in %s, key %s, roles %s\n",
		strings.Join(cfg.URLs(), " then "), cfg.Agent.StateDir, cfg.KeyPath(), strings.Join(cfg.Agent.Roles, ","))
	return ExitOK
}

func newLogger(w io.Writer, level string) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: parseLevel(level)}))
}

// TLSConfig trusts the system roots plus ca_file, if set.
func TLSConfig(caFile string) (*tls.Config, error) {
	if caFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("coordinator.ca_file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("coordinator.ca_file %s holds no PEM certificate", caFile)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// Capabilities merges what Nix reports with agent.toml's overrides.
func Capabilities(cfg config.Config) func(context.Context) (protocol.Capabilities, error) {
	return capabilities(cfg, nil)
}

// capabilities is Capabilities; probed, if set, is told what Nix said of itself.
func capabilities(cfg config.Config, probed func(probe.Nix)) func(context.Context) (protocol.Capabilities, error) {
	return func(ctx context.Context) (protocol.Capabilities, error) {
		c := protocol.Capabilities{Systems: cfg.Agent.Systems, Features: cfg.Agent.Features,
			MandatoryFeatures: cfg.Agent.MandatoryFeatures, MaxJobs: cfg.MaxJobs(),
			Slots: cfg.StepSlots(), SpeedFactor: cfg.Agent.SpeedFactor, Roles: cfg.Agent.Roles}
		nix, err := probe.ProbeNix(ctx)
		if err != nil {
			if len(c.Systems) == 0 {
				return c, fmt.Errorf("%w (install Nix, or set agent.systems)", err)
			}
			return c, nil // systems configured: Nix is probed again later
		}
		if probed != nil {
			probed(nix)
		}
		c.NixVersion = nix.Version
		if len(c.Systems) == 0 {
			c.Systems = nix.Systems
		}
		if len(c.Features) == 0 {
			c.Features = nix.Features
		}
		return c, nil
	}
}

// SessionConfig is how this agent introduces itself: its key (created on first use),
// enrollment token, TLS settings and name.
func SessionConfig(cfg config.Config, log *slog.Logger, protocolVersion int) (session.Config, error) {
	id, created, err := identity.LoadOrGenerate(cfg.KeyPath(), cfg.Name())
	if err != nil {
		return session.Config{}, err
	}
	if created {
		log.Info("created agent key", "path", id.Path, "fingerprint", id.Fingerprint(), "public_key", id.PublicKey(cfg.Name()))
	}
	token, err := cfg.EnrollmentToken()
	if err != nil {
		return session.Config{}, err
	}
	tlsCfg, err := TLSConfig(cfg.Coordinator.CAFile)
	if err != nil {
		return session.Config{}, err
	}
	return session.Config{URL: cfg.URLs()[0], TLS: tlsCfg, Identity: id, Name: cfg.Name(), NameFromHost: cfg.Agent.Name == "",
		AgentVersion: protocol.BuildVersion, ProtocolVersion: protocolVersion, EnrollmentToken: token, Logger: log}, nil
}

// NewDaemon builds the daemon the way fc-agent run does (the coordinator's local
// agent uses it too).
func NewDaemon(cfg config.Config, log *slog.Logger, protocolVersion int) (*daemon.Daemon, error) {
	dc, err := daemonConfig(cfg, log, protocolVersion)
	if err != nil {
		return nil, err
	}
	return daemon.New(dc), nil
}

// daemonConfig is the daemon's configuration from the agent's.
func daemonConfig(cfg config.Config, log *slog.Logger, protocolVersion int) (daemon.Config, error) {
	sc, err := SessionConfig(cfg, log, protocolVersion)
	if err != nil {
		return daemon.Config{}, err
	}
	// Nix's netrc-file, as the capabilities probe (before the first session) found it.
	var nixNetrc atomic.Pointer[string]
	// The coordinator the daemon is connected to now: steps substitute from its cache.
	var current atomic.Pointer[string]
	current.Store(&cfg.URLs()[0])
	dc := daemon.Config{Session: sc, URLs: cfg.URLs(), OnConnected: func(url string) { current.Store(&url) },
		Capabilities: capabilities(cfg, func(n probe.Nix) { nixNetrc.Store(&n.NetrcFile) }), Logger: log,
		Executors: map[string]daemon.Executor{}, Capacity: map[string]int{}, MinFreeDisk: cfg.Agent.MinFreeDisk}
	if every := cfg.GCEvery(); every > 0 {
		dc.GC, dc.GCInterval = realise.CollectGarbage, every
	}
	if slices.Contains(cfg.Agent.Roles, protocol.RoleBuild) {
		// Logs and GC roots a crash left behind belong to no step now: the coordinator
		// requeues those steps when their leases expire.
		for _, dir := range []string{"logs", "gcroots", "xdg-cache"} {
			if err := os.RemoveAll(filepath.Join(cfg.Agent.StateDir, dir)); err != nil {
				log.Warn("remove stale step files", "dir", dir, "err", err)
			}
		}
		cacheURL := func() string { return strings.TrimSuffix(*current.Load(), "/") + "/nix-cache" }
		// Each session's welcome brings a new cache read token: Nix presents it from here.
		login := &work.CacheLogin{Path: filepath.Join(cfg.Agent.StateDir, "cache.netrc"), CurrentCacheURL: cacheURL,
			NixNetrc: func() string {
				if p := nixNetrc.Load(); p != nil {
					return *p
				}
				return ""
			}, Logger: log}
		dc.OnWelcome = login.Welcome
		dc.Executors[protocol.WorkStep] = &work.StepRunner{StateDir: cfg.Agent.StateDir, CurrentCacheURL: cacheURL,
			NetrcFile: login.Path, Features: cfg.Agent.Features, CompressionLevel: cfg.Agent.CompressionLevel, Logger: log,
			MaxJobs: cfg.MaxJobs(), Slots: cfg.StepSlots(), NixConnection: cfg.Agent.NixConnection}
		dc.Capacity[protocol.WorkStep] = cfg.StepSlots()
	}
	if slices.Contains(cfg.Agent.Roles, protocol.RoleEval) {
		// Working trees a crash left behind belong to no evaluation now.
		if err := os.RemoveAll(filepath.Join(cfg.Agent.StateDir, "git", "work")); err != nil {
			log.Warn("remove stale evaluation checkouts", "err", err)
		}
		ev := &work.EvalRunner{StateDir: cfg.Agent.StateDir, AllowedInputPaths: cfg.Agent.AllowedInputPaths,
			Protected: cfg.InputProtected(), Logger: log}
		if parent, auto := cfg.EvalStoreParent(); parent != "" {
			store, err := work.NewEvalStore(work.EvalStoreConfig{Parent: parent, Name: cfg.EvalStoreName(),
				MaxSize: cfg.Agent.EvalStoreMaxSize, Logger: log})
			switch {
			case err == nil:
				ev.Store = store
				log.Info("evaluations write derivations to the agent's own store", "eval_store", store.Dir())
			case auto:
				log.Warn("no eval store of the agent's own; evaluations write to Nix's store", "err", err)
			default:
				return daemon.Config{}, fmt.Errorf("agent.eval_store: %w", err)
			}
		}
		dc.Executors[protocol.WorkEval] = ev
		dc.Capacity[protocol.WorkEval] = 1 // evaluations are memory-hungry: one at a time
	}
	return dc, nil
}

func run(ctx context.Context, cfg config.Config, env Env, load func() (config.Config, error)) error {
	level := new(slog.LevelVar)
	level.Set(parseLevel(cfg.LogLevel))
	log := slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: level}))
	dc, err := daemonConfig(cfg, log, env.ProtocolVersion)
	if err != nil {
		return err
	}
	n := sdnotify.New(log)
	var current atomic.Pointer[string]
	current.Store(&cfg.URLs()[0])
	connected := dc.OnConnected
	dc.OnConnected = func(url string) {
		current.Store(&url)
		if connected != nil {
			connected(url)
		}
	}
	dc.OnWelcome = notifyWelcome(n, func() string { return *current.Load() }, dc.OnWelcome)
	dc.OnSessionEnd = func(reason error) {
		n.Status(fmt.Sprintf("reconnecting to %s: %v", strings.Join(cfg.URLs(), ", "), reason))
	}
	d := daemon.New(dc)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go n.Watchdog(ctx)
	n.Status("connecting to " + strings.Join(cfg.URLs(), ", "))
	if env.Signals != nil {
		go func() {
			select {
			case <-env.Signals:
			case <-ctx.Done():
				return
			}
			n.Stopping("draining: taking no new work, finishing running work")
			d.Drain()
			select {
			case <-env.Signals:
				log.Warn("second signal: cancelling running work")
				n.Stopping("stopping: cancelling running work")
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	if env.Reload != nil {
		go reloadOnSignal(ctx, env.Reload, cfg, load, live{level: level, minFreeDisk: d.SetMinFreeDisk}, log)
	}
	return d.Run(ctx)
}
