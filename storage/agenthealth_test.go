package storage_test

import (
	"context"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestAgentHealth_BackoffDoublesPastTheThresholdUpToTheCap(t *testing.T) {
	t.Parallel()
	h := storage.AgentHealth{Threshold: 3, Backoff: time.Minute, MaxBackoff: 5 * time.Minute}
	for failures, want := range map[int]time.Duration{0: 0, 1: 0, 2: 0, 3: time.Minute, 4: 2 * time.Minute,
		5: 4 * time.Minute, 6: 5 * time.Minute, 1000: 5 * time.Minute} {
		if got := h.BackoffAfter(failures); got != want {
			t.Errorf("after %d failures: %v, want %v", failures, got, want)
		}
	}
	if got := (storage.AgentHealth{Threshold: 0, Backoff: time.Minute}).BackoffAfter(50); got != 0 {
		t.Errorf("threshold 0 backs off %v, want never", got)
	}
	if got := (storage.AgentHealth{Threshold: 1, Backoff: time.Second}).BackoffAfter(100); got != time.Second<<30 {
		t.Errorf("no cap, 100 failures: %v, want the doubling bounded at 2^30", got)
	}
}

// health reads an agent's failure count and whether it is backed off now.
func health(t *testing.T, db *storage.DB, agent int64) (int, bool) {
	t.Helper()
	a, err := db.GetAgent(context.Background(), agent)
	if err != nil {
		t.Fatal(err)
	}
	return a.ConsecutiveFailures, a.BackedOff(time.Now())
}

// TestAgentHealth_CountingRules: infrastructure failures (reported, released, a lost
// lease) count for the agent that held the step; a derivation's own failure neither
// counts nor resets; a step with stored outputs and an admin's reset clear the count;
// past the threshold the agent claims nothing until its backoff ends.
func TestAgentHealth_CountingRules(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	sick := agentFixture(t, db, "SHA256:sick")
	well := agentFixture(t, db, "SHA256:well")
	j := jobsetFixture(t, db, "health")
	evaluate(t, db, j.ID, sick, job{name: "h1"}, job{name: "h2"}, job{name: "h3"}, job{name: "h4"}, job{name: "h5"})
	cfg := storage.LeaseConfig{MaxAttempts: 10, Health: storage.AgentHealth{Threshold: 3, Backoff: time.Hour, MaxBackoff: 2 * time.Hour}}
	claim := func(agent int64) storage.ClaimedStep {
		t.Helper()
		got, err := db.ClaimSteps(ctx, slots(agent, linux))
		if err != nil || len(got) != 1 {
			t.Fatalf("agent %d claims %d steps (%v), want 1", agent, len(got), err)
		}
		return got[0]
	}
	want := func(agent int64, n int, backedOff bool, when string) {
		t.Helper()
		if got, off := health(t, db, agent); got != n || off != backedOff {
			t.Fatalf("%s: %d failures, backed off %v; want %d, %v", when, got, off, n, backedOff)
		}
	}

	// Reported infrastructure failure: counts.
	if err := db.RetryStep(ctx, claim(sick).Lease, "nix-store: broken", cfg); err != nil {
		t.Fatal(err)
	}
	want(sick, 1, false, "one reported failure")
	// Work released by an agent shutting down is requeued, not counted.
	released := cfg
	released.Health.Uncounted = true
	if err := db.RetryStep(ctx, claim(sick).Lease, "the agent stopped", released); err != nil {
		t.Fatal(err)
	}
	want(sick, 1, false, "released work")
	// A derivation's own failure: neither counts nor resets.
	finish(t, db, claim(sick), "failed")
	want(sick, 1, false, "a derivation's own failure")
	// A lost lease counts for the agent that held it, not for another.
	c := claim(sick)
	if _, err := db.Pool().Exec(ctx, `UPDATE steps SET lease_expires_at = now() - interval '1 second' WHERE id = $1`, c.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := db.RescueSteps(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	want(sick, 2, false, "a lost lease")
	want(well, 0, false, "the other agent")
	// A stale report counts nothing.
	if err := db.RetryStep(ctx, c.Lease, "late", cfg); err == nil {
		t.Fatal("a stale retry was accepted")
	}
	want(sick, 2, false, "a stale report")
	// The third failure reaches the threshold: backed off, and the claim skips it.
	if err := db.RetryStep(ctx, claim(sick).Lease, "nix-store: broken", cfg); err != nil {
		t.Fatal(err)
	}
	want(sick, 3, true, "at the threshold")
	a, _ := db.GetAgent(ctx, sick)
	if a.LastFailure != "nix-store: broken" || time.Until(*a.DisabledUntil) < 59*time.Minute {
		t.Errorf("last failure %q, disabled until %v (want about an hour on)", a.LastFailure, a.DisabledUntil)
	}
	if got, err := db.ClaimSteps(ctx, slots(sick, linux)); err != nil || len(got) != 0 {
		t.Fatalf("a backed-off agent claimed %d steps (%v)", len(got), err)
	}
	if at, ok, err := db.NextRetry(ctx); err != nil || !ok || at.Sub(*a.DisabledUntil).Abs() > time.Second {
		t.Errorf("next retry %v %v %v, want the end of the backoff %v", at, ok, err, a.DisabledUntil)
	}
	// The healthy agent builds meanwhile; its success does not touch the sick one.
	finish(t, db, claim(well), "succeeded")
	want(sick, 3, true, "another agent's success")
	// The backoff ends: the agent claims again; its next failure doubles the backoff.
	if _, err := db.Pool().Exec(ctx, `UPDATE agents SET disabled_until = now() - interval '1 second' WHERE id = $1`, sick); err != nil {
		t.Fatal(err)
	}
	if err := db.RetryStep(ctx, claim(sick).Lease, "again", cfg); err != nil {
		t.Fatal(err)
	}
	a, _ = db.GetAgent(ctx, sick)
	if a.ConsecutiveFailures != 4 || time.Until(*a.DisabledUntil) < 119*time.Minute {
		t.Errorf("fourth failure: %d failures, disabled until %v, want 4 and about two hours on", a.ConsecutiveFailures, a.DisabledUntil)
	}
	// An admin's reset clears it; a success does too.
	if err := db.ResetAgentHealth(ctx, sick); err != nil {
		t.Fatal(err)
	}
	want(sick, 0, false, "after the admin's reset")
	if err := db.RetryStep(ctx, claim(sick).Lease, "once", cfg); err != nil {
		t.Fatal(err)
	}
	want(sick, 1, false, "one failure after the reset")
	finish(t, db, claim(sick), "succeeded")
	want(sick, 0, false, "after a success")
}
