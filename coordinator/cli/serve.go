package cli

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/fc-ci/fc/coordinator/api"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/metrics"
	"github.com/fc-ci/fc/coordinator/server"
	"github.com/fc-ci/fc/protocol"
)

// signalContext ends on SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
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
	m := metrics.New(db, log)
	srv := server.New(server.Config{
		Server:    cfg.Server,
		Version:   protocol.BuildVersion,
		Logger:    log,
		APIRoutes: []server.Routes{api.New(api.Config{Logger: log}, db.DB)},
	}, db.DB, m)
	ln, err := net.Listen("tcp", cfg.Server.Addr())
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Server.Addr(), err)
	}
	log.Info("coordinator listening", "addr", ln.Addr().String(), "version", protocol.BuildVersion)
	return srv.Serve(ctx, ln, 20*time.Second)
}
