package cli

import (
	"context"
	"log/slog"

	"github.com/fc-ci/fc/coordinator/app"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/internal/sdnotify"
)

// serveNotified is fc-coordinator serve under systemd (Type=notify): READY=1 once the
// database is migrated and the listener up, STOPPING=1 when ctx ends and the server
// drains, and watchdog pings until it has stopped. Outside systemd it is app.Run.
func serveNotified(ctx context.Context, cfg config.Config, log *slog.Logger, started ...func(context.Context, *app.App, string)) error {
	n := sdnotify.New(log)
	watchdog, stopWatchdog := context.WithCancel(context.Background())
	defer stopWatchdog()
	go n.Watchdog(watchdog) // pings through start-up and draining too: both may take a while
	n.Status("starting: opening and migrating the database")
	stopping := context.AfterFunc(ctx, func() {
		n.Stopping("stopping: handing the local agent's work back, finishing requests in flight")
	})
	defer stopping()
	ready := func(_ context.Context, _ *app.App, addr string) { n.Ready("serving on " + addr) }
	return app.Run(ctx, cfg, log, append(started, ready)...) // started first: SIGHUP is handled once READY=1 is sent
}
