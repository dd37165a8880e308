package buildqueue_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
)

// TestLogLimit_StepEndsCutAtTheLimit: a log over [logs] max_log_size ends the step
// log_limit_exceeded, stored cut at the limit.
func TestLogLimit_StepEndsCutAtTheLimit(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) { cfg.Logs.MaxLogSize = 1000 }})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf(`let
  %s
in {
  loud = mk "loud" { args = sh "i=0; while [ $i -lt 500 ]; do echo loud line $i; i=$((i+1)); done; echo > $out"; };
}
`, coordtest.MkLet(coordtest.Salt(t)))})
	_, js := c.Project("demo", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "builder"})
	c.Trigger(js, false)
	id := coordtest.BuildsOf(t, c, coordtest.Evaluated(t, c, js, 0))["loud"].ID
	b := coordtest.WaitBuild(t, c, id, 60*time.Second, "finished", coordtest.Build.Finished)
	if b.Status != "log_limit_exceeded" || b.Code() != 10 {
		t.Errorf("loud: %s (%d), want log_limit_exceeded (10)", b.Status, b.Code())
	}
	code, body := coordtest.Get(t, fmt.Sprintf("%s/api/v1/builds/%d/log", c.URL, id))
	if code != 200 || len(body) != 1000 || !strings.HasPrefix(body, "loud line 0\n") {
		t.Errorf("stored log: %d, %d bytes, starts %q", code, len(body), body[:min(len(body), 20)])
	}
}
