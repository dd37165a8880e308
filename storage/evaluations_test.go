package storage_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func jobsetFixture(t testing.TB, db *storage.DB, name string) storage.Jobset {
	t.Helper()
	ctx := context.Background()
	p, err := db.CreateProject(ctx, storage.ProjectFields{Name: name, RepositoryURL: "/r", Enabled: true})
	if err != nil {
		t.Fatal(err)
	}
	j, err := db.CreateJobset(ctx, p.ID, storage.JobsetFields{Name: "main", FlakeMode: false, NixExpression: "release.nix",
		CheckInterval: 0, SchedulingShares: 100, State: storage.JobsetEnabled, KeepNr: 3})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func agentFixture(t testing.TB, db *storage.DB, fp string) int64 {
	t.Helper()
	a, err := db.RegisterAgent(context.Background(), "a-"+fp, "ssh-ed25519 AAAA", fp)
	if err != nil {
		t.Fatal(err)
	}
	return a.ID
}

func claimEval(t testing.TB, db *storage.DB, jobsetID, agent int64) storage.Lease {
	t.Helper()
	ctx := context.Background()
	if _, err := db.CreateEvaluation(ctx, storage.NewEvaluation{JobsetID: jobsetID, Commit: "c", InputsHash: "h", Trigger: "api"}); err != nil {
		t.Fatal(err)
	}
	l, ok, err := db.ClaimEvaluation(ctx, agent, time.Minute)
	if err != nil || !ok {
		t.Fatalf("claim: %v %v", ok, err)
	}
	return l
}

const (
	drvBase = "/nix/store/00000000000000000000000000000000-base.drv"
	drvTop  = "/nix/store/11111111111111111111111111111111-top.drv"
	outBase = "/nix/store/22222222222222222222222222222222-base"
	outTop  = "/nix/store/33333333333333333333333333333333-top"
)

func outcome() storage.EvalOutcome {
	return storage.EvalOutcome{
		Jobs: []storage.EvalJob{
			{Attr: "base", DrvPath: drvBase, System: "x86_64-linux", Outputs: map[string]string{"out": outBase}},
			{Attr: "top", DrvPath: drvTop, System: "x86_64-linux", Outputs: map[string]string{"out": outTop}, Timeout: 60},
			{Attr: "all", DrvPath: "/nix/store/44444444444444444444444444444444-all.drv", System: "x86_64-linux",
				IsAggregate: true, Constituents: []string{"base", drvTop}},
		},
		Errors: []storage.AttrError{{Attr: "broken", Message: "error: boom"}},
		Nodes: []storage.EvalNode{
			{DrvPath: drvBase, System: "x86_64-linux", Outputs: map[string]string{"out": outBase}},
			{DrvPath: drvTop, System: "x86_64-linux", RequiredFeatures: []string{"kvm"}, Outputs: map[string]string{"out": outTop}, Inputs: []string{drvBase}},
		},
	}
}

func TestFinishEvaluation_SharedDerivationsAreOneStepAndStaleEpochsChangeNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	agent := agentFixture(t, db, "SHA256:a")
	j1, j2 := jobsetFixture(t, db, "one"), jobsetFixture(t, db, "two")

	l1 := claimEval(t, db, j1.ID, agent)
	stale := l1
	stale.Epoch--
	if err := db.FinishEvaluation(ctx, stale, outcome()); !errors.Is(err, storage.ErrStaleLease) {
		t.Fatalf("stale epoch: %v, want ErrStaleLease", err)
	}
	if err := db.FinishEvaluation(ctx, l1, outcome()); err != nil {
		t.Fatal(err)
	}
	l2 := claimEval(t, db, j2.ID, agent)
	if err := db.FinishEvaluation(ctx, l2, outcome()); err != nil {
		t.Fatal(err)
	}
	count := func(q string, args ...any) int {
		var n int
		if err := db.Pool().QueryRow(ctx, q, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(`SELECT count(*) FROM steps`); n != 2 {
		t.Errorf("%d steps for two evaluations of the same two derivations, want 2", n)
	}
	if n := count(`SELECT count(*) FROM builds WHERE drv_path = $1`, drvTop); n != 2 {
		t.Errorf("%d builds of top, want one per evaluation", n)
	}
	if n := count(`SELECT count(*) FROM step_edges e JOIN steps a ON a.id = e.step_id JOIN steps b ON b.id = e.depends_on
		WHERE a.drv_path = $1 AND b.drv_path = $2`, drvTop, drvBase); n != 1 {
		t.Errorf("edge top -> base: %d", n)
	}
	if n := count(`SELECT count(*) FROM steps WHERE drv_path = $1 AND timeout_seconds = 60 AND required_features = '{kvm}'`, drvTop); n != 1 {
		t.Errorf("top's step lacks its timeout or features")
	}
	if n := count(`SELECT count(*) FROM aggregate_constituents ac JOIN builds a ON a.id = ac.aggregate_id WHERE a.evaluation_id = $1`, l1.ID); n != 2 {
		t.Errorf("aggregate has %d constituents, want 2 (one by name, one by drv path)", n)
	}
	e, err := db.GetEvaluation(ctx, l1.ID)
	if err != nil || e.Status != "succeeded" || e.NrJobs != 3 || e.NrNewBuilds != 2 || e.NrErrors != 1 {
		t.Errorf("evaluation after finishing: %+v %v", e, err)
	}
	if b, _, _ := db.ListBuilds(ctx, storage.BuildFilter{EvaluationID: l1.ID, Job: "all"}, storage.Page{Limit: 10}); len(b) != 1 || b[0].Status != "queued" {
		t.Errorf("an aggregate waits for its constituents even when its own derivation is built: %+v", b)
	}
}

func TestLeases_ExpiredAreRescuedWithBackoffThenAborted(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	agent := agentFixture(t, db, "SHA256:b")
	j := jobsetFixture(t, db, "p")
	l := claimEval(t, db, j.ID, agent)
	cfg := storage.LeaseConfig{TTL: time.Minute, MaxAttempts: 2, Backoff: time.Hour}
	expire := func() {
		if _, err := db.Pool().Exec(ctx, `UPDATE evaluations SET lease_expires_at = now() - interval '1 second'`); err != nil {
			t.Fatal(err)
		}
	}
	expire()
	if r, a, err := db.RescueExpired(ctx, storage.LeaseEval, cfg); err != nil || r != 1 || a != 0 {
		t.Fatalf("rescue: requeued %d aborted %d err %v", r, a, err)
	}
	if _, ok, _ := db.ClaimEvaluation(ctx, agent, time.Minute); ok {
		t.Fatal("a rescued evaluation was claimable before its backoff passed")
	}
	if err := db.CheckLease(ctx, storage.LeaseEval, l.ID, l.Epoch, agent); !errors.Is(err, storage.ErrStaleLease) {
		t.Fatalf("the dead lease still checks out: %v", err)
	}
	if _, err := db.Pool().Exec(ctx, `UPDATE evaluations SET not_before = NULL`); err != nil {
		t.Fatal(err)
	}
	l2, ok, err := db.ClaimEvaluation(ctx, agent, time.Minute)
	if err != nil || !ok || l2.Epoch != l.Epoch+1 || l2.Attempt != 2 {
		t.Fatalf("second claim: %+v %v %v", l2, ok, err)
	}
	if lost, err := db.ExtendLeases(ctx, agent, storage.LeaseEval, []int64{l2.ID, l.ID}, []int64{l2.Epoch, l.Epoch}, time.Minute); err != nil || len(lost) != 0 && lost[0] != l.ID {
		t.Fatalf("extend: lost %v err %v", lost, err)
	}
	expire()
	if r, a, err := db.RescueExpired(ctx, storage.LeaseEval, cfg); err != nil || r != 0 || a != 1 {
		t.Fatalf("after max_attempts: requeued %d aborted %d err %v", r, a, err)
	}
	e, _ := db.GetEvaluation(ctx, l.ID)
	if e.Status != "failed" || e.Error == "" {
		t.Errorf("evaluation after its attempts ran out: %+v", e)
	}
}

func TestRetryEvaluation_RequeuesThenFailsAtMaxAttempts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	agent := agentFixture(t, db, "SHA256:c")
	j := jobsetFixture(t, db, "p")
	l := claimEval(t, db, j.ID, agent)
	cfg := storage.LeaseConfig{MaxAttempts: 2}
	if err := db.RetryEvaluation(ctx, l, "git fetch: connection refused", cfg); err != nil {
		t.Fatal(err)
	}
	if e, _ := db.GetEvaluation(ctx, l.ID); e.Status != "queued" {
		t.Fatalf("after one infrastructure failure: %s, want queued", e.Status)
	}
	if err := db.RetryEvaluation(ctx, l, "again", cfg); !errors.Is(err, storage.ErrStaleLease) {
		t.Fatalf("retry with a lease no longer held: %v", err)
	}
	l2, ok, err := db.ClaimEvaluation(ctx, agent, time.Minute)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if err := db.RetryEvaluation(ctx, l2, "git fetch: connection refused", cfg); err != nil {
		t.Fatal(err)
	}
	e, _ := db.GetEvaluation(ctx, l.ID)
	if e.Status != "failed" || e.Error != "git fetch: connection refused (after 2 attempts)" {
		t.Fatalf("at max_attempts: %s %q", e.Status, e.Error)
	}
}

func TestExtendLeases_WritesOnlyLeasesPastATenthOfTheirTTL(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	agent := agentFixture(t, db, "SHA256:x")
	j := jobsetFixture(t, db, "p")
	l := claimEval(t, db, j.ID, agent)
	state := func() (xmin string, left float64) {
		t.Helper()
		if err := db.Pool().QueryRow(ctx, `SELECT xmin::text, extract(epoch FROM lease_expires_at - now())::float8
			FROM evaluations WHERE id = $1`, l.ID).Scan(&xmin, &left); err != nil {
			t.Fatal(err)
		}
		return xmin, left
	}
	extend := func(epoch int64) []int64 {
		t.Helper()
		lost, err := db.ExtendLeases(ctx, agent, storage.LeaseEval, []int64{l.ID}, []int64{epoch}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return lost
	}
	if _, err := db.Pool().Exec(ctx, `UPDATE evaluations SET lease_expires_at = now() + interval '59 minutes' WHERE id = $1`, l.ID); err != nil {
		t.Fatal(err)
	}
	before, _ := state()
	if lost := extend(l.Epoch); len(lost) != 0 {
		t.Fatalf("a held lease was reported lost: %v", lost)
	}
	if after, left := state(); after != before || left > 59*60 {
		t.Errorf("a lease with 59 of 60 minutes left was rewritten (xmin %s → %s, %.0f s left)", before, after, left)
	}
	if _, err := db.Pool().Exec(ctx, `UPDATE evaluations SET lease_expires_at = now() + interval '50 minutes' WHERE id = $1`, l.ID); err != nil {
		t.Fatal(err)
	}
	if lost := extend(l.Epoch); len(lost) != 0 {
		t.Fatalf("a held lease was reported lost: %v", lost)
	}
	if _, left := state(); left < 59*60 {
		t.Errorf("a lease with 50 of 60 minutes left was not extended to the TTL: %.0f s left", left)
	}
	if lost := extend(l.Epoch + 1); len(lost) != 1 || lost[0] != l.ID {
		t.Errorf("a lease of another epoch: lost %v, want [%d]", lost, l.ID)
	}
}
