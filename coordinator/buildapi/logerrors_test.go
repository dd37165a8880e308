package buildapi_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/coordtest"
)

// A dependency_failed build's log is a 404 naming the failed build and where its log
// is; a build that printed nothing has an empty log, not a 404.
func TestBuildLog_DependencyFailedNamesTheFailedBuildAndSilentIsEmpty(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf(`let
  %s
  broken = mk "broken" { args = sh "exit 1"; };
in {
  inherit broken;
  dependent = mk "dependent" { args = sh "echo ${broken} > $out"; };
  silent = mk "silent" { args = sh "touch $out"; };
}
`, coordtest.MkLet(coordtest.Salt(t)))})
	_, js := c.Project("logs", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "builder"})
	c.Trigger(js, false)
	builds := coordtest.BuildsOf(t, c, coordtest.Evaluated(t, c, js, 0))
	finished := func(b coordtest.Build) bool { return b.Finished() }
	broken := coordtest.WaitBuild(t, c, builds["broken"].ID, 2*time.Minute, "broken fails", finished)
	dependent := coordtest.WaitBuild(t, c, builds["dependent"].ID, 2*time.Minute, "dependent ends", finished)
	silent := coordtest.WaitBuild(t, c, builds["silent"].ID, 2*time.Minute, "silent succeeds", finished)
	if broken.Status != "failed" || dependent.Status != "dependency_failed" || silent.Status != "succeeded" {
		t.Fatalf("statuses: broken %s, dependent %s, silent %s", broken.Status, dependent.Status, silent.Status)
	}

	code, body := coordtest.Get(t, fmt.Sprintf("%s/api/v1/builds/%d/log", c.URL, dependent.ID))
	var e struct{ Error string }
	_ = json.Unmarshal([]byte(body), &e)
	link := fmt.Sprintf("/api/v1/builds/%d/log", broken.ID)
	if code != 404 || !strings.Contains(e.Error, fmt.Sprintf("build %d", broken.ID)) || !strings.Contains(e.Error, link) {
		t.Errorf("log of the dependency_failed build: %d %s, want 404 naming build %d and %s", code, body, broken.ID, link)
	}
	if code, body := coordtest.Get(t, c.URL+link); code != 200 {
		t.Errorf("the named log: %d %s", code, body)
	}
	if code, body := coordtest.Get(t, fmt.Sprintf("%s/api/v1/builds/%d/log", c.URL, silent.ID)); code != 200 || body != "" {
		t.Errorf("log of a build that printed nothing: %d %q, want 200 and empty", code, body)
	}
}
