package storage_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// outboxFixture is a jobset with an evaluation and one build.
func outboxFixture(t *testing.T, db *storage.DB) (evalID, buildID int64) {
	t.Helper()
	ctx := context.Background()
	p, err := db.CreateProject(ctx, storage.ProjectFields{Name: "demo", RepositoryURL: "https://example.org/r.git", Enabled: true})
	if err != nil {
		t.Fatal(err)
	}
	j, err := db.CreateJobset(ctx, p.ID, storage.JobsetFields{Name: "main", FlakeMode: true, NixExpression: "hydraJobs",
		CheckInterval: 60, SchedulingShares: 100, State: storage.JobsetEnabled, KeepNr: 3})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Pool().QueryRow(ctx, `WITH e AS (INSERT INTO evaluations (jobset_id) VALUES ($1) RETURNING id)
		INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system) SELECT e.id, $1, 'hello', '/nix/store/x.drv', 'x86_64-linux' FROM e
		RETURNING evaluation_id, id`, j.ID).Scan(&evalID, &buildID)
	if err != nil {
		t.Fatal(err)
	}
	return evalID, buildID
}

// events lists the outbox events as "eval" or "build N", oldest first.
func events(t *testing.T, db *storage.DB) []string {
	t.Helper()
	rows, err := db.Pool().Query(context.Background(), `SELECT build_id FROM outbox_events ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var b *int64
		if err := rows.Scan(&b); err != nil {
			t.Fatal(err)
		}
		if b == nil {
			out = append(out, "eval")
		} else {
			out = append(out, fmt.Sprintf("build %d", *b))
		}
	}
	return out
}

// The triggers write an event for each change deliveries are made of, in the
// transaction that makes it, and none for the rest: an evaluation that starts or
// ends, a build that finishes or is queued again after finishing; not a build that
// starts running, nor an evaluation queued again.
func TestOutboxEvents_WrittenByTriggers(t *testing.T) {
	t.Parallel()
	db := storagetest.New(t)
	ctx := context.Background()
	evalID, buildID := outboxFixture(t, db)
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := db.Pool().Exec(ctx, sql, args...); err != nil {
			t.Fatal(err)
		}
	}
	b := fmt.Sprintf("build %d", buildID)
	steps := []struct {
		sql  string
		id   int64
		want []string
	}{
		{`UPDATE evaluations SET status = 'running' WHERE id = $1`, evalID, []string{"eval"}},
		{`UPDATE evaluations SET status = 'queued' WHERE id = $1`, evalID, nil},
		{`UPDATE evaluations SET status = 'running' WHERE id = $1`, evalID, []string{"eval"}},
		{`UPDATE evaluations SET status = 'succeeded' WHERE id = $1`, evalID, []string{"eval"}},
		{`UPDATE builds SET status = 'running' WHERE id = $1`, buildID, nil},
		{`UPDATE builds SET started_at = now() WHERE id = $1`, buildID, nil},
		{`UPDATE builds SET status = 'failed', status_code = 1, finished_at = now() WHERE id = $1`, buildID, []string{b}},
		{`UPDATE builds SET keep = true WHERE id = $1`, buildID, nil},
		{`UPDATE builds SET status = 'queued', status_code = NULL, finished_at = NULL WHERE id = $1`, buildID, []string{b}},
		{`UPDATE builds SET status = 'succeeded', status_code = 0, finished_at = now() WHERE id = $1`, buildID, []string{b}},
	}
	for _, s := range steps {
		exec(`DELETE FROM outbox_events`)
		exec(s.sql, s.id)
		if got := events(t, db); !slices.Equal(got, s.want) {
			t.Errorf("%s: events %v, want %v", s.sql, got, s.want)
		}
	}
}

// A finished build's event carries the status of its job's last finished build
// before it in the jobset: builds still unfinished between them, other jobs and
// later builds do not count.
func TestOutboxEvents_PreviousBuildOfTheJob(t *testing.T) {
	t.Parallel()
	db := storagetest.New(t)
	ctx := context.Background()
	evalID, first := outboxFixture(t, db)
	build := func(job, status string, finished bool) int64 {
		t.Helper()
		var id int64
		// Each in an evaluation of its own, as a job has one build per evaluation.
		err := db.Pool().QueryRow(ctx, `WITH e AS (INSERT INTO evaluations (jobset_id) SELECT jobset_id FROM evaluations WHERE id = $1 RETURNING id, jobset_id)
			INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, status, finished_at)
			SELECT e.id, e.jobset_id, $2, '/nix/store/y.drv', 'x86_64-linux', $3, CASE WHEN $4 THEN now() END FROM e
			RETURNING id`, evalID, job, status, finished).Scan(&id)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	if _, err := db.Pool().Exec(ctx, `UPDATE builds SET status = 'failed', status_code = 1, finished_at = now() WHERE id = $1`, first); err != nil {
		t.Fatal(err)
	}
	build("other", "succeeded", true)
	build("hello", "running", false)
	last := build("hello", "succeeded", true)
	build("hello", "succeeded", true) // later: not before last
	got := map[int64]string{}
	if _, err := db.ProcessOutboxEvents(ctx, 100, func(ctx context.Context, b *storage.EventBatch) ([]storage.NewDelivery, error) {
		bs, err := b.Builds(ctx, []int64{first, last})
		for _, x := range bs {
			got[x.ID] = x.PreviousStatus
		}
		return nil, err
	}); err != nil {
		t.Fatal(err)
	}
	if want := map[int64]string{first: "", last: "failed"}; !maps.Equal(got, want) {
		t.Errorf("previous statuses %v, want %v", got, want)
	}
}

// One coordinator produces at a time: while another holds the producer's lock, a
// pass consumes nothing and leaves the events for later.
func TestOutboxEvents_OneProducerAtATime(t *testing.T) {
	t.Parallel()
	db := storagetest.New(t)
	ctx := context.Background()
	evalID, _ := outboxFixture(t, db)
	if _, err := db.Pool().Exec(ctx, `UPDATE evaluations SET status = 'running' WHERE id = $1`, evalID); err != nil {
		t.Fatal(err)
	}
	produced := func() int {
		n, err := db.ProcessOutboxEvents(ctx, 100, func(ctx context.Context, b *storage.EventBatch) ([]storage.NewDelivery, error) {
			if len(b.Evaluations) != 1 || b.Evaluations[0].ID != evalID || !b.EvaluationChanged[evalID] || b.Evaluations[0].Status != "running" {
				t.Errorf("batch %+v", b)
			}
			return nil, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// Another coordinator's producer, mid-pass.
	tx, err := db.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var locked bool
	if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(x'66636f75746278'::bigint)`).Scan(&locked); err != nil || !locked {
		t.Fatalf("take the producer's lock: %v %v", locked, err)
	}
	if n := produced(); n != 0 {
		t.Errorf("a pass consumed %d events while another producer held the lock", n)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n := produced(); n != 1 {
		t.Errorf("the pass after consumed %d events, want 1", n)
	}
	if got := events(t, db); len(got) != 0 {
		t.Errorf("events left: %v", got)
	}
}

// A delivery waits for the older pending ones of its ordering key: it is neither
// claimed nor due before they are done (a sender must not wake for it and spin).
func TestDeliveries_OrderingKeyHoldsBackNewerOnes(t *testing.T) {
	t.Parallel()
	db := storagetest.New(t)
	ctx := context.Background()
	d := func(key string) storage.NewDelivery {
		return storage.NewDelivery{Kind: storage.DeliveryCommand, Target: "run_command", Payload: []byte(`{}`), OrderingKey: key}
	}
	if err := db.EnqueueDeliveries(ctx, []storage.NewDelivery{d("k"), d("k")}); err != nil {
		t.Fatal(err)
	}
	first, err := db.ClaimDeliveries(ctx, 10, time.Minute)
	if err != nil || len(first) != 1 {
		t.Fatalf("claimed %+v %v, want only the oldest of the key", first, err)
	}
	retry := time.Now().Add(time.Hour)
	if ok, err := db.MarkAttemptFailed(ctx, first[0].ID, first[0].Claim, "down", &retry); !ok || err != nil {
		t.Fatalf("record the failure: %v %v", ok, err)
	}
	if again, _ := db.ClaimDeliveries(ctx, 10, time.Minute); len(again) != 0 {
		t.Errorf("claimed %+v while the older one waits for its retry", again)
	}
	if next, ok, err := db.NextDeliveryDue(ctx); err != nil || !ok || next.Before(retry.Add(-time.Second)) {
		t.Errorf("next due %v %v %v, want the older one's retry at %v", next, ok, err, retry)
	}
	if ok, err := db.MarkDelivered(ctx, first[0].ID, first[0].Claim); ok || err != nil {
		t.Errorf("a claim that already recorded its answer recorded again: %v %v", ok, err)
	}
}
