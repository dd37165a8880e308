package storage_test

import (
	"context"
	"errors"
	"testing"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func newUser(t *testing.T, db *storage.DB, name, role string) storage.User {
	t.Helper()
	u, err := db.CreateUser(context.Background(), storage.NewUser{Username: name, Role: role, PasswordHash: "$argon2id$hash-of-" + name})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestUsers_CreateGetListUpdateDelete(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	alice, err := db.CreateUser(ctx, storage.NewUser{Username: "alice", Email: "alice@example.org", FullName: "Alice A",
		Role: storage.RoleAdmin, PasswordHash: "$argon2id$alice"})
	if err != nil {
		t.Fatal(err)
	}
	if alice.ID == 0 || !alice.Enabled || alice.Email != "alice@example.org" || alice.FullName != "Alice A" || alice.LastLoginAt != nil {
		t.Fatalf("created %+v", alice)
	}
	if _, err := db.CreateUser(ctx, storage.NewUser{Username: "alice", Role: storage.RoleReadOnly, PasswordHash: "x"}); !errors.Is(err, storage.ErrConflict) {
		t.Errorf("a second alice: %v, want ErrConflict", err)
	}
	if _, err := db.CreateUser(ctx, storage.NewUser{Username: "eve", Role: "superuser", PasswordHash: "x"}); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("an unknown role: %v, want ErrNotFound", err)
	}
	bob := newUser(t, db, "bob", storage.RoleReadOnly)

	u, hash, err := db.UserCredentials(ctx, "alice")
	if err != nil || u.ID != alice.ID || hash != "$argon2id$alice" {
		t.Fatalf("credentials of alice: %+v %q %v", u, hash, err)
	}
	if _, _, err := db.UserCredentials(ctx, "nobody"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("credentials of nobody: %v", err)
	}
	if h, err := db.UserPasswordHash(ctx, bob.ID); err != nil || h != "$argon2id$hash-of-bob" {
		t.Errorf("hash of bob: %q %v", h, err)
	}

	list, total, err := db.ListUsers(ctx, storage.Page{Limit: 1, Offset: 1})
	if err != nil || total != 2 || len(list) != 1 || list[0].Username != "bob" {
		t.Fatalf("second page of one: %+v, total %d, %v", list, total, err)
	}

	role, email, off, pw := storage.RoleCreateProjects, "bob@example.org", false, "$argon2id$new"
	got, err := db.UpdateUser(ctx, bob.ID, storage.UserChanges{Role: &role, Email: &email, Enabled: &off, PasswordHash: &pw})
	if err != nil || got.Role != role || got.Email != email || got.Enabled || got.FullName != "" {
		t.Fatalf("update bob: %+v %v", got, err)
	}
	if h, _ := db.UserPasswordHash(ctx, bob.ID); h != pw {
		t.Errorf("password hash after update: %q", h)
	}
	name := "Bob B"
	got, err = db.UpdateUser(ctx, bob.ID, storage.UserChanges{FullName: &name})
	if err != nil || got.FullName != name || got.Role != role || got.Email != email || got.Enabled {
		t.Errorf("an update of the name alone changed more: %+v %v", got, err)
	}
	bad := "superuser"
	if _, err := db.UpdateUser(ctx, bob.ID, storage.UserChanges{Role: &bad}); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("update to an unknown role: %v", err)
	}
	if _, err := db.UpdateUser(ctx, 999999, storage.UserChanges{FullName: &name}); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("update of no user: %v", err)
	}

	if err := db.RecordLogin(ctx, alice.ID); err != nil {
		t.Fatal(err)
	}
	if a, err := db.GetUser(ctx, alice.ID); err != nil || a.LastLoginAt == nil {
		t.Errorf("last login not recorded: %+v %v", a, err)
	}

	if err := db.DeleteUser(ctx, bob.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := db.GetUser(ctx, bob.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("deleted bob: %v", err)
	}
	if err := db.DeleteUser(ctx, bob.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("deleting bob twice: %v", err)
	}
}

// A project a user owns keeps existing, with no owner, when the user is deleted; and
// given to a key, it is no longer the user's.
func TestUsers_OwnedProjects(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	carol := newUser(t, db, "carol", storage.RoleCreateProjects)
	p, err := db.CreateProject(ctx, storage.ProjectFields{Name: "mine", RepositoryURL: "https://example.org/r.git", Enabled: true, OwnerUserID: &carol.ID})
	if err != nil {
		t.Fatal(err)
	}
	if p.OwnerUserID == nil || *p.OwnerUserID != carol.ID || p.OwnerUserName != "carol" || p.OwnerKeyID != nil {
		t.Fatalf("owner of a new project: %v %q %v", p.OwnerUserID, p.OwnerUserName, p.OwnerKeyID)
	}
	k, err := db.CreateAPIKey(ctx, "ci", storage.RoleCreateProjects, []byte("hash-of-ci"))
	if err != nil {
		t.Fatal(err)
	}
	q, err := db.CreateProject(ctx, storage.ProjectFields{Name: "given", RepositoryURL: "https://example.org/r.git", Enabled: true, OwnerUserID: &carol.ID})
	if err != nil {
		t.Fatal(err)
	}
	q, err = db.UpdateProject(ctx, q.ID, storage.ProjectFields{Name: q.Name, RepositoryURL: q.RepositoryURL, Enabled: true, OwnerKeyID: &k.ID})
	if err != nil || q.OwnerUserID != nil || q.OwnerKeyID == nil || *q.OwnerKeyID != k.ID {
		t.Fatalf("given to a key: user %v key %v, %v", q.OwnerUserID, q.OwnerKeyID, err)
	}
	p, err = db.UpdateProject(ctx, p.ID, storage.ProjectFields{Name: p.Name, RepositoryURL: p.RepositoryURL, Description: "x", Enabled: true})
	if err != nil || p.OwnerUserID == nil || *p.OwnerUserID != carol.ID {
		t.Fatalf("an update that gives it to nobody else keeps the owner: %v %v", p.OwnerUserID, err)
	}
	if err := db.DeleteUser(ctx, carol.ID); err != nil {
		t.Fatal(err)
	}
	p, err = db.GetProject(ctx, p.ID)
	if err != nil || p.OwnerUserID != nil || p.OwnerUserName != "" {
		t.Fatalf("the project of a deleted user: %v %q %v", p.OwnerUserID, p.OwnerUserName, err)
	}
}
