package app

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/declare"
	"github.com/fc-ci/fc/storage"
)

// newRepositories reads projects' declarative files every evaluator.declarative_interval.
func newRepositories(s config.Config, db *storage.DB, log *slog.Logger, wake func()) *declare.Repositories {
	return declare.NewRepositories(declare.RepositoriesConfig{GitDir: s.GitDir(), GitTimeout: config.Seconds(s.Eval.GitTimeout),
		Interval: config.Seconds(s.Eval.DeclarativeInterval), AllowedInputPaths: s.Eval.AllowedInputPaths, Wake: wake,
		Logger: log}, db)
}

// ApplyDeclarations makes the database hold what d declares (projects, jobsets, API
// keys, agent keys, users): at start, and on SIGHUP with the re-read configuration.
// Agents it revoked are disconnected at once. It logs what changed; an error changes
// nothing.
func (a *App) ApplyDeclarations(ctx context.Context, d config.Declarations) error {
	rep, err := declare.Apply(ctx, a.db, d, a.settings.Eval.AllowedInputPaths)
	if err != nil {
		return fmt.Errorf("declarative configuration: %w", err)
	}
	for _, id := range rep.RevokedAgents {
		a.Fleet.Disconnect(id)
	}
	if d.File == "" {
		return nil
	}
	args := []any{"file", d.File, "changed", rep.Changed()}
	for _, kind := range []string{"projects", "jobsets", "api_keys", "agents", "users"} {
		if c := rep.Counts[kind]; c != nil {
			args = append(args, kind, fmt.Sprintf("%d created, %d updated, %d removed", c.Created, c.Updated, c.Removed))
		}
	}
	a.log.Info("declarations applied", args...)
	return nil
}
