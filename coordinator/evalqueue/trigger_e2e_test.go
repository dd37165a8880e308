package evalqueue_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"

	"github.com/fc-ci/fc/coordinator/coordtest"
)

type triggerAnswer struct {
	EvaluationID *int64 `json:"evaluation_id"`
	Reason       string `json:"reason"`
	WaitingFor   int64  `json:"waiting_for"`
	Error        string `json:"error"`
}

// The trigger says which evaluation it created, or that the inputs are unchanged;
// jobset_id may be "project/jobset" in bodies and queries, and build lists carry the
// project's and jobset's names.
func TestTrigger_AnswersTheEvaluationOrUnchangedAndTakesJobsetNames(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	s := coordtest.Salt(t)
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf(`{ a = derivation { name = "a-%s"; system = builtins.currentSystem;
  builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }; }`, s)})
	_, js := c.Project("names", repo.Dir, nil)
	trigger := func(body map[string]any) (int, triggerAnswer) {
		var a triggerAnswer
		code := c.Do("POST", "/api/v1/evaluations/trigger", c.Admin, body, &a)
		return code, a
	}

	code, a := trigger(map[string]any{"jobset_id": "names/main"})
	if code != 202 || a.EvaluationID == nil {
		t.Fatalf("first trigger: %d %+v, want 202 with the evaluation's id", code, a)
	}
	created := *a.EvaluationID
	// The evaluation is queued (no agent yet): a second trigger waits for it.
	if code, a := trigger(map[string]any{"jobset_id": js}); code != 202 || a.EvaluationID != nil || a.WaitingFor != created {
		t.Errorf("trigger while the evaluation is queued: %d %+v, want 202 waiting for %d", code, a, created)
	}
	startEvalAgent(t, c, "evaluator", t.TempDir())
	if got := coordtest.Evaluated(t, c, js, 0); got != created {
		t.Fatalf("evaluation %d succeeded, want %d", got, created)
	}
	coordtest.Checked(t, c, js) // the pending trigger found the inputs unchanged
	code, a = trigger(map[string]any{"jobset_id": "names/main"})
	if code != 200 || a.EvaluationID != nil || a.Reason != "unchanged" {
		t.Errorf("trigger of an unchanged jobset: %d %+v, want 200, null and unchanged", code, a)
	}
	if evs := coordtest.Evaluations(t, c, js); len(evs) != 1 {
		t.Errorf("%d evaluations after triggers of unchanged inputs, want 1", len(evs))
	}
	// A repository that cannot be read: the trigger says why and stays pending.
	_, gone := c.Project("gone", t.TempDir()+"/nothing-here", nil)
	if code, a := trigger(map[string]any{"jobset_id": "gone/main"}); code != 202 || a.EvaluationID != nil ||
		a.Reason != "check_failed" || a.Error == "" {
		t.Errorf("trigger of an unreadable repository: %d %+v, want 202, check_failed and the error", code, a)
	}
	var pending bool
	if err := c.DB.Pool().QueryRow(context.Background(), `SELECT trigger_requested_at IS NOT NULL FROM jobsets WHERE id = $1`, gone).Scan(&pending); err != nil || !pending {
		t.Errorf("the failed check's trigger is not pending (%v)", err)
	}
	for _, bad := range []any{"names/nope", "names", 0, true} {
		if code, a := trigger(map[string]any{"jobset_id": bad}); code != 422 {
			t.Errorf("trigger of jobset_id %v: %d %+v, want 422", bad, code, a)
		}
	}

	var evs struct {
		Items []struct{ ID int64 } `json:"items"`
	}
	if code := c.Do("GET", "/api/v1/evaluations?jobset_id="+url.QueryEscape("names/main"), "", nil, &evs); code != 200 ||
		len(evs.Items) != 1 || evs.Items[0].ID != created {
		t.Errorf("evaluations of names/main: %d %+v", code, evs)
	}
	var builds struct {
		Items []struct {
			ID      int64  `json:"id"`
			Project string `json:"project"`
			Jobset  string `json:"jobset"`
		} `json:"items"`
	}
	if code := c.Do("GET", "/api/v1/builds?jobset_id="+url.QueryEscape("names/main"), "", nil, &builds); code != 200 ||
		len(builds.Items) != 1 || builds.Items[0].Project != "names" || builds.Items[0].Jobset != "main" {
		t.Fatalf("builds of names/main: %d %+v", code, builds)
	}
	if code := c.Do("GET", "/api/v1/builds?jobset_id=nope/main", "", nil, nil); code != 422 {
		t.Errorf("builds of an unknown jobset name: %d, want 422", code)
	}
	var detail map[string]any
	c.Do("GET", fmt.Sprintf("/api/v1/builds/%d", builds.Items[0].ID), "", nil, &detail)
	for _, k := range []string{"products", "metrics", "constituents", "steps"} {
		if l, ok := detail[k].([]any); !ok || l == nil {
			t.Errorf("build's %s: %#v, want []", k, detail[k])
		}
	}
}
