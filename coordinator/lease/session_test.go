package lease_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
)

// TestLeases_AgentHeartbeatsKeepAStepLongerThanItsLease runs a real coordinator and
// a real agent over a real session: the step builds for three lease TTLs, and the
// sweep looks for expired leases every second. Only the heartbeats, extending the
// lease, keep the step from being rescued and built again.
func TestLeases_AgentHeartbeatsKeepAStepLongerThanItsLease(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) {
		cfg.Queue.LeaseTTL, cfg.Queue.LeaseGrace, cfg.Queue.SweepInterval = 3, 1, 1
	}})
	salt := make([]byte, 5)
	_, _ = rand.Read(salt)
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf(`{ slow = derivation { name = "slow-%s";
  system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "export PATH=/bin:/usr/bin; sleep 9; echo done > $out" ]; }; }`, hex.EncodeToString(salt))})
	_, js := c.Project("leases", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "builder"})
	c.Trigger(js, false)

	var status string
	var attempts, epoch int
	coordtest.Eventually(t, 120*time.Second, "the slow step finishes", func() bool {
		err := c.DB.Pool().QueryRow(context.Background(), `SELECT s.status, s.attempts, s.lease_epoch FROM steps s
			JOIN builds b ON b.step_id = s.id JOIN evaluations e ON e.id = b.evaluation_id WHERE e.jobset_id = $1`,
			js).Scan(&status, &attempts, &epoch)
		return err == nil && status != "queued" && status != "running"
	})
	if status != "succeeded" || attempts != 1 || epoch != 1 {
		t.Errorf("step built for three lease TTLs: %s after %d attempts (epoch %d); want succeeded at the first", status, attempts, epoch)
	}
}
