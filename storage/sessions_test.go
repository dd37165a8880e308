package storage_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func sessionCount(t *testing.T, db *storage.DB) int {
	t.Helper()
	var n int
	if err := db.Pool().QueryRow(context.Background(), `SELECT count(*) FROM sessions`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestSessions_UserAndKeySessions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	dave := newUser(t, db, "dave", storage.RoleRestartJobs)
	key, err := db.CreateAPIKey(ctx, "bot", storage.RoleEvalJobset, []byte("hash-of-bot"))
	if err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	if err := db.CreateSession(ctx, []byte("user-session"), &dave.ID, nil, "csrf-1", later); err != nil {
		t.Fatal(err)
	}
	if err := db.CreateSession(ctx, []byte("key-session"), nil, &key.ID, "csrf-2", later); err != nil {
		t.Fatal(err)
	}
	if err := db.CreateSession(ctx, []byte("nobody's"), nil, nil, "csrf-3", later); err == nil {
		t.Error("a session of nobody was stored")
	}

	s, err := db.SessionByHash(ctx, []byte("user-session"))
	if err != nil || s.UserID == nil || *s.UserID != dave.ID || s.APIKeyID != nil || s.Name != "dave" ||
		s.Role != storage.RoleRestartJobs || s.CSRFToken != "csrf-1" || s.ExpiresAt.Sub(later).Abs() > time.Millisecond {
		t.Fatalf("user session: %+v %v", s, err)
	}
	s, err = db.SessionByHash(ctx, []byte("key-session"))
	if err != nil || s.APIKeyID == nil || *s.APIKeyID != key.ID || s.UserID != nil || s.Name != "bot" || s.Role != storage.RoleEvalJobset {
		t.Fatalf("key session: %+v %v", s, err)
	}
	if _, err := db.SessionByHash(ctx, []byte("unknown")); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("unknown session: %v", err)
	}

	// The role is read afresh: a change applies to the live session at once.
	role := storage.RoleAdmin
	if _, err := db.UpdateUser(ctx, dave.ID, storage.UserChanges{Role: &role}); err != nil {
		t.Fatal(err)
	}
	if s, _ := db.SessionByHash(ctx, []byte("user-session")); s.Role != storage.RoleAdmin {
		t.Errorf("role after a change: %q", s.Role)
	}
	// A disabled user's session stops working at once, and works again if enabled.
	off, on := false, true
	if _, err := db.UpdateUser(ctx, dave.ID, storage.UserChanges{Enabled: &off}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.SessionByHash(ctx, []byte("user-session")); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("session of a disabled user: %v", err)
	}
	if _, err := db.UpdateUser(ctx, dave.ID, storage.UserChanges{Enabled: &on}); err != nil {
		t.Fatal(err)
	}
	// Revoking the key ends its sessions; deleting the user ends theirs.
	if err := db.DeleteAPIKey(ctx, key.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := db.SessionByHash(ctx, []byte("key-session")); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("session of a revoked key: %v", err)
	}
	if err := db.DeleteUser(ctx, dave.ID); err != nil {
		t.Fatal(err)
	}
	if n := sessionCount(t, db); n != 0 {
		t.Errorf("%d sessions left with no user or key", n)
	}
}

// Sliding expiry moves a session's end; an expired session is deleted when it is
// looked up, and the sweep deletes every expired one.
func TestSessions_ExpiryAndSweep(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	erin := newUser(t, db, "erin", storage.RoleReadOnly)
	soon := time.Now().Add(2 * time.Second)
	for _, h := range []string{"a", "b", "c"} {
		if err := db.CreateSession(ctx, []byte(h), &erin.ID, nil, "t", soon); err != nil {
			t.Fatal(err)
		}
	}
	later := time.Now().Add(24 * time.Hour)
	if err := db.ExtendSession(ctx, []byte("a"), later); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool().Exec(ctx, `UPDATE sessions SET expires_at = now() - interval '1 second' WHERE token_hash <> 'a'`); err != nil {
		t.Fatal(err)
	}
	if s, err := db.SessionByHash(ctx, []byte("a")); err != nil || s.ExpiresAt.Sub(later).Abs() > time.Millisecond {
		t.Fatalf("extended session: %+v %v", s, err)
	}
	if _, err := db.SessionByHash(ctx, []byte("b")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("expired session: %v", err)
	}
	if n := sessionCount(t, db); n != 2 {
		t.Fatalf("%d sessions after looking up an expired one, want 2 (it is deleted)", n)
	}
	n, err := db.DeleteExpiredSessions(ctx)
	if err != nil || n != 1 || sessionCount(t, db) != 1 {
		t.Fatalf("sweep deleted %d (%v), %d left; want 1 and 1", n, err, sessionCount(t, db))
	}
}

func TestSessions_DeleteUserSessionsKeepsOne(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	fay := newUser(t, db, "fay", storage.RoleReadOnly)
	gus := newUser(t, db, "gus", storage.RoleReadOnly)
	later := time.Now().Add(time.Hour)
	for _, s := range []struct {
		hash string
		user int64
	}{{"f1", fay.ID}, {"f2", fay.ID}, {"f3", fay.ID}, {"g1", gus.ID}} {
		if err := db.CreateSession(ctx, []byte(s.hash), &s.user, nil, "t", later); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := db.DeleteUserSessions(ctx, fay.ID, []byte("f2")); err != nil || n != 2 {
		t.Fatalf("ended %d of fay's sessions (%v), want 2", n, err)
	}
	if _, err := db.SessionByHash(ctx, []byte("f2")); err != nil {
		t.Errorf("the kept session: %v", err)
	}
	if n, err := db.DeleteUserSessions(ctx, fay.ID, nil); err != nil || n != 1 {
		t.Fatalf("ended %d (%v), want the last 1", n, err)
	}
	if err := db.DeleteSession(ctx, []byte("g1")); err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteSession(ctx, []byte("g1")); err != nil {
		t.Errorf("ending an ended session: %v", err)
	}
	if n := sessionCount(t, db); n != 0 {
		t.Errorf("%d sessions left", n)
	}
}
