package storage_test

import (
	"context"
	"errors"
	"testing"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// A report streamed in parts is invisible until Finish, a discarded one leaves
// nothing, and the parts add up to what one whole report stores.
func TestEvalIngest_PartsAreInvisibleUntilFinishedAndDiscardLeavesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	agent := agentFixture(t, db, "SHA256:ingest")
	js := jobsetFixture(t, db, "ingest")
	count := func(q string, args ...any) int {
		t.Helper()
		var n int
		if err := db.Pool().QueryRow(ctx, q, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	staged := func() int {
		return count(`SELECT (SELECT count(*) FROM eval_ingests) + (SELECT count(*) FROM eval_ingest_jobs) +
			(SELECT count(*) FROM eval_ingest_nodes) + (SELECT count(*) FROM eval_ingest_errors)`)
	}
	visible := func(evalID int64) int {
		return count(`SELECT (SELECT count(*) FROM steps) + (SELECT count(*) FROM builds) +
			(SELECT count(*) FROM evaluation_errors WHERE evaluation_id = $1) +
			(SELECT count(*) FROM evaluations WHERE id = $1 AND status <> 'running')`, evalID)
	}
	o := outcome()

	// An agent that dies mid-stream: part of the report staged, nothing visible; the
	// coordinator discards it when the stream breaks.
	l := claimEval(t, db, js.ID, agent)
	in, err := db.BeginEvalIngest(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Add(ctx, o.Jobs[:1], nil, o.Nodes[:1]); err != nil {
		t.Fatal(err)
	}
	if staged() == 0 {
		t.Fatal("nothing staged")
	}
	if n := visible(l.ID); n != 0 {
		t.Fatalf("a partly streamed evaluation is visible: %d rows", n)
	}
	if err := in.Discard(ctx); err != nil {
		t.Fatal(err)
	}
	if n := staged(); n != 0 {
		t.Fatalf("%d staged rows left after discarding", n)
	}

	// The next attempt (a new epoch) finds what a dead coordinator left of the last
	// one and clears it; streamed in parts, with a duplicate node, it stores the same
	// as a whole report.
	old, err := db.BeginEvalIngest(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Add(ctx, o.Jobs, o.Errors, o.Nodes); err != nil {
		t.Fatal(err)
	}
	next := l
	next.Epoch++
	if _, err := db.Pool().Exec(ctx, `UPDATE evaluations SET lease_epoch = $2 WHERE id = $1`, l.ID, next.Epoch); err != nil {
		t.Fatal(err)
	}
	in, err = db.BeginEvalIngest(ctx, next)
	if err != nil {
		t.Fatal(err)
	}
	if n := count(`SELECT count(*) FROM eval_ingests`); n != 1 {
		t.Fatalf("%d staged reports, want only the new attempt's", n)
	}
	for i := range o.Nodes {
		if err := in.Add(ctx, nil, nil, o.Nodes[i:i+1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := in.Add(ctx, o.Jobs[:2], o.Errors, o.Nodes[:1]); err != nil {
		t.Fatal(err)
	}
	if err := in.Add(ctx, o.Jobs[2:], nil, nil); err != nil {
		t.Fatal(err)
	}
	if in.Jobs() != 3 || in.Nodes() != 2 || in.Errors() != 1 {
		t.Fatalf("counted %d jobs, %d nodes, %d errors", in.Jobs(), in.Nodes(), in.Errors())
	}
	if n := visible(l.ID); n != 0 {
		t.Fatalf("visible before Finish: %d rows", n)
	}
	// The old epoch cannot finish it.
	if err := old.Finish(ctx, 1, 2); !errors.Is(err, storage.ErrStaleLease) {
		t.Fatalf("finish under the old epoch: %v", err)
	}
	if err := in.Finish(ctx, 1, 2); err != nil {
		t.Fatal(err)
	}
	if n := staged(); n != 0 {
		t.Fatalf("%d staged rows left after finishing", n)
	}
	e, err := db.GetEvaluation(ctx, l.ID)
	if err != nil || e.Status != "succeeded" || e.NrJobs != 3 || e.NrNewBuilds != 2 || e.NrErrors != 1 || *e.EvalSeconds != 2 {
		t.Fatalf("evaluation after finishing: %+v %v", e, err)
	}
	if n := count(`SELECT count(*) FROM step_edges`); n != 1 {
		t.Errorf("%d edges, want top -> base", n)
	}
	if n := count(`SELECT count(*) FROM steps WHERE drv_path = $1 AND timeout_seconds = 60 AND required_features = '{kvm}'
		AND critical_path = 1`, drvTop); n != 1 {
		t.Errorf("top's step lacks its timeout, features or critical path")
	}
	if n := count(`SELECT count(*) FROM steps WHERE drv_path = $1 AND critical_path = 2`, drvBase); n != 1 {
		t.Errorf("base's critical path is not 2 (itself and top)")
	}
	if n := count(`SELECT count(*) FROM aggregate_constituents`); n != 2 {
		t.Errorf("aggregate has %d constituents, want 2", n)
	}
	if n := count(`SELECT count(*) FROM build_outputs o JOIN builds b ON b.id = o.build_id WHERE b.evaluation_id = $1`, l.ID); n != 2 {
		t.Errorf("%d build outputs, want 2", n)
	}
}
