package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fc-ci/fc/coordinator/api"
	"github.com/fc-ci/fc/coordinator/buildqueue"
	"github.com/fc-ci/fc/coordinator/cache"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/evalqueue"
	"github.com/fc-ci/fc/coordinator/fleet"
	"github.com/fc-ci/fc/coordinator/lease"
	"github.com/fc-ci/fc/coordinator/localagent"
	"github.com/fc-ci/fc/coordinator/logs"
	"github.com/fc-ci/fc/coordinator/metrics"
	"github.com/fc-ci/fc/coordinator/server"
	"github.com/fc-ci/fc/dashboard"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// signalContext ends on SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// Parts are the coordinator's assembled components.
type Parts struct {
	Server *server.Server
	Fleet  *fleet.Fleet
	Cache  *cache.Cache
	Evals  *evalqueue.Evals
	Builds *buildqueue.Builds
}

// Run runs the background loops (evaluation and build scheduling, cache retention
// and its deletion listener) until ctx ends, and waits for them.
func (p Parts) Run(ctx context.Context, cfg config.Config) {
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); p.Evals.Run(ctx) }()
	go func() { defer wg.Done(); p.Builds.Run(ctx) }()
	go func() { defer wg.Done(); p.Cache.ListenForDeletions(ctx) }()
	if cfg.GC.CleanupInterval > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Cache.RunGC(ctx, config.Seconds(cfg.GC.CleanupInterval), config.Days(cfg.GC.MaxAgeDays))
		}()
	}
	wg.Wait()
}

// NewServer assembles the coordinator's parts on db: the REST API, the fleet of agent
// sessions, the binary cache and the HTTP server that carries them. addr names this
// coordinator.
func NewServer(cfg config.Config, db *storage.DB, log *slog.Logger, addr string) (Parts, error) {
	host, _ := os.Hostname()
	m := metrics.New(db, log)
	cacheDir := cfg.Cache.Dir
	if cacheDir == "" {
		cacheDir = filepath.Join(cfg.StateDir, "cache")
	}
	blobs, err := cache.NewDir(cacheDir)
	if err != nil {
		return Parts{}, err
	}
	keyFile, keyName := cfg.Cache.SecretKeyFile, cfg.Cache.KeyName
	if keyFile == "" {
		keyFile = filepath.Join(cfg.StateDir, "cache-key.sec")
	}
	if keyName == "" {
		keyName = "fc-" + strings.SplitN(host, ".", 2)[0] + "-1"
	}
	key, created, err := cache.LoadOrCreateKey(keyFile, keyName)
	if err != nil {
		return Parts{}, err
	}
	cc := cache.Config{Priority: cfg.Cache.Priority, UpstreamCaches: cfg.Cache.UpstreamCaches,
		UpstreamKeys: cfg.Cache.UpstreamKeys, PlainNARs: cfg.Cache.PlainNARs, Logger: log, Registerer: m.Registry}
	if cfg.Cache.Private {
		cc.ReadKeys = db
	}
	ch, err := cache.New(cc, db, blobs, key)
	if err != nil {
		return Parts{}, err
	}
	if created {
		log.Info("generated the cache signing key", "file", keyFile, "public_key", ch.PublicKey())
	}
	leases := lease.New(lease.Config{Store: db, Logger: log, Settings: storage.LeaseConfig{TTL: config.Seconds(cfg.Queue.LeaseTTL),
		Grace: config.Seconds(cfg.Queue.LeaseGrace), MaxAttempts: cfg.Queue.MaxAttempts, Backoff: config.Seconds(cfg.Queue.RetryBackoff)}})
	ev := evalqueue.New(evalqueue.Config{MaxConcurrentEvals: cfg.Eval.MaxConcurrentEvals, EvalTimeout: config.Seconds(cfg.Eval.EvalTimeout),
		MaxMemoryMB: cfg.Eval.MaxMemorySize, Workers: cfg.Eval.Workers, RestrictEval: cfg.Eval.RestrictEval,
		AllowIFD: cfg.Eval.AllowIFD, GitTimeout: config.Seconds(cfg.Eval.GitTimeout), GitDir: filepath.Join(cfg.StateDir, "git"), Logger: log,
		Leases: leases, AllowedInputPaths: cfg.Eval.AllowedInputPaths}, db, nil)
	logDir := cfg.Logs.LogDir
	if logDir == "" {
		logDir = filepath.Join(cfg.StateDir, "logs")
	}
	logStore, err := logs.NewDir(logDir, cfg.Logs.Compress)
	if err != nil {
		return Parts{}, err
	}
	bu := buildqueue.New(buildqueue.Config{Leases: leases, SweepInterval: config.Seconds(cfg.Queue.SweepInterval),
		UnsupportedWait: config.Seconds(cfg.Queue.UnsupportedWait), BuildTimeout: config.Seconds(cfg.Queue.BuildTimeout),
		MaxSilent: config.Seconds(cfg.Queue.MaxSilent), MaxLogSize: cfg.Logs.MaxLogSize, MaxOutputSize: cfg.Queue.MaxOutputSize,
		Substituters: cfg.Cache.UpstreamCaches, TrustedKeys: append([]string{ch.PublicKey()}, cfg.Cache.UpstreamKeys...),
		Logs: logStore, Sign: ch.Signer(), ReadKeys: cc.ReadKeys, Logger: log}, db)
	bu.SetFiles(ch.OpenFile)
	ch.SetLogSource(bu.LogByDrv)
	fl := fleet.New(fleet.Config{CoordinatorID: host + "/" + addr, Heartbeat: config.Seconds(cfg.Server.AgentHeartbeat),
		Version: protocol.BuildVersion, Logger: log, Hooks: fleet.CombineHooks(leases.Hooks(), ev.Hooks(), bu.Hooks()),
		Streams: map[string]fleet.StreamHandler{
			protocol.StreamUpload:     ch.HandleUpload,
			protocol.StreamPresent:    ch.HandlePresent,
			protocol.StreamEvalReport: ev.HandleReport,
			protocol.StreamLog:        bu.HandleLog,
			protocol.StreamStepReport: bu.HandleReport,
		}}, db)
	ev.SetFleet(fl)
	bu.SetFleet(fl)
	dash, err := dashboard.New(dashboard.Config{Version: protocol.BuildVersion, Logger: log}, db)
	if err != nil {
		return Parts{}, err
	}
	srv := server.New(server.Config{
		Server:         cfg.Server,
		Version:        protocol.BuildVersion,
		Logger:         log,
		APIRoutes:      []server.Routes{api.New(api.Config{Logger: log, AllowedInputPaths: cfg.Eval.AllowedInputPaths}, db), fl, ch, ev, bu},
		Mounts:         map[string]http.Handler{"/nix-cache": ch.Handler(), "/": dash.Handler()},
		BeforeShutdown: []func(context.Context){func(ctx context.Context) { _ = fl.Shutdown(ctx) }},
	}, db, m)
	return Parts{Server: srv, Fleet: fl, Cache: ch, Evals: ev, Builds: bu}, nil
}

// serve runs the coordinator until ctx ends.
func serve(ctx context.Context, cfg config.Config, env Env) error {
	log := NewLogger(env.Stderr, cfg.LogLevel)
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return fmt.Errorf("create state_dir: %w", err)
	}
	db, err := openMigrated(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer db.Close()
	ln, err := net.Listen("tcp", cfg.Server.Addr())
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Server.Addr(), err)
	}
	parts, err := NewServer(cfg, db.DB, log, ln.Addr().String())
	if err != nil {
		ln.Close()
		return err
	}
	srv := parts.Server
	loops, stopLoops := context.WithCancel(ctx)
	loopsDone := make(chan struct{})
	go func() { defer close(loopsDone); parts.Run(loops, cfg) }()
	defer func() { stopLoops(); <-loopsDone }()
	log.Info("coordinator listening", "addr", ln.Addr().String(), "version", protocol.BuildVersion)
	serveCtx := ctx
	if cfg.LocalAgent.Enabled {
		la, err := localagent.Start(ctx, localagent.FromConfig(cfg, ln.Addr(), log), db.DB)
		switch {
		case errors.Is(err, localagent.ErrRevoked):
			log.Error("not starting the local agent", "err", err)
		case err != nil:
			ln.Close()
			return err
		default:
			var stopAgent func()
			serveCtx, stopAgent = la.StopFirst(ctx)
			defer stopAgent()
		}
	}
	return srv.Serve(serveCtx, ln, 20*time.Second)
}
