package cli

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/fc-ci/fc/coordinator/app"
	"github.com/fc-ci/fc/coordinator/config"
)

// reloadOnHUP returns the app.Run hook that, on each SIGHUP until ctx ends, re-reads
// the configuration with load and applies its declarations again. Other settings
// need a restart. A configuration that does not load or apply changes nothing: the
// error is logged and the coordinator goes on as it was.
func reloadOnHUP(load func() (config.Config, error), log *slog.Logger) func(context.Context, *app.App, string) {
	return func(ctx context.Context, a *app.App, _ string) {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		go func() {
			defer signal.Stop(hup)
			for {
				select {
				case <-ctx.Done():
					return
				case <-hup:
					reload(ctx, load, a, log)
				}
			}
		}()
	}
}

func reload(ctx context.Context, load func() (config.Config, error), a *app.App, log *slog.Logger) {
	log.Info("SIGHUP: re-reading the configuration to apply its declarations")
	cfg, err := load()
	if err == nil {
		err = a.ApplyDeclarations(ctx, cfg.Declarations)
	}
	if err != nil {
		log.Error("SIGHUP: configuration not applied; the running state is kept", "err", err)
	}
}
