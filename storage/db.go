// Package storage owns FC's PostgreSQL access: the connection pool, migrations, and
// one file per aggregate (projects, jobsets, keys, ...) with the SQL it runs.
package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/fc-ci/fc/migrations"
)

// Sentinel errors, mapped to HTTP statuses in one place (the API's error writer).
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
)

// Config is the pool's configuration (the [database] section).
type Config struct {
	URL            string
	MaxConnections int32
	MinConnections int32
	ConnectTimeout time.Duration
	IdleTimeout    time.Duration
	MaxLifetime    time.Duration
}

// DB is the pool and the queries that run on it.
type DB struct {
	pool *pgxpool.Pool
	log  *slog.Logger
}

// Open creates the pool. It does not wait for the database: /health reports it.
func Open(ctx context.Context, cfg Config, log *slog.Logger) (*DB, error) {
	pc, err := pgxpool.ParseConfig(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	if cfg.MaxConnections > 0 {
		pc.MaxConns = cfg.MaxConnections
	}
	if cfg.MinConnections > 0 {
		pc.MinConns = cfg.MinConnections
	}
	if cfg.ConnectTimeout > 0 {
		pc.ConnConfig.ConnectTimeout = cfg.ConnectTimeout
	}
	if cfg.IdleTimeout > 0 {
		pc.MaxConnIdleTime = cfg.IdleTimeout
	}
	if cfg.MaxLifetime > 0 {
		pc.MaxConnLifetime = cfg.MaxLifetime
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("open database pool: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &DB{pool: pool, log: log}, nil
}

// Close closes the pool.
func (db *DB) Close() { db.pool.Close() }

// Pool exposes the pool to packages that run their own SQL in tests and tools.
func (db *DB) Pool() *pgxpool.Pool { return db.pool }

// Ping checks that the database answers.
func (db *DB) Ping(ctx context.Context) error { return db.pool.Ping(ctx) }

// Migrator applies the embedded migrations. Two coordinators starting together are
// serialised by a PostgreSQL advisory lock held for the whole run.
type Migrator struct {
	sqlDB    *sql.DB
	provider *goose.Provider
}

// NewMigrator prepares the migrations for the database behind db.
func (db *DB) NewMigrator() (*Migrator, error) {
	sqlDB := stdlib.OpenDBFromPool(db.pool)
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 600))
	if err != nil {
		sqlDB.Close()
		return nil, fmt.Errorf("migration lock: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, sqlDB, migrations.FS,
		goose.WithSessionLocker(locker), goose.WithLogger(goose.NopLogger()))
	if err != nil {
		sqlDB.Close()
		return nil, fmt.Errorf("load migrations: %w", err)
	}
	return &Migrator{sqlDB: sqlDB, provider: p}, nil
}

// Close releases the migrator's connection handle.
func (m *Migrator) Close() error { return m.sqlDB.Close() }

// Up applies every pending migration and returns the versions applied.
func (m *Migrator) Up(ctx context.Context) ([]int64, error) {
	res, err := m.provider.Up(ctx)
	if err != nil {
		return nil, fmt.Errorf("apply migrations: %w", err)
	}
	var applied []int64
	for _, r := range res {
		applied = append(applied, r.Source.Version)
	}
	return applied, nil
}

// UpTo applies the pending migrations up to and including version (tests of a data
// migration first build the database as it was before it).
func (m *Migrator) UpTo(ctx context.Context, version int64) ([]int64, error) {
	res, err := m.provider.UpTo(ctx, version)
	if err != nil {
		return nil, fmt.Errorf("apply migrations up to %d: %w", version, err)
	}
	var applied []int64
	for _, r := range res {
		applied = append(applied, r.Source.Version)
	}
	return applied, nil
}

// MigrationStatus is one migration and whether it is applied.
type MigrationStatus struct {
	Version   int64
	Name      string
	Applied   bool
	AppliedAt time.Time
}

// Status lists every known migration.
func (m *Migrator) Status(ctx context.Context) ([]MigrationStatus, error) {
	st, err := m.provider.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("migration status: %w", err)
	}
	out := make([]MigrationStatus, 0, len(st))
	for _, s := range st {
		out = append(out, MigrationStatus{
			Version: s.Source.Version, Name: s.Source.Path,
			Applied: s.State == goose.StateApplied, AppliedAt: s.AppliedAt,
		})
	}
	return out, nil
}

// Migrate applies pending migrations, logging what it did.
func (db *DB) Migrate(ctx context.Context) error {
	m, err := db.NewMigrator()
	if err != nil {
		return err
	}
	defer m.Close()
	applied, err := m.Up(ctx)
	if err != nil {
		return err
	}
	if len(applied) > 0 {
		db.log.Info("applied migrations", "versions", applied)
	}
	return nil
}

// CreateMigration writes a new numbered SQL migration file into dir.
func CreateMigration(dir, name string, out io.Writer) error {
	goose.SetSequential(true)
	goose.SetLogger(goose.NopLogger())
	if err := goose.Create(nil, dir, name, "sql"); err != nil {
		return fmt.Errorf("create migration %s: %w", name, err)
	}
	fmt.Fprintf(out, "created migration %q in %s\n", name, dir)
	return nil
}

// mapErr turns driver errors into the package's sentinel errors.
func mapErr(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return ErrNotFound
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "23505": // unique_violation
			return fmt.Errorf("%w: %s", ErrConflict, pe.Detail)
		case "23503": // foreign_key_violation
			return fmt.Errorf("%w: %s", ErrNotFound, pe.Detail)
		}
	}
	return err
}
