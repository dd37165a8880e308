package cli

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/fc-ci/fc/coordinator/api"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/fleet"
	"github.com/fc-ci/fc/coordinator/metrics"
	"github.com/fc-ci/fc/coordinator/server"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// signalContext ends on SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// NewServer assembles the coordinator's parts on db: the REST API, the fleet of agent
// sessions and the HTTP server that carries them. addr names this coordinator.
func NewServer(cfg config.Config, db *storage.DB, log *slog.Logger, addr string) (*server.Server, *fleet.Fleet) {
	host, _ := os.Hostname()
	fl := fleet.New(fleet.Config{CoordinatorID: host + "/" + addr, Heartbeat: config.Seconds(cfg.Server.AgentHeartbeat),
		Version: protocol.BuildVersion, Logger: log}, db)
	srv := server.New(server.Config{
		Server:         cfg.Server,
		Version:        protocol.BuildVersion,
		Logger:         log,
		APIRoutes:      []server.Routes{api.New(api.Config{Logger: log}, db), fl},
		BeforeShutdown: []func(context.Context){func(ctx context.Context) { _ = fl.Shutdown(ctx) }},
	}, db, metrics.New(db, log))
	return srv, fl
}

// serve runs the coordinator until ctx ends.
func serve(ctx context.Context, cfg config.Config, env Env) error {
	log := NewLogger(env.Stderr, cfg.LogLevel)
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return fmt.Errorf("create state_dir: %w", err)
	}
	db, err := OpenDatabase(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer db.Close()
	if cfg.Database.AutoMigrate {
		if err := db.Migrate(ctx); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", cfg.Server.Addr())
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Server.Addr(), err)
	}
	srv, _ := NewServer(cfg, db.DB, log, ln.Addr().String())
	log.Info("coordinator listening", "addr", ln.Addr().String(), "version", protocol.BuildVersion)
	return srv.Serve(ctx, ln, 20*time.Second)
}
