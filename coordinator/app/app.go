// Package app assembles the coordinator: it builds every component from the
// configuration (database, binary cache, log store, the two schedulers, the fleet of
// agent sessions, the REST APIs, the dashboard and the HTTP server), wires them
// together and runs them. fc-coordinator serve, its cache gc command and the tests'
// real coordinator (coordtest) all assemble it here.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/buildapi"
	"github.com/fc-ci/fc/coordinator/buildqueue"
	"github.com/fc-ci/fc/coordinator/cache"
	"github.com/fc-ci/fc/coordinator/channels"
	"github.com/fc-ci/fc/coordinator/cluster"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/declare"
	"github.com/fc-ci/fc/coordinator/evalapi"
	"github.com/fc-ci/fc/coordinator/evalqueue"
	"github.com/fc-ci/fc/coordinator/fleet"
	"github.com/fc-ci/fc/coordinator/lease"
	"github.com/fc-ci/fc/coordinator/localagent"
	"github.com/fc-ci/fc/coordinator/logs"
	"github.com/fc-ci/fc/coordinator/metrics"
	"github.com/fc-ci/fc/coordinator/objstore"
	"github.com/fc-ci/fc/coordinator/outbox"
	"github.com/fc-ci/fc/coordinator/people"
	"github.com/fc-ci/fc/coordinator/projectapi"
	"github.com/fc-ci/fc/coordinator/pullrequests"
	"github.com/fc-ci/fc/coordinator/searchapi"
	"github.com/fc-ci/fc/coordinator/server"
	"github.com/fc-ci/fc/dashboard"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// Config is what the coordinator is assembled from.
type Config struct {
	// Settings are the loaded configuration (config.Load, or config.Defaults in tests).
	Settings config.Config
	// DB is the coordinator's database, open and migrated.
	DB     *storage.DB
	Logger *slog.Logger
	// Addr is the address the coordinator listens on; with the host name it names
	// this coordinator in agents' presence rows.
	Addr string
}

// App is an assembled coordinator.
type App struct {
	Server *server.Server
	Fleet  *fleet.Fleet
	Cache  *cache.Cache
	Evals  *evalqueue.Evals
	Builds *buildqueue.Builds
	// PullRequests keeps the pull requests' jobsets (webhooks and its poller).
	PullRequests *pullrequests.PullRequests
	// Outbox delivers commit statuses, e-mails, webhooks and run_command.
	Outbox *outbox.Outbox
	// Channels advances and serves the channels (/channel/).
	Channels *channels.Channels
	// Repositories applies the jobsets projects' repositories declare (.fc.toml).
	Repositories *declare.Repositories
	// Metrics is the registry /metrics serves.
	Metrics *metrics.Metrics
	// Cluster is this coordinator's membership ([cluster]); nil when off.
	Cluster *cluster.Cluster

	settings config.Config
	db       *storage.DB
	log      *slog.Logger
	// logStore holds build logs; on S3 it moves logs whose upload failed.
	logStore logs.Store
}

// shutdownGrace is how long fc-coordinator serve lets requests in flight finish.
const shutdownGrace = 20 * time.Second

// Run is fc-coordinator serve: it opens the configured database (migrating it unless
// database.auto_migrate is off), listens on server.host:server.port, assembles the
// coordinator, applies its declarations and serves until ctx ends. Each of ready, in
// order, is called with the coordinator and the address once the listener is up, the
// coordinator assembled and its declarations applied (the SIGHUP reload, systemd's
// READY=1).
func Run(ctx context.Context, settings config.Config, log *slog.Logger, ready ...func(ctx context.Context, a *App, addr string)) error {
	if err := os.MkdirAll(settings.StateDir, 0o755); err != nil {
		return fmt.Errorf("create state_dir: %w", err)
	}
	db, err := OpenMigrated(ctx, settings, log)
	if err != nil {
		return err
	}
	defer db.Close()
	ln, err := net.Listen("tcp", settings.Server.Addr())
	if err != nil {
		return fmt.Errorf("listen on %s: %w", settings.Server.Addr(), err)
	}
	a, err := New(Config{Settings: settings, DB: db.DB, Logger: log, Addr: ln.Addr().String()})
	if err != nil {
		ln.Close()
		return err
	}
	if err := a.ApplyDeclarations(ctx, settings.Declarations); err != nil {
		ln.Close()
		return err
	}
	for _, f := range ready {
		f(ctx, a, ln.Addr().String())
	}
	return a.Serve(ctx, ln, shutdownGrace)
}

// New assembles the coordinator over cfg.DB. Nothing runs until RunLoops or Serve.
func New(cfg Config) (*App, error) {
	s, db, log := cfg.Settings, cfg.DB, cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	host, _ := os.Hostname()
	m := metrics.New(db, log)
	obj, err := openObjectStore(s)
	if err != nil {
		return nil, err
	}
	logStore, err := newLogStore(s, obj)
	if err != nil {
		return nil, err
	}
	var readKeys auth.Readers // cache.private: reading the cache and its products needs an API key (the cache also takes agents' tokens)
	if s.Cache.Private {
		readKeys = db
	}
	ch, err := newCache(s, db, log, m, readKeys, buildapi.LogByDrv(db, logStore), obj)
	if err != nil {
		return nil, err
	}
	hub := logs.NewHub() // the scheduler wakes the live log viewers of buildapi through it

	// The one cycle: the fleet calls into the schedulers (session hooks, reports, log
	// streams) and the schedulers command agents through the fleet. The schedulers
	// are built first with agents, which New binds to the fleet right after building
	// it, before anything runs or serves.
	agents := &sessions{}
	cl, err := newCluster(s, cfg.Addr, agents, log)
	if err != nil {
		return nil, err
	}
	leases := lease.New(lease.Config{Store: db, Logger: log, Settings: storage.LeaseConfig{TTL: config.Seconds(s.Queue.LeaseTTL),
		Grace: config.Seconds(s.Queue.LeaseGrace), MaxAttempts: s.Queue.MaxAttempts, Backoff: config.Seconds(s.Queue.RetryBackoff),
		Health: storage.AgentHealth{Threshold: s.Queue.AgentFailureThreshold, Backoff: config.Seconds(s.Queue.AgentBackoff),
			MaxBackoff: config.Seconds(s.Queue.AgentBackoffMax)}}})
	ev := evalqueue.New(evalqueue.Config{MaxConcurrentEvals: s.Eval.MaxConcurrentEvals, EvalTimeout: config.Seconds(s.Eval.EvalTimeout),
		MaxMemoryMB: s.Eval.MaxMemorySize, Workers: s.Eval.Workers, RestrictEval: s.Eval.RestrictEval,
		AllowIFD: s.Eval.AllowIFD, GitTimeout: config.Seconds(s.Eval.GitTimeout), GitDir: s.GitDir(), Logger: log,
		Leases: leases, AllowedInputPaths: s.Eval.AllowedInputPaths, Dispatcher: agents, Metrics: m}, db)
	repos := newRepositories(s, db, log, ev.Wake)
	prs := pullrequests.New(pullrequests.Config{Interval: config.Seconds(s.Eval.PullRequestInterval), GitDir: s.GitDir(),
		GitTimeout: config.Seconds(s.Eval.GitTimeout), Wake: ev.Wake, Logger: log}, db)
	bu := buildqueue.New(buildqueue.Config{Leases: leases, SweepInterval: config.Seconds(s.Queue.SweepInterval),
		UnsupportedWait: config.Seconds(s.Queue.UnsupportedWait), BuildTimeout: config.Seconds(s.Queue.BuildTimeout),
		MaxSilent: config.Seconds(s.Queue.MaxSilent), MaxLogSize: s.Logs.MaxLogSize, MaxOutputSize: s.Queue.MaxOutputSize,
		Substituters: s.Cache.UpstreamCaches, TrustedKeys: append([]string{ch.PublicKey()}, s.Cache.UpstreamKeys...),
		Logs: logStore, Hub: hub, Sign: ch.Signer(), Dispatcher: agents, Metrics: m, Logger: log}, db)
	fl := fleet.New(fleet.Config{CoordinatorID: host + "/" + cfg.Addr, Heartbeat: config.Seconds(s.Server.AgentHeartbeat),
		Version: protocol.BuildVersion, Logger: log, Hooks: fleet.CombineHooks(leases.Hooks(), ev.Hooks(), bu.Hooks(), clusterHooks(cl)),
		Remote: remote(cl),
		Streams: map[string]fleet.StreamHandler{
			protocol.StreamUpload:     ch.HandleUpload,
			protocol.StreamPresent:    ch.HandlePresent,
			protocol.StreamEvalReport: ev.HandleReport,
			protocol.StreamEvalStream: ev.HandleStream,
			protocol.StreamLog:        bu.HandleLog,
			protocol.StreamStepReport: bu.HandleReport,
		}}, db)
	agents.fleet = fl
	outboxCfg, err := outbox.FromConfig(s, logStore, log)
	if err != nil {
		return nil, err
	}
	ob := outbox.New(outboxCfg, db)
	chans := channels.New(channels.Config{GitDir: s.GitDir(), CacheURL: cacheURL(s, cfg.Addr),
		GitTimeout: config.Seconds(s.Eval.GitTimeout), ReadKeys: readKeys, Logger: log}, db)

	// The dashboard submits its forms to the API in-process, through the server's
	// handler, which is built after it (it mounts the dashboard).
	api := &handlerRef{}
	accounts := people.New(people.Config{Logger: log}, db)
	dash, err := dashboard.New(dashboard.Config{Version: protocol.BuildVersion, Logger: log, API: api,
		CachePublicKey: ch.PublicKey(), Accounts: accounts, BuildTimeout: config.Seconds(s.Queue.BuildTimeout),
		MaxSilent: config.Seconds(s.Queue.MaxSilent), MaxLogSize: s.Logs.MaxLogSize, PublicURL: strings.TrimRight(s.Server.PublicURL, "/")}, db)
	if err != nil {
		return nil, err
	}
	routes, mounts := clusterRoutes(cl, fl)
	mounts["/nix-cache"], mounts["/channel"], mounts["/"] = ch.Handler(), chans.Handler(), dash.Handler()
	srv := server.New(server.Config{
		Server:  s.Server,
		Version: protocol.BuildVersion,
		Logger:  log,
		APIRoutes: append([]server.Routes{
			projectapi.New(projectapi.Config{Logger: log, AllowedInputPaths: s.Eval.AllowedInputPaths}, db),
			fl,
			ch,
			evalapi.New(evalapi.Config{Scheduler: ev, PullRequests: prs, Pushed: repos.Pushed, Logger: log}, db),
			buildapi.New(buildapi.Config{Scheduler: bu, Logs: logStore, Hub: hub, Files: ch.OpenFile, ReadKeys: readKeys, Logger: log,
				Route: logRoute(cl, fl)}, db),
			accounts,
			ob,
			searchapi.New(searchapi.Config{Logger: log}, db),
			chans,
		}, routes...),
		// A session cookie signs in every route: pages, the API and the cache.
		Middleware:     []func(http.Handler) http.Handler{accounts.Middleware},
		Mounts:         mounts,
		BeforeShutdown: []func(context.Context){func(ctx context.Context) { _ = fl.Shutdown(ctx) }},
	}, db, m)
	api.h = srv.Handler()
	return &App{Server: srv, Fleet: fl, Cache: ch, Evals: ev, Builds: bu, PullRequests: prs, Outbox: ob, Channels: chans,
		Repositories: repos, Metrics: m, Cluster: cl, settings: s, db: db, log: log, logStore: logStore}, nil
}

// cacheURL is the binary cache's URL as clients reach it: server.public_url when set,
// else the address the coordinator listens on.
func cacheURL(s config.Config, addr string) string {
	if s.Server.PublicURL == "" && addr != "" {
		return "http://" + addr + "/nix-cache"
	}
	return s.PublicURL() + "/nix-cache"
}

// newCache builds the binary cache: its blob store, its signing key (generated on
// first start) and its settings.
func newCache(s config.Config, db *storage.DB, log *slog.Logger, m *metrics.Metrics, readKeys auth.Readers,
	buildLogs cache.LogSource, obj *objstore.Store) (*cache.Cache, error) {
	blobs, err := newBlobStore(s, obj)
	if err != nil {
		return nil, err
	}
	key, created, err := cache.LoadOrCreateKey(s.CacheKeyFile(), s.CacheKeyName())
	if err != nil {
		return nil, err
	}
	ch, err := cache.New(cache.Config{Priority: s.Cache.Priority, UpstreamCaches: s.Cache.UpstreamCaches,
		UpstreamKeys: s.Cache.UpstreamKeys, PlainNARs: s.Cache.PlainNARs, Logger: log, Registerer: m.Registerer(),
		ReadKeys: readKeys, BuildLogs: buildLogs, Redirect: s.Cache.Redirect, PresignExpiry: config.Seconds(s.Cache.PresignExpiry)}, db, blobs, key)
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("generated the cache signing key", "file", s.CacheKeyFile(), "public_key", ch.PublicKey())
	}
	return ch, nil
}

// RunLoops runs the background loops (evaluation and build scheduling, polling the
// forges for pull requests, delivering notifications, cache retention and its
// deletion listener) until ctx ends, and waits for them.
func (a *App) RunLoops(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(7)
	go func() { defer wg.Done(); a.Repositories.Run(ctx) }()
	go func() { defer wg.Done(); a.Channels.Run(ctx) }()
	go func() { defer wg.Done(); a.Evals.Run(ctx) }()
	go func() { defer wg.Done(); a.Outbox.Run(ctx) }()
	go func() {
		defer wg.Done()
		a.leadJob(ctx, "pull-request-poll", a.settings.Eval.PullRequestInterval > 0, a.PullRequests.Run)
	}()
	go func() { defer wg.Done(); a.Builds.Run(ctx) }()
	go func() { defer wg.Done(); a.Cache.ListenForDeletions(ctx) }()
	if s3, ok := a.logStore.(*logs.S3); ok {
		wg.Add(1)
		go func() { defer wg.Done(); s3.Run(ctx, 10*time.Second, a.log) }()
	}
	if a.Cluster != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.Cluster.Run(ctx); err != nil {
				a.log.Error("cluster membership", "err", err)
			}
		}()
	}
	if gc := a.settings.GC; gc.CleanupInterval > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.leadJob(ctx, "cache-retention", true, func(ctx context.Context) {
				a.Cache.RunGC(ctx, config.Seconds(gc.CleanupInterval), config.Days(gc.MaxAgeDays))
			})
		}()
	}
	wg.Wait()
}

// jobRetry is how often a coordinator tries to take over a periodic job another
// coordinator holds (and checks that it still holds the ones it runs).
const jobRetry = 5 * time.Second

// leadJob runs a periodic job on one coordinator of those sharing the database (a
// PostgreSQL advisory lock per job, see storage.LeadJob), if enabled.
func (a *App) leadJob(ctx context.Context, name string, enabled bool, run func(context.Context)) {
	if !enabled {
		return
	}
	var told bool
	a.db.LeadJob(ctx, name, jobRetry, func(ctx context.Context) {
		a.log.Info("periodic job runs on this coordinator", "job", name)
		told = false
		run(ctx)
	}, func() {
		if !told {
			told = true
			a.log.Info("periodic job runs on another coordinator", "job", name)
		}
	})
}

// Serve runs the loops, the local agent ([local_agent]) and the HTTP server on ln
// until ctx ends. The local agent stops before the server (it hands its work back
// while the coordinator still answers), the server lets requests in flight finish
// within grace, and Serve returns once the loops have ended too.
func (a *App) Serve(ctx context.Context, ln net.Listener, grace time.Duration) error {
	loops, stopLoops := context.WithCancel(ctx)
	loopsDone := make(chan struct{})
	go func() { defer close(loopsDone); a.RunLoops(loops) }()
	defer func() { stopLoops(); <-loopsDone }()
	a.log.Info("coordinator listening", "addr", ln.Addr().String(), "version", protocol.BuildVersion)
	serveCtx := ctx
	if a.settings.LocalAgent.Enabled {
		la, err := localagent.Start(ctx, localagent.FromConfig(a.settings, ln.Addr(), a.log), a.db)
		switch {
		case errors.Is(err, localagent.ErrRevoked):
			a.log.Error("not starting the local agent", "err", err)
		case err != nil:
			ln.Close()
			return err
		default:
			var stopAgent func()
			serveCtx, stopAgent = la.StopFirst(ctx)
			defer stopAgent()
		}
	}
	return a.Server.Serve(serveCtx, ln, grace)
}
