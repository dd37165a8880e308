package evalqueue_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/fc-ci/fc/coordinator/coordtest"
)

const noFlake = "no flake.nix at the repository root (this jobset is in flake mode; for release.nix set flake_mode false)"

// A flake-mode jobset on a repository with only release.nix fails with an error that
// says so (not a path inside the agent's eval store), on the evaluation and on the
// jobset's last_check_error.
func TestEvaluation_FlakeModeWithoutFlakeNixSaysSo(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": releaseNix(coordtest.Salt(t), false)})
	pid, js := c.Project("noflake", repo.Dir, map[string]any{"flake_mode": true, "nix_expression": "hydraJobs"})
	startEvalAgent(t, c, "evaluator", t.TempDir())
	c.Trigger(js, false)
	ev := waitEvaluation(t, c, js, "failed")
	if !strings.Contains(ev.Error, noFlake) || strings.Contains(ev.Error, "/nix/store") || strings.Contains(ev.Error, "/dev/shm") {
		t.Errorf("evaluation error %q, want %q", ev.Error, noFlake)
	}
	var j struct {
		LastCheckError string `json:"last_check_error"`
	}
	if code := c.Do("GET", fmt.Sprintf("/api/v1/projects/%d/jobsets/%d", pid, js), "", nil, &j); code != 200 || !strings.Contains(j.LastCheckError, noFlake) {
		t.Errorf("jobset's last_check_error: %d %q, want %q", code, j.LastCheckError, noFlake)
	}
}
