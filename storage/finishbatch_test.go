package storage_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// Reports recorded together: succeeded steps in one transaction (signed outputs,
// builds finished with their products and metrics, aggregates, the system
// returned), a stale lease refused alone,
// other outcomes one at a time; a batch with a step whose outputs are missing is
// recorded one report at a time, so only that report fails.
func TestFinishSteps_BatchKeepsEachReportsOutcome(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	agent := agentFixture(t, db, "SHA256:a")
	j := jobsetFixture(t, db, "p")
	ids := evaluate(t, db, j.ID, agent, job{name: "ok1"}, job{name: "ok2"}, job{name: "stale"}, job{name: "bad"},
		job{name: "prod"}, job{name: "agg", agg: []string{"ok1", "ok2"}}, job{name: "nouploads"})
	_, claimed := claimAll(t, db, slots(agent, storage.AgentSlots{Systems: []string{"x86_64-linux"}, N: 10, TTL: time.Minute}))
	by := map[string]storage.ClaimedStep{}
	for _, c := range claimed {
		by[nameOf(c.DrvPath)] = c
	}
	for _, n := range []string{"ok1", "ok2", "stale", "prod", "agg"} {
		uploadOutputs(t, db, by[n])
	}
	staleLease := by["stale"].Lease
	staleLease.Epoch++
	now := time.Now()
	ok := storage.StepOutcome{Status: "succeeded", StartedAt: now.Add(-time.Second), FinishedAt: now, ReleaseName: "rel-1"}
	batch := []storage.Finished{{Lease: by["ok1"].Lease, Outcome: ok}, {Lease: by["ok2"].Lease, Outcome: storage.StepOutcome{Status: "succeeded"}},
		{Lease: staleLease, Outcome: ok}, {Lease: by["bad"].Lease, Outcome: storage.StepOutcome{Status: "failed", ExitCode: 1}},
		{Lease: by["prod"].Lease, Outcome: storage.StepOutcome{Status: "succeeded",
			Products: []storage.Product{{Nr: 1, Type: "file", Subtype: "doc", Name: "x", Path: by["prod"].Outputs["out"] + "/x"},
				{Nr: 2, Type: "nix-build", Name: "prod", Path: by["prod"].Outputs["out"]}},
			Metrics: []storage.Metric{{Name: "coverage", Value: 87.5, Unit: "%"}, {Name: "coverage", Value: 10, Unit: "%"}}}},
		{Lease: by["agg"].Lease, Outcome: ok}}
	res := db.FinishSteps(ctx, batch, testSigner)
	for i, r := range res {
		stale := i == 2
		if stale != errors.Is(r.Err, storage.ErrStaleLease) || (!stale && r.Err != nil) {
			t.Errorf("report %d: %v", i, r.Err)
		}
	}
	if res[0].System != "x86_64-linux" || res[1].System != "x86_64-linux" {
		t.Errorf("systems of the batch %q %q, want x86_64-linux", res[0].System, res[1].System)
	}
	if res[0].Dependents || res[1].Dependents {
		t.Errorf("ok1 and ok2 (no step depends on them) reported with dependents: %v %v", res[0].Dependents, res[1].Dependents)
	}
	if !res[3].Dependents {
		t.Error("bad, recorded alone, reported without dependents (not looked up: it must say it may have some)")
	}
	for name, want := range map[string]string{"ok1": "succeeded", "ok2": "succeeded", "stale": "running", "bad": "failed",
		"prod": "succeeded", "agg": "succeeded", "nouploads": "running"} {
		if status, _ := buildStatus(t, db, ids[name]); status != want {
			t.Errorf("%s: %s, want %s", name, status, want)
		}
	}
	b, err := db.GetBuild(ctx, ids["ok1"])
	if err != nil {
		t.Fatal(err)
	}
	if b.ReleaseName != "rel-1" || len(b.Products) != 0 || len(b.Metrics) != 0 {
		t.Errorf("ok1: release name %q, products %+v, metrics %+v; want rel-1 and none", b.ReleaseName, b.Products, b.Metrics)
	}
	// Products and metrics recorded with the batch, on the step's build.
	b, err = db.GetBuild(ctx, ids["prod"])
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Products) != 2 || b.Products[0].Name != "x" || b.Products[0].Subtype != "doc" || b.Products[1].Type != "nix-build" ||
		len(b.Metrics) != 1 || b.Metrics[0].Name != "coverage" || b.Metrics[0].Value != 87.5 || b.Metrics[0].Unit != "%" {
		t.Errorf("prod: products %+v, metrics %+v; want x (doc), the nix-build output and coverage 87.5 %% (the first of two)", b.Products, b.Metrics)
	}
	for _, n := range []string{"ok1", "ok2", "agg"} {
		p := by[n].Outputs["out"]
		ni, err := db.GetNarinfo(ctx, p[len("/nix/store/"):len("/nix/store/")+32])
		if err != nil || ni.PendingStep != 0 || len(ni.Sigs) != 1 {
			t.Errorf("%s's output after the batch: %+v, %v; want signed and served", n, ni, err)
		}
	}
	// A batch in which one step uploaded nothing: that report alone fails.
	uploadOutputs(t, db, by["stale"])
	res = db.FinishSteps(ctx, []storage.Finished{{Lease: by["stale"].Lease, Outcome: ok},
		{Lease: by["nouploads"].Lease, Outcome: ok}}, testSigner)
	if res[0].Err != nil || !errors.Is(res[1].Err, storage.ErrOutputsMissing) {
		t.Errorf("batch with missing outputs: %v, %v; want nil, ErrOutputsMissing", res[0].Err, res[1].Err)
	}
	if status, _ := buildStatus(t, db, ids["stale"]); status != "succeeded" {
		t.Errorf("stale after its own report: %s, want succeeded", status)
	}
	if status, _ := buildStatus(t, db, ids["nouploads"]); status != "running" {
		t.Errorf("nouploads: %s, want running (nothing recorded)", status)
	}
}
