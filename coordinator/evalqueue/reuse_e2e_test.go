package evalqueue_test

import (
	"fmt"
	"testing"

	"github.com/fc-ci/fc/coordinator/coordtest"
)

// A forced re-evaluation of an unchanged commit reuses every build (Hydra's reuse);
// a commit that changes one job gives that job alone a new build.
func TestEvaluation_ForcedReevaluationReusesBuildsAndAChangedJobGetsANewOne(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	s := coordtest.Salt(t)
	file := func(bText string) string {
		return fmt.Sprintf(`let mk = name: script: derivation { name = "${name}-%s"; system = builtins.currentSystem;
  builder = "/bin/sh"; args = [ "-c" script ]; };
in { a = mk "a" "echo a > $out"; b = mk "b" "echo %s > $out"; }`, s, bText)
	}
	repo.Commit(map[string]string{"release.nix": file("b")})
	_, js := c.Project("demo", repo.Dir, nil)
	startEvalAgent(t, c, "evaluator", t.TempDir())
	c.Trigger(js, false)
	first := coordtest.Evaluated(t, c, js, 0)
	before := coordtest.BuildsOf(t, c, first)
	if len(before) != 2 {
		t.Fatalf("first evaluation has %d builds, want 2", len(before))
	}

	c.Trigger(js, true)
	second := coordtest.Evaluated(t, c, js, first)
	var ev struct {
		NrJobs      int `json:"nr_jobs"`
		NrNewBuilds int `json:"nr_new_builds"`
	}
	if code := c.Do("GET", fmt.Sprintf("/api/v1/evaluations/%d", second), "", nil, &ev); code != 200 || ev.NrJobs != 2 || ev.NrNewBuilds != 0 {
		t.Errorf("forced re-evaluation: %d %+v, want 2 jobs and 0 new builds", code, ev)
	}
	after := coordtest.BuildsOf(t, c, second)
	for job, b := range before {
		if after[job].ID != b.ID {
			t.Errorf("job %s: build %d in the re-evaluation, want the same build %d", job, after[job].ID, b.ID)
		}
	}

	repo.Commit(map[string]string{"release.nix": file("changed")})
	c.Trigger(js, false)
	third := coordtest.Evaluated(t, c, js, second)
	changed := coordtest.BuildsOf(t, c, third)
	if changed["a"].ID != before["a"].ID {
		t.Errorf("unchanged a: build %d, want %d", changed["a"].ID, before["a"].ID)
	}
	if changed["b"].ID == before["b"].ID || changed["b"].ID == 0 {
		t.Errorf("changed b: build %d, want a new one (was %d)", changed["b"].ID, before["b"].ID)
	}
	if code := c.Do("GET", fmt.Sprintf("/api/v1/evaluations/%d", third), "", nil, &ev); code != 200 || ev.NrNewBuilds != 1 {
		t.Errorf("evaluation of the changed commit: %+v, want 1 new build", ev)
	}
}
