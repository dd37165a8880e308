package cluster_test

import (
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
)

// TestPeriodicJobs_RunOnOneCoordinator: two coordinators on one database (the
// cluster need not be on): cache retention and pull request polling run on one of
// them, the other says it leaves them to another; when the one running them stops,
// the other takes them over.
func TestPeriodicJobs_RunOnOneCoordinator(t *testing.T) {
	t.Parallel()
	jobs := func(cfg *config.Config) { cfg.GC.CleanupInterval, cfg.Eval.PullRequestInterval = 1, 1 }
	c1 := coordtest.Start(t, coordtest.Options{Config: jobs})
	c2 := coordtest.Start(t, coordtest.Options{Config: jobs, DB: c1.DB})
	for _, job := range []string{"job=cache-retention", "job=pull-request-poll"} {
		var holder, other *coordtest.Coordinator
		coordtest.Eventually(t, 20*time.Second, job+" runs on one coordinator, the other knows", func() bool {
			for _, p := range [][2]*coordtest.Coordinator{{c1, c2}, {c2, c1}} {
				if p[0].Log.Contains("periodic job runs on this coordinator", job) &&
					p[1].Log.Contains("periodic job runs on another coordinator", job) {
					holder, other = p[0], p[1]
					return true
				}
			}
			return false
		})
		if other.Log.Contains("periodic job runs on this coordinator", job) {
			t.Errorf("%s ran on both coordinators", job)
		}
		if job == "job=pull-request-poll" {
			holder.Stop() // both jobs move: it held the other one too, or never did
			other.Log.WaitFor(t, 20*time.Second, "periodic job runs on this coordinator", job)
		}
	}
}
