package storage_test

import (
	"context"
	"slices"
	"testing"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// buildsOf lists an evaluation's builds by job, as the API's ?evaluation_id= does.
func buildsOf(t *testing.T, db *storage.DB, evalID int64) map[string]storage.BuildSummary {
	t.Helper()
	bs, total, err := db.ListBuilds(context.Background(), storage.BuildFilter{EvaluationID: evalID}, storage.Page{Limit: 100})
	if err != nil || int(total) != len(bs) {
		t.Fatalf("builds of evaluation %d: %v (total %d, %d listed)", evalID, err, total, len(bs))
	}
	out := map[string]storage.BuildSummary{}
	for _, b := range bs {
		out[b.Job] = b
	}
	return out
}

func TestFinishEvaluation_UnchangedJobsReuseTheirBuildsAndChangedOnesGetNew(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	agent := agentFixture(t, db, "SHA256:reuse")
	js := jobsetFixture(t, db, "reuse")

	l1 := claimEval(t, db, js.ID, agent)
	if err := db.FinishEvaluation(ctx, l1, outcome()); err != nil {
		t.Fatal(err)
	}
	first := buildsOf(t, db, l1.ID)
	if len(first) != 3 {
		t.Fatalf("first evaluation has %d builds, want 3", len(first))
	}

	l2 := claimEval(t, db, js.ID, agent)
	if err := db.FinishEvaluation(ctx, l2, outcome()); err != nil {
		t.Fatal(err)
	}
	second := buildsOf(t, db, l2.ID)
	for job, b := range first {
		if second[job].ID != b.ID || second[job].EvaluationID != l1.ID {
			t.Errorf("job %s: build %+v in the re-evaluation, want build %d created by evaluation %d", job, second[job], b.ID, l1.ID)
		}
	}
	e2, err := db.GetEvaluation(ctx, l2.ID)
	if err != nil || e2.NrJobs != 3 || e2.NrNewBuilds != 0 {
		t.Errorf("re-evaluation: %+v %v, want 3 jobs and no new build", e2, err)
	}
	if s, err := db.EvalSummary(ctx, l2.ID); err != nil || s.Builds != 3 {
		t.Errorf("summary of the re-evaluation counts %d builds (%v), want 3", s.Builds, err)
	}

	// top's derivation changes: it alone gets a new build.
	o := outcome()
	newTop := "/nix/store/55555555555555555555555555555555-top.drv"
	o.Jobs[1].DrvPath = newTop
	o.Nodes[1].DrvPath = newTop
	l3 := claimEval(t, db, js.ID, agent)
	if err := db.FinishEvaluation(ctx, l3, o); err != nil {
		t.Fatal(err)
	}
	third := buildsOf(t, db, l3.ID)
	if third["top"].ID == first["top"].ID || third["top"].EvaluationID != l3.ID || third["top"].DrvPath != newTop {
		t.Errorf("changed job top: %+v, want a new build of evaluation %d", third["top"], l3.ID)
	}
	if third["base"].ID != first["base"].ID {
		t.Errorf("unchanged base: build %d, want %d", third["base"].ID, first["base"].ID)
	}
	e3, err := db.GetEvaluation(ctx, l3.ID)
	if err != nil || e3.NrNewBuilds != 1 {
		t.Errorf("evaluation with one changed job: %+v %v, want 1 new build", e3, err)
	}
	// The first evaluation still lists its own builds, not the later one.
	if ids := slices.Sorted(func(yield func(int64) bool) {
		for _, b := range buildsOf(t, db, l1.ID) {
			if !yield(b.ID) {
				return
			}
		}
	}); len(ids) != 3 || slices.Contains(ids, third["top"].ID) {
		t.Errorf("first evaluation's builds after the third: %v", ids)
	}
	c, err := db.CompareEvaluations(ctx, l3.ID, l2.ID, storage.TabQueued, "", storage.Page{})
	if err != nil || c.Counts[storage.TabRemoved] != 0 || c.Counts[storage.TabNew] != 0 {
		t.Errorf("comparison of the third evaluation with the second: %+v %v", c, err)
	}
}
