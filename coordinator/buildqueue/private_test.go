package buildqueue_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
)

// TestPrivateCache_AgentsBuildFromIt: a coordinator whose cache is private builds a
// jobset on agents with their own, empty Nix stores. "second" depends on "first",
// and each needs a system feature only one agent has, so the agent building "second"
// substitutes both derivations and "first"'s output from the private cache: it must
// present a credential the cache accepts.
func TestPrivateCache_AgentsBuildFromIt(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) { cfg.Cache.Private = true }})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf(`let
  %s
  first = mk "first" { requiredSystemFeatures = [ "fc-first" ]; };
in {
  inherit first;
  second = mk "second" { requiredSystemFeatures = [ "fc-second" ]; args = sh "echo built on ${first} > $out"; };
}
`, coordtest.MkLet(coordtest.Salt(t)))})
	_, js := c.Project("private", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "first", Features: []string{"fc-first"}, Isolated: true})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "second", Features: []string{"fc-second"}, Isolated: true})
	c.Trigger(js, false)
	bs := coordtest.BuildsOf(t, c, coordtest.Evaluated(t, c, js, 0))
	for _, job := range []string{"first", "second"} {
		b := coordtest.WaitBuild(t, c, bs[job].ID, 120*time.Second, "finished", coordtest.Build.Finished)
		st := stepOf(t, c, b.ID)
		if b.Status != "succeeded" || st.Agent != job {
			t.Errorf("%s: %s on agent %q (step: %s after %d attempts, %q); want succeeded on agent %q",
				job, b.Status, st.Agent, st.Status, st.Attempts, st.Error, job)
		}
	}
}
