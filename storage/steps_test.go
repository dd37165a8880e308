package storage_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// drv and out make distinct store paths for a test derivation name.
func drv(name string) string { return "/nix/store/" + hash32("d"+name) + "-" + name + ".drv" }
func out(name string) string { return "/nix/store/" + hash32("o"+name) + "-" + name }

func hash32(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])[:32]
}

// job is a test job: its name, the jobs it depends on, and options.
type job struct {
	name     string
	deps     []string
	system   string
	features []string
	prio     int
	agg      []string // constituents: makes an aggregate
}

// evaluate stores an evaluation of jobs in jobset (every job must be built) and
// returns the build id of each job.
func evaluate(t *testing.T, db *storage.DB, jobsetID, agent int64, jobs ...job) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	l := claimEval(t, db, jobsetID, agent)
	if err := db.FinishEvaluation(ctx, l, jobsOutcome(jobs...)); err != nil {
		t.Fatal(err)
	}
	bs, _, err := db.ListBuilds(ctx, storage.BuildFilter{EvaluationID: l.ID}, storage.Page{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]int64{}
	for _, b := range bs {
		ids[b.Job] = b.ID
	}
	return ids
}

// jobsOutcome is an evaluation's report of jobs, each a derivation to build whose inputs
// are its deps' derivations.
func jobsOutcome(jobs ...job) storage.EvalOutcome {
	var o storage.EvalOutcome
	for _, j := range jobs {
		sys := j.system
		if sys == "" {
			sys = "x86_64-linux"
		}
		o.Jobs = append(o.Jobs, storage.EvalJob{Attr: j.name, DrvPath: drv(j.name), System: sys,
			Outputs: map[string]string{"out": out(j.name)}, SchedulingPriority: j.prio, IsAggregate: j.agg != nil,
			Constituents: j.agg})
		var inputs []string
		for _, d := range j.deps {
			inputs = append(inputs, drv(d))
		}
		o.Nodes = append(o.Nodes, storage.EvalNode{DrvPath: drv(j.name), System: sys, RequiredFeatures: j.features,
			Outputs: map[string]string{"out": out(j.name)}, Inputs: inputs})
	}
	return o
}

var linux = storage.AgentSlots{Systems: []string{"x86_64-linux"}, N: 1, TTL: time.Minute}

func slots(agent int64, s storage.AgentSlots) storage.AgentSlots { s.AgentID = agent; return s }

// claimAll claims one step at a time and returns the derivation names in claim order.
func claimAll(t *testing.T, db *storage.DB, a storage.AgentSlots) ([]string, []storage.ClaimedStep) {
	t.Helper()
	var names []string
	var all []storage.ClaimedStep
	for {
		got, err := db.ClaimSteps(context.Background(), a)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			return names, all
		}
		for _, c := range got {
			names = append(names, nameOf(c.DrvPath))
			all = append(all, c)
		}
	}
}

func nameOf(drvPath string) string {
	base := drvPath[len("/nix/store/")+33:]
	return base[:len(base)-len(".drv")]
}

func buildStatus(t *testing.T, db *storage.DB, id int64) (string, *int64) {
	t.Helper()
	b, err := db.GetBuild(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return b.Status, b.PropagatedFrom
}

// finish records a step's outcome; a step that built its outputs uploaded them first,
// as its builder does (pending until the success is recorded).
func finish(t *testing.T, db *storage.DB, c storage.ClaimedStep, status string) {
	t.Helper()
	if status == "succeeded" || status == "failed_with_output" {
		uploadOutputs(t, db, c)
	}
	if err := db.FinishStep(context.Background(), c.Lease, storage.StepOutcome{Status: status}, testSigner); err != nil {
		t.Fatal(err)
	}
}

func testSigner(n storage.Narinfo) (string, error) { return "test-1:" + n.HashPart, nil }

// uploadOutputs commits a step's outputs as its builder's upload does: pending.
func uploadOutputs(t *testing.T, db *storage.DB, c storage.ClaimedStep) {
	t.Helper()
	var ns []storage.Narinfo
	for _, p := range c.Outputs {
		h := p[len("/nix/store/") : len("/nix/store/")+32]
		ns = append(ns, storage.Narinfo{HashPart: h, StorePath: p, URL: "nar/" + h + ".nar.zst", Compression: "zstd",
			FileHash: "sha256:" + h, FileSize: 1, NarHash: "sha256:" + h, NarSize: 1, PendingStep: c.ID})
	}
	err := db.CommitNarinfos(context.Background(), ns, nil, nil, storage.UploadGrant{AgentID: c.AgentID, Steps: []int64{c.ID}}, func() error { return nil })
	if err != nil {
		t.Fatal(err)
	}
}

func TestClaimSteps_SchedulingOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	agent := agentFixture(t, db, "SHA256:a")
	busy, idle := jobsetFixture(t, db, "busy"), jobsetFixture(t, db, "idle")
	// The busy jobset used an hour of build time in the last day.
	ids := evaluate(t, db, busy.ID, agent, job{name: "old"})
	if _, err := db.Pool().Exec(ctx, `UPDATE builds SET status = 'succeeded', started_at = now() - interval '2 hours',
		finished_at = now() - interval '1 hour' WHERE id = $1`, ids["old"]); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Pool().Exec(ctx, `UPDATE steps SET status = 'succeeded'`); err != nil {
		t.Fatal(err)
	}
	// In the busy jobset: age1 and age2 (oldest first), a critical path (cp-base has
	// a dependent), a higher schedulingPriority, and a bumped one.
	evaluate(t, db, busy.ID, agent, job{name: "age1"})
	evaluate(t, db, busy.ID, agent, job{name: "age2"}, job{name: "cp-base"}, job{name: "cp-top", deps: []string{"cp-base"}},
		job{name: "prio", prio: 200})
	bumped := evaluate(t, db, busy.ID, agent, job{name: "bumped"})
	evaluate(t, db, idle.ID, agent, job{name: "share"})
	if _, err := db.BumpBuild(ctx, bumped["bumped"]); err != nil {
		t.Fatal(err)
	}
	got, _ := claimAll(t, db, slots(agent, linux))
	want := []string{"bumped", "share", "prio", "cp-base", "age1", "age2"}
	if !slices.Equal(got, want) {
		t.Errorf("claim order %v, want %v (bump > share > schedulingPriority > critical path > age; cp-top waits for cp-base)", got, want)
	}
}

func TestClaimSteps_SystemsFeaturesAndMandatoryFeatures(t *testing.T) {
	t.Parallel()
	db := storagetest.New(t)
	agent := agentFixture(t, db, "SHA256:a")
	j := jobsetFixture(t, db, "p")
	evaluate(t, db, j.ID, agent, job{name: "plain"}, job{name: "kvm", features: []string{"kvm"}},
		job{name: "arm", system: "aarch64-linux"}, job{name: "big", features: []string{"big-parallel"}})
	// An agent kept for big-parallel takes only steps that require it.
	got, _ := claimAll(t, db, slots(agent, storage.AgentSlots{Systems: []string{"x86_64-linux"},
		Features: []string{"kvm", "big-parallel"}, MandatoryFeatures: []string{"big-parallel"}, N: 5, TTL: time.Minute}))
	if !slices.Equal(got, []string{"big"}) {
		t.Errorf("mandatory big-parallel agent claimed %v, want [big]", got)
	}
	got, _ = claimAll(t, db, slots(agent, storage.AgentSlots{Systems: []string{"x86_64-linux"}, N: 5, TTL: time.Minute}))
	if !slices.Equal(got, []string{"plain"}) {
		t.Errorf("agent without features claimed %v, want [plain]", got)
	}
	got, _ = claimAll(t, db, slots(agent, storage.AgentSlots{Systems: []string{"x86_64-linux"}, Features: []string{"kvm"}, N: 5, TTL: time.Minute}))
	if !slices.Equal(got, []string{"kvm"}) {
		t.Errorf("kvm agent claimed %v, want [kvm]", got)
	}
}

func TestFinishStep_FailurePropagatesAndIsRememberedUntilRestart(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	agent := agentFixture(t, db, "SHA256:a")
	j := jobsetFixture(t, db, "p")
	ids := evaluate(t, db, j.ID, agent, job{name: "bad"}, job{name: "mid", deps: []string{"bad"}},
		job{name: "top", deps: []string{"mid"}}, job{name: "fine"},
		job{name: "all", agg: []string{"fine", "bad"}}, job{name: "good", agg: []string{"fine"}})
	got, claimed := claimAll(t, db, slots(agent, storage.AgentSlots{Systems: []string{"x86_64-linux"}, N: 10, TTL: time.Minute}))
	if len(got) != 4 { // bad, fine and the two aggregates' own derivations; mid and top wait
		t.Fatalf("claimed %v", got)
	}
	stale := claimed[0].Lease
	stale.Epoch++
	if err := db.FinishStep(ctx, stale, storage.StepOutcome{Status: "succeeded"}, testSigner); !errors.Is(err, storage.ErrStaleLease) {
		t.Fatalf("report with another epoch: %v, want ErrStaleLease", err)
	}
	for _, c := range claimed {
		status := "succeeded"
		if nameOf(c.DrvPath) == "bad" {
			status = "failed"
		}
		finish(t, db, c, status)
	}
	for name, want := range map[string]string{"bad": "failed", "mid": "dependency_failed", "top": "dependency_failed",
		"fine": "succeeded", "all": "failed", "good": "succeeded"} {
		status, from := buildStatus(t, db, ids[name])
		if status != want {
			t.Errorf("%s: %s, want %s", name, status, want)
		}
		if want == "dependency_failed" && (from == nil || *from != ids["bad"]) {
			t.Errorf("%s: propagated_from %v, want build %d", name, from, ids["bad"])
		}
	}
	// The same derivation in another jobset's new evaluation is a cached failure at
	// once; in this jobset it is the same build (reused, as Hydra does).
	again := evaluate(t, db, jobsetFixture(t, db, "p2").ID, agent, job{name: "bad"})
	if status, _ := buildStatus(t, db, again["bad"]); status != "cached_failure" {
		t.Errorf("bad again: %s, want cached_failure", status)
	}
	if same := evaluate(t, db, j.ID, agent, job{name: "bad"}); same["bad"] != ids["bad"] {
		t.Errorf("bad again in its jobset: build %d, want the same build %d", same["bad"], ids["bad"])
	}
	// Restart: bad, mid and top run again, in order; the aggregate waits again.
	if _, err := db.RestartBuild(ctx, ids["top"]); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"bad", "mid", "top", "all"} {
		if status, from := buildStatus(t, db, ids[name]); status != "queued" || from != nil {
			t.Errorf("after restart %s: %s from %v, want queued", name, status, from)
		}
	}
	var order []string
	for range 3 {
		got, claimed := claimAll(t, db, slots(agent, linux))
		order = append(order, got...)
		for _, c := range claimed {
			finish(t, db, c, "succeeded")
		}
	}
	if !slices.Equal(order, []string{"bad", "mid", "top"}) {
		t.Errorf("after restart built %v, want bad, mid, top", order)
	}
	for _, name := range []string{"bad", "mid", "top", "all"} {
		if status, _ := buildStatus(t, db, ids[name]); status != "succeeded" {
			t.Errorf("after rebuilding %s: %s", name, status)
		}
	}
	if _, err := db.RestartBuild(ctx, ids["top"]); !errors.Is(err, storage.ErrNothingToDo) {
		t.Errorf("restart of a succeeded build: %v, want ErrNothingToDo", err)
	}
}

func TestFailedPaths_LaterStepEndsCachedFailure(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	agent := agentFixture(t, db, "SHA256:a")
	j := jobsetFixture(t, db, "p")
	ids := evaluate(t, db, j.ID, agent, job{name: "x"})
	if _, err := db.Pool().Exec(ctx, `INSERT INTO failed_paths (path) VALUES ($1)`, out("x")); err != nil {
		t.Fatal(err)
	}
	if got, _ := claimAll(t, db, slots(agent, linux)); len(got) != 0 {
		t.Errorf("a step whose output failed before was claimed: %v", got)
	}
	if n, err := db.FailCachedSteps(ctx); err != nil || n != 1 {
		t.Fatalf("FailCachedSteps: %d %v", n, err)
	}
	if status, _ := buildStatus(t, db, ids["x"]); status != "cached_failure" {
		t.Errorf("x: %s, want cached_failure", status)
	}
}

func TestCancelAndRescueAndUnsupported(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	agent := agentFixture(t, db, "SHA256:a")
	j := jobsetFixture(t, db, "p")
	ids := evaluate(t, db, j.ID, agent, job{name: "long"}, job{name: "after", deps: []string{"long"}},
		job{name: "lost"}, job{name: "arm", system: "aarch64-linux"})
	_, claimed := claimAll(t, db, slots(agent, storage.AgentSlots{Systems: []string{"x86_64-linux"}, N: 2, TTL: time.Minute}))
	if len(claimed) != 2 {
		t.Fatalf("claimed %d", len(claimed))
	}
	byName := map[string]storage.ClaimedStep{}
	for _, c := range claimed {
		byName[nameOf(c.DrvPath)] = c
	}
	running, err := db.CancelBuild(ctx, ids["long"])
	if err != nil || len(running) != 1 || running[0].ID != byName["long"].ID || running[0].Epoch != byName["long"].Epoch {
		t.Fatalf("cancel: %+v %v, want the running lease of long", running, err)
	}
	for _, name := range []string{"long", "after"} {
		if status, _ := buildStatus(t, db, ids[name]); status != "cancelled" {
			t.Errorf("%s after cancel: %s", name, status)
		}
	}
	if err := db.FinishStep(ctx, byName["long"].Lease, storage.StepOutcome{Status: "succeeded"}, testSigner); !errors.Is(err, storage.ErrStaleLease) {
		t.Errorf("report for a cancelled step: %v, want ErrStaleLease", err)
	}
	// The lost step's lease expires: requeued with backoff, then aborted at max_attempts.
	cfg := storage.LeaseConfig{MaxAttempts: 2, Backoff: 0}
	for attempt := 1; attempt <= 2; attempt++ {
		if _, err := db.Pool().Exec(ctx, `UPDATE steps SET lease_expires_at = now() - interval '1 second' WHERE drv_path = $1`, drv("lost")); err != nil {
			t.Fatal(err)
		}
		requeued, aborted, err := db.RescueSteps(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		status, _ := buildStatus(t, db, ids["lost"])
		if attempt == 1 && (requeued != 1 || status != "queued") {
			t.Fatalf("first expiry: requeued %d, build %s", requeued, status)
		}
		if attempt == 2 && (aborted != 1 || status != "aborted") {
			t.Fatalf("second expiry: aborted %d, build %s", aborted, status)
		}
		if attempt == 1 {
			if got, _ := claimAll(t, db, slots(agent, linux)); !slices.Equal(got, []string{"lost"}) {
				t.Fatalf("reclaim: %v", got)
			}
		}
	}
	// Nobody builds aarch64-linux: it ends unsupported once the wait is over, not before.
	if n, err := db.EndUnsupportedSteps(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("within the wait: %d %v", n, err)
	}
	if n, err := db.EndUnsupportedSteps(ctx, 0); err != nil || n != 1 {
		t.Fatalf("after the wait: %d %v", n, err)
	}
	if status, _ := buildStatus(t, db, ids["arm"]); status != "unsupported_system" {
		t.Errorf("arm: %s", status)
	}
}
