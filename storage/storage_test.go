package storage_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

func openEmpty(t *testing.T) *storage.DB {
	t.Helper()
	db, err := storage.Open(context.Background(), storage.Config{URL: storagetest.EmptyURL(t)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db
}

// migratedTo opens a new database migrated up to version (a data migration's test
// fills it in the old schema, then applies the rest with the migrator returned).
func migratedTo(t *testing.T, version int64) (*storage.DB, *storage.Migrator) {
	t.Helper()
	db := openEmpty(t)
	m, err := db.NewMigrator()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if _, err := m.UpTo(context.Background(), version); err != nil {
		t.Fatal(err)
	}
	return db, m
}

func tables(t *testing.T, db *storage.DB) map[string]bool {
	t.Helper()
	rows, err := db.Pool().Query(context.Background(),
		`SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]bool{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		got[n] = true
	}
	return got
}

var modelTables = []string{"projects", "jobsets", "jobset_inputs", "evaluations", "evaluation_errors",
	"builds", "steps", "step_edges", "step_outputs", "build_outputs", "build_products", "build_metrics",
	"aggregate_constituents", "agents", "enrollment_tokens", "users", "api_keys", "sessions", "roles",
	"channels", "starred_jobs", "narinfos", "step_logs", "failed_paths", "small_blobs"}

func TestMigrate_EmptyDatabaseGetsWholeModelAndIsIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := openEmpty(t)
	if len(tables(t, db)) != 0 {
		t.Fatal("database not empty before migration")
	}
	m, err := db.NewMigrator()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	applied, err := m.Up(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) == 0 {
		t.Fatal("no migration applied to an empty database")
	}
	got := tables(t, db)
	for _, name := range modelTables {
		if !got[name] {
			t.Errorf("table %s missing after migration", name)
		}
	}
	again, err := m.Up(ctx)
	if err != nil || len(again) != 0 {
		t.Fatalf("second Up applied %v, err %v; want nothing", again, err)
	}
	st, err := m.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if !s.Applied {
			t.Errorf("migration %d not applied after Up", s.Version)
		}
	}
}

func TestMigrate_ConcurrentRunsLeaveOneCorrectSchema(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := storagetest.EmptyURL(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db, err := storage.Open(ctx, storage.Config{URL: url}, nil)
			if err != nil {
				errs[i] = err
				return
			}
			defer db.Close()
			errs[i] = db.Migrate(ctx)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("migrate run %d: %v", i, err)
		}
	}
	db, err := storage.Open(ctx, storage.Config{URL: url}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.Pool().QueryRow(ctx, `SELECT count(*) FROM goose_db_version WHERE version_id > 0`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	m, _ := db.NewMigrator()
	defer m.Close()
	st, _ := m.Status(ctx)
	if n != len(st) {
		t.Errorf("goose_db_version has %d applied rows, want exactly %d (one per migration)", n, len(st))
	}
	var roles int
	if err := db.Pool().QueryRow(ctx, `SELECT count(*) FROM roles`).Scan(&roles); err != nil || roles != 7 {
		t.Errorf("roles seeded %d times over (err %v), want 7 rows", roles, err)
	}
}

func TestProjects_DuplicateNameIsConflict(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	f := storage.ProjectFields{Name: "p", RepositoryURL: "https://example.org/r.git", Enabled: true}
	if _, err := db.CreateProject(ctx, f); err != nil {
		t.Fatal(err)
	}
	if _, err := db.CreateProject(ctx, f); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("duplicate: err = %v, want ErrConflict", err)
	}
	if _, err := db.GetProject(ctx, 999); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("missing: err = %v, want ErrNotFound", err)
	}
}

// TestProjects_OwnerIsKeptShownAndClearedWhenTheKeyGoes: a project records the key that
// owns it and shows the key's name; deleting the key leaves the project with no owner
// (ON DELETE SET NULL), so only admins manage it; an unknown key is ErrNotFound.
func TestProjects_OwnerIsKeptShownAndClearedWhenTheKeyGoes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	k, err := db.CreateAPIKey(ctx, "ci-bot", storage.RoleCreateProjects, []byte("hash-of-ci-bot"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := db.CreateProject(ctx, storage.ProjectFields{Name: "p", RepositoryURL: "https://example.org/r.git",
		Enabled: true, OwnerKeyID: &k.ID})
	if err != nil {
		t.Fatal(err)
	}
	if p.OwnerKeyID == nil || *p.OwnerKeyID != k.ID || p.OwnerKeyName != "ci-bot" {
		t.Fatalf("created project owner = %v %q, want %d ci-bot", p.OwnerKeyID, p.OwnerKeyName, k.ID)
	}
	for _, get := range []func() (storage.Project, error){
		func() (storage.Project, error) { return db.GetProject(ctx, p.ID) },
		func() (storage.Project, error) { return db.GetProjectByName(ctx, "p") },
		func() (storage.Project, error) {
			ps, _, err := db.ListProjects(ctx, storage.Page{Limit: 10})
			if err != nil || len(ps) != 1 {
				return storage.Project{}, fmt.Errorf("list: %d projects, err %w", len(ps), err)
			}
			return ps[0], nil
		},
	} {
		got, err := get()
		if err != nil {
			t.Fatal(err)
		}
		if got.OwnerKeyID == nil || *got.OwnerKeyID != k.ID || got.OwnerKeyName != "ci-bot" {
			t.Errorf("read project owner = %v %q, want %d ci-bot", got.OwnerKeyID, got.OwnerKeyName, k.ID)
		}
	}

	// An update without an owner leaves it as it is; one with an owner changes it.
	f := storage.ProjectFields{Name: "p", RepositoryURL: "https://example.org/r.git", Enabled: true}
	if p, err = db.UpdateProject(ctx, p.ID, f); err != nil || p.OwnerKeyID == nil || *p.OwnerKeyID != k.ID {
		t.Fatalf("update kept owner %v (err %v), want %d", p.OwnerKeyID, err, k.ID)
	}
	k2, err := db.CreateAPIKey(ctx, "other", storage.RoleCreateProjects, []byte("hash-of-other"))
	if err != nil {
		t.Fatal(err)
	}
	f.OwnerKeyID = &k2.ID
	if got, err := db.UpdateProject(ctx, p.ID, f); err != nil || got.OwnerKeyID == nil || *got.OwnerKeyID != k2.ID || got.OwnerKeyName != "other" {
		t.Fatalf("update to owner %d: %v %q (err %v)", k2.ID, got.OwnerKeyID, got.OwnerKeyName, err)
	}
	f.OwnerKeyID = &k.ID
	if _, err := db.UpdateProject(ctx, p.ID, f); err != nil {
		t.Fatal(err)
	}
	missing := k.ID + 1000
	f.OwnerKeyID = &missing
	if _, err := db.UpdateProject(ctx, p.ID, f); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("owner that is no key: err = %v, want ErrNotFound", err)
	}

	if err := db.DeleteAPIKey(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	got, err := db.GetProject(ctx, p.ID)
	if err != nil {
		t.Fatalf("the project must outlive its owner's key: %v", err)
	}
	if got.OwnerKeyID != nil || got.OwnerKeyName != "" {
		t.Errorf("after the key was deleted owner = %v %q, want none", got.OwnerKeyID, got.OwnerKeyName)
	}
}
