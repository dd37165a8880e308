package storage_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// blockedSteps are the names of the steps marked blocked, sorted.
func blockedSteps(t *testing.T, db *storage.DB) []string {
	t.Helper()
	rows, err := db.Pool().Query(context.Background(), `SELECT drv_path FROM steps WHERE blocked`)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for rows.Next() {
		var p string
		if err := rows.Scan(&p); err != nil {
			t.Fatal(err)
		}
		names = append(names, nameOf(p))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

// awaitLockWait returns once a statement containing query waits for a row lock.
func awaitLockWait(t *testing.T, db *storage.DB, query string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		var n int
		if err := db.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND strpos(query, $1) > 0`, query).Scan(&n); err != nil {
			t.Fatalf("waiting for a statement (%q) to wait for a lock: %v", query, err)
		}
		if n > 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func names(cs []storage.ClaimedStep) []string {
	var ns []string
	for _, c := range cs {
		ns = append(ns, nameOf(c.DrvPath))
	}
	slices.Sort(ns)
	return ns
}

func TestBlockedSteps_ClaimableOnceEveryInputSucceeded(t *testing.T) {
	t.Parallel()
	db := storagetest.New(t)
	agent := agentFixture(t, db, "SHA256:a")
	js := jobsetFixture(t, db, "dag")
	evaluate(t, db, js.ID, agent, job{name: "a"}, job{name: "b"}, job{name: "c", deps: []string{"a", "b"}},
		job{name: "d", deps: []string{"c"}})
	if got, want := blockedSteps(t, db), []string{"c", "d"}; !slices.Equal(got, want) {
		t.Fatalf("blocked after the evaluation: %v, want %v", got, want)
	}
	two := slots(agent, linux)
	two.N = 4
	_, claimed := claimAll(t, db, two)
	if got := names(claimed); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("claimed %v, want [a b]", got)
	}
	byName := map[string]storage.ClaimedStep{}
	for _, c := range claimed {
		byName[nameOf(c.DrvPath)] = c
	}

	// One input of c built: c still waits.
	finish(t, db, byName["a"], "succeeded")
	if got, want := blockedSteps(t, db), []string{"c", "d"}; !slices.Equal(got, want) {
		t.Errorf("blocked with b running: %v, want %v", got, want)
	}
	if got, _ := claimAll(t, db, two); len(got) != 0 {
		t.Errorf("claimed %v while b runs", got)
	}

	// The last input built, through the finishers' batch, which leaves the clearing
	// to its caller.
	uploadOutputs(t, db, byName["b"])
	res := db.FinishSteps(context.Background(), []storage.Finished{{Lease: byName["b"].Lease,
		Outcome: storage.StepOutcome{Status: "succeeded"}}}, testSigner)
	if res[0].Err != nil {
		t.Fatal(res[0].Err)
	}
	if !res[0].Dependents {
		t.Error("FinishSteps says no step depends on b; c does")
	}
	if got, want := blockedSteps(t, db), []string{"c", "d"}; !slices.Equal(got, want) {
		t.Errorf("blocked after FinishSteps: %v, want %v", got, want)
	}
	if n, err := db.UnblockDependents(context.Background(), []int64{byName["b"].ID, byName["a"].ID}); err != nil || n != 1 {
		t.Errorf("UnblockDependents of a and b: %d, %v; want 1 (c)", n, err)
	}
	if got, want := blockedSteps(t, db), []string{"d"}; !slices.Equal(got, want) {
		t.Errorf("blocked once a and b succeeded: %v, want %v", got, want)
	}
	if got, _ := claimAll(t, db, two); !slices.Equal(got, []string{"c"}) {
		t.Errorf("claimed %v, want [c]", got)
	}

	// A later evaluation's step whose input is already built is claimable as soon as
	// the evaluation is stored.
	evaluate(t, db, js.ID, agent, job{name: "e", deps: []string{"a"}})
	if got, want := blockedSteps(t, db), []string{"d"}; !slices.Equal(got, want) {
		t.Errorf("blocked after an evaluation whose step's input was built: %v, want %v", got, want)
	}
	if got, _ := claimAll(t, db, two); !slices.Equal(got, []string{"e"}) {
		t.Errorf("claimed %v, want [e]", got)
	}
}

// An evaluation that stores a step while that step's input succeeds, each transaction
// blind to the other: the evaluation's own clearing after its commit finds the input
// built.
func TestBlockedSteps_InputSucceedsWhileTheEvaluationIsStored(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	agent := agentFixture(t, db, "SHA256:a")
	js := jobsetFixture(t, db, "race")
	evaluate(t, db, js.ID, agent, job{name: "input"})
	_, claimed := claimAll(t, db, slots(agent, linux))
	if len(claimed) != 1 {
		t.Fatalf("claimed %d steps, want the input", len(claimed))
	}

	// The next evaluation's report (its step depends on the input, built elsewhere by
	// then as far as the evaluator knows) is staged; its Finish is held after it has
	// added the steps, at the deletion of the staged report.
	l := claimEval(t, db, js.ID, agent)
	in, err := db.BeginEvalIngest(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	o := jobsOutcome(job{name: "user"})
	o.Nodes[0].Inputs = []string{drv("input")}
	if err := in.Add(ctx, o.Jobs, nil, o.Nodes); err != nil {
		t.Fatal(err)
	}
	hold, err := db.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Rollback(ctx)
	if _, err := hold.Exec(ctx, `SELECT 1 FROM eval_ingests FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	stored := make(chan error, 1)
	go func() { stored <- in.Finish(ctx, 0, 0) }()
	awaitLockWait(t, db, "DELETE FROM eval_ingests")

	// The input succeeds and commits: its clearing cannot see the step yet.
	finish(t, db, claimed[0], "succeeded")
	if err := hold.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-stored; err != nil {
		t.Fatal(err)
	}
	if got := blockedSteps(t, db); len(got) != 0 {
		t.Errorf("blocked after both committed: %v, want none", got)
	}
	if got, _ := claimAll(t, db, slots(agent, linux)); !slices.Equal(got, []string{"user"}) {
		t.Errorf("claimed %v, want [user]", got)
	}
}

// A dependent another transaction holds when its input succeeds is cleared once the
// holder commits (the clearing waits for it alone, holding nothing else).
func TestBlockedSteps_DependentHeldByAnotherTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	agent := agentFixture(t, db, "SHA256:a")
	js := jobsetFixture(t, db, "held")
	evaluate(t, db, js.ID, agent, job{name: "in"}, job{name: "dep", deps: []string{"in"}})
	_, claimed := claimAll(t, db, slots(agent, linux))
	if len(claimed) != 1 {
		t.Fatalf("claimed %d steps, want one", len(claimed))
	}
	hold, err := db.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Rollback(ctx)
	if _, err := hold.Exec(ctx, `UPDATE steps SET scheduling_priority = 7 WHERE drv_path = $1`, drv("dep")); err != nil {
		t.Fatal(err)
	}
	uploadOutputs(t, db, claimed[0])
	finished := make(chan error, 1)
	go func() {
		finished <- db.FinishStep(ctx, claimed[0].Lease, storage.StepOutcome{Status: "succeeded"}, testSigner)
	}()
	awaitLockWait(t, db, "SET blocked = false WHERE s.id = $1")
	if err := hold.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-finished; err != nil {
		t.Fatal(err)
	}
	if got, _ := claimAll(t, db, slots(agent, linux)); !slices.Equal(got, []string{"dep"}) {
		t.Errorf("claimed %v, want [dep]", got)
	}
}

// The build sweep clears a mark whose clearing never ran (a coordinator stopped
// between a commit and its clearing), and only that one.
func TestUnblockSteps_ClearsAMissedMark(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	agent := agentFixture(t, db, "SHA256:a")
	js := jobsetFixture(t, db, "missed")
	evaluate(t, db, js.ID, agent, job{name: "built"}, job{name: "waits", deps: []string{"built"}},
		job{name: "still", deps: []string{"waits"}})
	if _, err := db.Pool().Exec(ctx, `UPDATE steps SET status = 'succeeded' WHERE drv_path = $1`, drv("built")); err != nil {
		t.Fatal(err)
	}
	if got, _ := claimAll(t, db, slots(agent, linux)); len(got) != 0 {
		t.Fatalf("claimed %v with the mark left set", got)
	}
	l, err := db.Listen(ctx, storage.StepsChannel)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	n, err := db.UnblockSteps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("the sweep cleared %d marks, want 1", n)
	}
	// The schedulers hear of it.
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if got, err := l.Next(wait); err != nil || got.Channel != storage.StepsChannel {
		t.Errorf("after the sweep cleared a mark: notification %+v, %v; want one on %s", got, err, storage.StepsChannel)
	}
	if got, want := blockedSteps(t, db), []string{"still"}; !slices.Equal(got, want) {
		t.Errorf("blocked after the sweep: %v, want %v", got, want)
	}
	if got, _ := claimAll(t, db, slots(agent, linux)); !slices.Equal(got, []string{"waits"}) {
		t.Errorf("claimed %v, want [waits]", got)
	}
}

// A database from before the mark: migration 24 marks the queued steps that wait for
// an input, and only those; the first success clears them as it would any other.
func TestMigrate_MarksQueuedStepsWaitingForAnInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, m := migratedTo(t, 23)
	steps := []struct{ name, status string }{
		{"built", "succeeded"}, {"running", "running"},
		{"ready", "queued"},      // its input built
		{"waiting", "queued"},    // one input running
		{"failed-dep", "failed"}, // not queued
		{"leaf", "queued"},       // no inputs
	}
	for i, s := range steps {
		if _, err := db.Pool().Exec(ctx, `INSERT INTO steps (id, drv_path, system, status) VALUES ($1, $2, 'x86_64-linux', $3)`,
			i+1, drv(s.name), s.status); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Pool().Exec(ctx, `INSERT INTO step_edges (step_id, depends_on) VALUES (3, 1), (4, 1), (4, 2), (5, 2)`); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := blockedSteps(t, db), []string{"waiting"}; !slices.Equal(got, want) {
		t.Errorf("blocked after the migration: %v, want %v", got, want)
	}
	if _, err := db.Pool().Exec(ctx, `UPDATE steps SET status = 'succeeded' WHERE id = 2`); err != nil {
		t.Fatal(err)
	}
	if n, err := db.UnblockDependents(ctx, []int64{2}); err != nil || n != 1 {
		t.Errorf("UnblockDependents once its input succeeded: %d, %v; want 1 (waiting)", n, err)
	}
	if got := blockedSteps(t, db); len(got) != 0 {
		t.Errorf("blocked after its last input succeeded: %v, want none", got)
	}
}
