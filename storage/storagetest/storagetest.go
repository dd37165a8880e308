// Package storagetest gives any package's tests a real, migrated, isolated PostgreSQL
// database. One throwaway cluster is started per test binary from the machine's
// PostgreSQL server binaries (or FC_TEST_DATABASE_URL names a server to use); every
// test gets its own database, copied from a migrated template, dropped afterwards.
//
// A package using it declares
//
//	func TestMain(m *testing.M) { storagetest.Main(m) }
//
// so the cluster is stopped and removed when the tests end.
package storagetest

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/pgcluster"
)

// server is the per-binary state; test helpers may hold such state, production code may not.
var server struct {
	once     sync.Once
	err      error
	cluster  *pgcluster.Cluster
	dir      string
	adminURL string
	urlFor   func(db string) string
	template string
	counter  atomic.Int64
}

// Main runs the tests, then stops the cluster and removes its files.
func Main(m *testing.M) {
	code := m.Run()
	if server.cluster != nil {
		_ = server.cluster.Stop()
	}
	if server.dir != "" {
		_ = os.RemoveAll(server.dir)
	}
	if server.template != "" && server.cluster == nil && server.adminURL != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if conn, err := pgx.Connect(ctx, server.adminURL); err == nil {
			_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{server.template}.Sanitize())
			conn.Close(ctx)
		}
		cancel()
	}
	os.Exit(code)
}

func start() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if url := os.Getenv("FC_TEST_DATABASE_URL"); url != "" {
		if _, err := pgx.ParseConfig(url); err != nil || !strings.Contains(url, "://") {
			return fmt.Errorf("FC_TEST_DATABASE_URL must be a postgres:// URL: %v", err)
		}
		server.adminURL = url
		server.urlFor = func(db string) string { return replaceDatabase(url, db) }
	} else {
		dir, err := os.MkdirTemp("", "fc-pg-")
		if err != nil {
			return err
		}
		server.dir = dir
		c, err := pgcluster.Start(ctx, pgcluster.Config{
			Dir: dir,
			// Durability does not matter for throwaway test data; speed does.
			ExtraArgs: []string{"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=300"},
		})
		if err != nil {
			return fmt.Errorf("start a throwaway PostgreSQL for tests (database tests never skip): %w", err)
		}
		server.cluster = c
		server.adminURL = c.URL("postgres")
		server.urlFor = c.URL
	}
	server.template = fmt.Sprintf("fc_template_%d_%d", os.Getpid(), time.Now().UnixNano()%1e6)
	if err := createDatabase(ctx, server.template, ""); err != nil {
		return err
	}
	db, err := storage.Open(ctx, storage.Config{URL: server.urlFor(server.template)}, nil)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := db.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate template database: %w", err)
	}
	return nil
}

func createDatabase(ctx context.Context, name, template string) error {
	conn, err := pgx.Connect(ctx, server.adminURL)
	if err != nil {
		return fmt.Errorf("connect to test server: %w", err)
	}
	defer conn.Close(ctx)
	q := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	if template != "" {
		q += " TEMPLATE " + pgx.Identifier{template}.Sanitize()
	}
	if _, err := conn.Exec(ctx, q); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// URL returns the connection string of a new, migrated database that is dropped when
// the test ends.
func URL(t testing.TB) string {
	t.Helper()
	return newDatabase(t, "fc_test", true)
}

// EmptyURL returns the URL of a new database with no migrations applied.
func EmptyURL(t testing.TB) string {
	t.Helper()
	return newDatabase(t, "fc_empty", false)
}

// New returns a storage.DB on a new, migrated database, closed and dropped when the
// test ends.
func New(t testing.TB) *storage.DB {
	t.Helper()
	db, err := storage.Open(context.Background(), storage.Config{URL: URL(t), MaxConnections: 20}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("open test database: %v", err)
	}
	t.Cleanup(db.Close)
	return db
}

func newDatabase(t testing.TB, prefix string, migrated bool) string {
	t.Helper()
	server.once.Do(func() { server.err = start() })
	if server.err != nil {
		t.Fatalf("test database: %v", server.err)
	}
	name := fmt.Sprintf("%s_%d_%d", prefix, os.Getpid(), server.counter.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	template := ""
	if migrated {
		template = server.template
	}
	if err := createDatabase(ctx, name, template); err != nil {
		t.Fatalf("test database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, server.adminURL)
		if err != nil {
			t.Logf("drop test database %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Logf("drop test database %s: %v", name, err)
		}
	})
	return server.urlFor(name)
}

// replaceDatabase points a postgres:// URL at another database.
func replaceDatabase(raw, db string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	u.Path = "/" + db
	return u.String()
}
