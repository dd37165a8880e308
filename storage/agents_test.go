package storage_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// An old database holds the names agents chose unchecked: migration 5 renames the
// invalid and the duplicate ones, deterministically, and then makes names unique
// among agents that are not revoked.
func TestMigrate_AgentNamesAreRepairedThenUnique(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, m := migratedTo(t, 4)
	type agent struct {
		name    string
		revoked bool
		want    string
	}
	agents := []agent{ // ids 1, 2, ... in this order
		{"builder", false, "builder"},
		{"builder", false, "builder-2-2"}, // builder-2 is agent 9's
		{"builder", true, "builder"},      // revoked: may share the name
		{"<script>", false, "script-4"},
		{"a\nb", false, "a-b-5"},
		{strings.Repeat("x", 120_000), false, strings.Repeat("x", 61) + "-6"},
		{"", false, "agent-7"},
		{"10.0.0.1", false, "agent-10.0.0.1-8"},
		{"builder-2", false, "builder-2"},
		{"<script>", true, "script-10"}, // revoked, but still shown: renamed too
		{strings.Repeat("b", 64), false, strings.Repeat("b", 60) + "-11"},
		{"twin", false, "twin"},
		{"twin", true, "twin"},
		{"twin", false, "twin-14"},
	}
	for i, a := range agents {
		if _, err := db.Pool().Exec(ctx, `INSERT INTO agents (id, name, public_key, fingerprint, revoked_at)
			VALUES ($1, $2, 'ssh-ed25519 AAAA', $3, CASE WHEN $4 THEN now() END)`, i+1, a.name, fmt.Sprint("SHA256:", i+1), a.revoked); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Pool().Exec(ctx, `SELECT setval('agents_id_seq', $1)`, len(agents)); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	for i, a := range agents {
		got, err := db.GetAgent(ctx, int64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		if got.Name != a.want {
			t.Errorf("agent %d named %.40q: after the migration %.70q, want %q", i+1, a.name, got.Name, a.want)
		}
	}

	// From now on the database refuses a second agent of the same name, and says whose it is.
	_, err := db.RegisterAgent(ctx, "builder", "ssh-ed25519 BBBB", "SHA256:new")
	var taken *storage.AgentNameTakenError
	if !errors.As(err, &taken) || taken.AgentID != 1 || taken.Name != "builder" || !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("a second active builder: %v, want the name taken by agent 1", err)
	}
	if !strings.Contains(err.Error(), `agent name "builder" is taken by agent 1`) {
		t.Errorf("the error does not name the clash: %v", err)
	}
	if err := db.RevokeAgent(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := db.RegisterAgent(ctx, "builder", "ssh-ed25519 BBBB", "SHA256:new"); err != nil {
		t.Fatalf("the name of a revoked agent must be free again: %v", err)
	}
}

// Agents registering one name at once: the database lets exactly one have it.
func TestRegisterAgent_ConcurrentSameNameOneWins(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	const n = 8
	ids := make([]int64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := db.RegisterAgent(ctx, "racer", "ssh-ed25519 AAAA", fmt.Sprint("SHA256:racer", i))
			ids[i], errs[i] = a.ID, err
		}()
	}
	wg.Wait()
	var winner int64
	for i, err := range errs {
		if err == nil {
			if winner != 0 {
				t.Fatalf("agents %d and %d both got the name", winner, ids[i])
			}
			winner = ids[i]
		}
	}
	if winner == 0 {
		t.Fatalf("nobody got the name: %v", errs)
	}
	for _, err := range errs {
		var taken *storage.AgentNameTakenError
		if err != nil && (!errors.As(err, &taken) || taken.AgentID != winner) {
			t.Errorf("a loser's error: %v, want the name taken by agent %d", err, winner)
		}
	}
}

// An agent's cache read token: only its hash is stored; a new one replaces the old;
// revocation forgets it and gives no new one.
func TestAgentCacheToken_HashReplacedAndForgottenOnRevocation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	a, err := db.RegisterAgent(ctx, "builder", "ssh-ed25519 AAAA", "SHA256:builder")
	if err != nil {
		t.Fatal(err)
	}
	other, err := db.RegisterAgent(ctx, "other", "ssh-ed25519 BBBB", "SHA256:other")
	if err != nil {
		t.Fatal(err)
	}
	first, second := sha256.Sum256([]byte("first token")), sha256.Sum256([]byte("second token"))
	found := func(hash [32]byte) (int64, string, error) { return db.AgentByCacheToken(ctx, hash[:]) }

	if _, _, err := found(first); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a token before any was set: %v, want ErrNotFound", err)
	}
	if err := db.SetAgentCacheToken(ctx, a.ID, first[:]); err != nil {
		t.Fatal(err)
	}
	var stored []byte
	if err := db.Pool().QueryRow(ctx, `SELECT cache_token_hash FROM agents WHERE id = $1`, a.ID).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stored, first[:]) {
		t.Errorf("stored %x, want the hash %x", stored, first)
	}
	if id, name, err := found(first); err != nil || id != a.ID || name != "builder" {
		t.Errorf("the current token: agent %d %q, %v; want %d builder", id, name, err, a.ID)
	}
	if err := db.SetAgentCacheToken(ctx, a.ID, second[:]); err != nil {
		t.Fatal(err)
	}
	if _, _, err := found(first); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the replaced token: %v, want ErrNotFound", err)
	}
	if id, _, err := found(second); err != nil || id != a.ID {
		t.Errorf("the new token: agent %d, %v; want %d", id, err, a.ID)
	}
	if err := db.SetAgentCacheToken(ctx, other.ID, first[:]); err != nil {
		t.Fatal(err)
	}

	if err := db.RevokeAgent(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := found(second); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a revoked agent's token: %v, want ErrNotFound", err)
	}
	if err := db.Pool().QueryRow(ctx, `SELECT cache_token_hash FROM agents WHERE id = $1`, a.ID).Scan(&stored); err != nil || stored != nil {
		t.Errorf("a revoked agent's stored hash: %x, %v; want none", stored, err)
	}
	if err := db.SetAgentCacheToken(ctx, a.ID, second[:]); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("a token for a revoked agent: %v, want ErrNotFound", err)
	}
	if id, _, err := found(first); err != nil || id != other.ID {
		t.Errorf("another agent's token after the revocation: agent %d, %v; want %d", id, err, other.ID)
	}
}
