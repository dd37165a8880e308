package evalqueue_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	agentconfig "github.com/fc-ci/fc/agent/config"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
)

// A path input that names the evaluating agent's key, directly or through a symlink,
// is refused by the agent even where both the coordinator's and the agent's lists
// (carelessly) allow the directory that holds it: the key never reaches an
// evaluation's messages. An allowed path input still works.
func TestPathInputs_TheAgentNeverHandsItsKeyToAnEvaluation(t *testing.T) {
	t.Parallel()
	base, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	stateDir := filepath.Join(base, "agent-state")
	data := filepath.Join(base, "inputs", "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "hello.txt"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	keyLink := filepath.Join(base, "inputs", "key")
	if err := os.Symlink(filepath.Join(stateDir, "agent_key"), keyLink); err != nil {
		t.Fatal(err)
	}

	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) {
		cfg.Eval.AllowedInputPaths = []string{base}
	}})
	s := coordtest.Salt(t)
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf(`{ src }: {
  leak = throw ("leak: " + builtins.readFile src);
  data = derivation { name = "data-%s-${builtins.readFile (src + "/hello.txt")}"; system = builtins.currentSystem;
    builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; };
}
`, s)})
	pathInput := func(value string) map[string]any {
		return map[string]any{"inputs": []map[string]any{{"name": "src", "type": "path", "value": value}}}
	}
	pid, keyJobset := c.Project("demo", repo.Dir, pathInput(filepath.Join(stateDir, "agent_key")))
	jobset := func(name, value string) int64 {
		body := pathInput(value)
		for k, v := range map[string]any{"name": name, "branch": "main", "flake_mode": false, "nix_expression": "release.nix", "check_interval": 0} {
			body[k] = v
		}
		var j struct{ ID int64 }
		if code := c.Do("POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", pid), c.Admin, body, &j); code != 201 {
			t.Fatalf("create jobset %s: %d", name, code)
		}
		return j.ID
	}
	linkJobset := jobset("link", keyLink)
	dotsJobset := jobset("dots", filepath.Join(base, "inputs", "..", "agent-state", "agent_key"))
	okJobset := jobset("ok", data)

	startEvalAgent(t, c, "evaluator", stateDir, func(cfg *agentconfig.Config) {
		cfg.Agent.AllowedInputPaths = []string{base}
	})
	key, err := os.ReadFile(filepath.Join(stateDir, "agent_key"))
	if err != nil || !strings.Contains(string(key), "PRIVATE KEY") {
		t.Fatalf("the agent's key: %q %v", key, err)
	}
	// Any line of the key's body would do to recognise it.
	var keyLines []string
	for _, l := range strings.Split(string(key), "\n") {
		if len(l) > 20 && !strings.HasPrefix(l, "-----") {
			keyLines = append(keyLines, l)
		}
	}
	if len(keyLines) == 0 {
		t.Fatalf("no key body in %q", key)
	}

	for _, js := range []int64{keyJobset, linkJobset, dotsJobset} {
		c.Trigger(js, false)
		ev := finishedEvaluation(t, c, js)
		texts := []string{ev.Error}
		for _, e := range ev.Errors {
			texts = append(texts, e.Message)
		}
		all := strings.Join(texts, "\n")
		for _, l := range keyLines {
			if strings.Contains(all, l) {
				t.Fatalf("jobset %d: the agent's key is in the evaluation's messages:\n%s", js, all)
			}
		}
		if ev.Status != "failed" || !strings.Contains(ev.Error, "own state") {
			t.Errorf("jobset %d: evaluation %s with error %q, want it failed with the agent's refusal", js, ev.Status, ev.Error)
		}
	}
	c.Trigger(okJobset, false)
	ev := waitEvaluation(t, c, okJobset, "succeeded")
	if got := coordtest.BuildsOf(t, c, ev.ID)["data"]; !strings.HasSuffix(got.DrvPath, "-data-"+s+"-hello.drv") {
		t.Errorf("the allowed path input: build %+v, errors %+v", got, ev.Errors)
	}
}

// A jobset whose path input is no longer under evaluator.allowed_input_paths (the
// list changed since an admin set it) is not evaluated; the jobset says why.
func TestPathInputs_NoLongerAllowedIsNotEvaluated(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": "{ src }: { }"})
	pid, js := c.Project("demo", repo.Dir, nil)
	if _, err := c.DB.Pool().Exec(context.Background(),
		`INSERT INTO jobset_inputs (jobset_id, name, type, value) VALUES ($1, 'src', 'path', '/srv/once-allowed')`, js); err != nil {
		t.Fatal(err)
	}
	c.Trigger(js, false)
	coordtest.Checked(t, c, js)
	var got struct {
		LastCheckError string `json:"last_check_error"`
	}
	c.Do("GET", fmt.Sprintf("/api/v1/projects/%d/jobsets/%d", pid, js), "", nil, &got)
	if !strings.Contains(got.LastCheckError, "evaluator.allowed_input_paths") || len(coordtest.Evaluations(t, c, js)) != 0 {
		t.Fatalf("last_check_error %q, %d evaluations", got.LastCheckError, len(coordtest.Evaluations(t, c, js)))
	}
}

// finishedEvaluation waits for the jobset's latest evaluation to end, either way.
func finishedEvaluation(t *testing.T, c *coordtest.Coordinator, jobsetID int64) evalDetail {
	t.Helper()
	var got evalDetail
	coordtest.Eventually(t, 120*time.Second, "the evaluation ends", func() bool {
		evs := coordtest.Evaluations(t, c, jobsetID)
		if len(evs) == 0 {
			return false
		}
		c.Do("GET", fmt.Sprintf("/api/v1/evaluations/%d", evs[0].ID), "", nil, &got)
		return got.Status == "succeeded" || got.Status == "failed"
	})
	return got
}
