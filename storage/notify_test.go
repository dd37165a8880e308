package storage_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// next waits (bounded) for the listener's next notification.
func next(t *testing.T, l *storage.Listener) storage.Notification {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := l.Next(ctx)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return n
}

func TestListen_ReceivesWhatStorageAnnouncesOnEveryChannelItListensOn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	l, err := db.Listen(ctx, storage.StepsChannel, storage.NarinfoDeletedChannel)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	// Storing an evaluation announces that steps may be runnable.
	agent := agentFixture(t, db, "SHA256:listen")
	j := jobsetFixture(t, db, "listen")
	lease := claimEval(t, db, j.ID, agent)
	if err := db.FinishEvaluation(ctx, lease, storage.EvalOutcome{}); err != nil {
		t.Fatal(err)
	}
	if n := next(t, l); n.Channel != storage.StepsChannel {
		t.Fatalf("after an evaluation was stored: %+v, want a notification on %s", n, storage.StepsChannel)
	}

	// Retention names the paths it deleted on the other channel.
	if _, err := db.Pool().Exec(ctx, `INSERT INTO narinfos (hash_part, store_path, url, compression, file_hash, file_size,
		nar_hash, nar_size, created_at) VALUES ('00000000000000000000000000000000', '/nix/store/00000000000000000000000000000000-x',
		'nar/x.nar', 'none', 'sha256:x', 1, 'sha256:x', 1, now() - interval '2 days')`); err != nil {
		t.Fatal(err)
	}
	deleted, err := db.DeleteNarinfos(ctx, []string{"00000000000000000000000000000000"}, time.Hour)
	if err != nil || len(deleted) != 1 {
		t.Fatalf("delete: %v %v", deleted, err)
	}
	if n := next(t, l); n.Channel != storage.NarinfoDeletedChannel || n.Payload != "00000000000000000000000000000000" {
		t.Fatalf("after retention deleted a path: %+v", n)
	}
}

func TestListen_EndsWithItsContextAndLeavesNoPooledConnectionListening(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	l, err := db.Listen(ctx, storage.StepsChannel)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if _, err := l.Next(short); err == nil {
		t.Fatal("Next returned with nothing sent")
	}
	l.Close()
	// Every connection the pool holds now listens on nothing (the listener's went
	// back, or was closed).
	for _, c := range db.Pool().AcquireAllIdle(ctx) {
		var channels []string
		err := c.QueryRow(ctx, `SELECT coalesce(array_agg(c), '{}') FROM pg_listening_channels() AS c`).Scan(&channels)
		c.Release()
		if err != nil {
			t.Fatal(err)
		}
		if len(channels) > 0 {
			t.Errorf("a pooled connection still listens on %v", channels)
		}
	}
}

func TestListen_RefusesAChannelItDoesNotKnow(t *testing.T) {
	t.Parallel()
	db := storagetest.New(t)
	if _, err := db.Listen(context.Background(), storage.Channel("fc_steps; DROP TABLE steps")); err == nil ||
		!strings.Contains(err.Error(), "unknown notification channel") {
		t.Fatalf("Listen on an unknown channel: %v", err)
	}
}
