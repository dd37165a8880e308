package app

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/pgcluster"
)

// Database is an open database and what must be stopped with it.
type Database struct {
	*storage.DB
	cluster *pgcluster.Cluster
}

// Close closes the pool and stops the private PostgreSQL this process started.
func (d *Database) Close() {
	d.DB.Close()
	if d.cluster != nil {
		_ = d.cluster.Stop()
	}
}

// EmbeddedDatabaseName is the database inside the private cluster.
const EmbeddedDatabaseName = "fc"

// OpenDatabase opens database.url, or, when none is configured, a private PostgreSQL
// cluster in state_dir/postgres (started now, or shared with the coordinator that
// already runs it).
func OpenDatabase(ctx context.Context, cfg config.Config, log *slog.Logger) (*Database, error) {
	url, err := cfg.DatabaseURL()
	if err != nil {
		return nil, err
	}
	dbcfg := storage.Config{
		URL:            url,
		MaxConnections: int32(cfg.Database.MaxConnections),
		MinConnections: int32(cfg.Database.MinConnections),
		ConnectTimeout: config.Seconds(cfg.Database.ConnectTimeout),
		IdleTimeout:    config.Seconds(cfg.Database.IdleTimeout),
		MaxLifetime:    config.Seconds(cfg.Database.MaxLifetime),
	}
	var cluster *pgcluster.Cluster
	if dbcfg.URL == "" {
		dir := cfg.EmbeddedDatabaseDir()
		log.Info("no database.url configured: using a private PostgreSQL", "dir", dir)
		c, err := pgcluster.Start(ctx, pgcluster.Config{Dir: dir, Logger: log})
		if err != nil {
			return nil, fmt.Errorf("embedded database: %w", err)
		}
		if err := c.EnsureDatabase(ctx, EmbeddedDatabaseName); err != nil {
			_ = c.Stop()
			return nil, err
		}
		cluster = c
		dbcfg.URL = c.URL(EmbeddedDatabaseName)
	}
	db, err := storage.Open(ctx, dbcfg, log)
	if err != nil {
		if cluster != nil {
			_ = cluster.Stop()
		}
		return nil, err
	}
	return &Database{DB: db, cluster: cluster}, nil
}

// OpenMigrated opens the configured database and applies pending migrations, unless
// auto_migrate is off.
func OpenMigrated(ctx context.Context, cfg config.Config, log *slog.Logger) (*Database, error) {
	db, err := OpenDatabase(ctx, cfg, log)
	if err != nil {
		return nil, err
	}
	if cfg.Database.AutoMigrate {
		if err := db.Migrate(ctx); err != nil {
			db.Close()
			return nil, err
		}
	}
	return db, nil
}
