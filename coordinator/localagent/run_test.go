package localagent_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/agent/daemon"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/coordinator/localagent"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

type agentJSON struct {
	ID        int64    `json:"id"`
	Name      string   `json:"name"`
	Connected bool     `json:"connected"`
	Roles     []string `json:"roles"`
}

func agents(t *testing.T, c *coordtest.Coordinator) []agentJSON {
	t.Helper()
	var l struct{ Items []agentJSON }
	if code := c.Do("GET", "/api/v1/agents", "", nil, &l); code != 200 {
		t.Fatalf("list agents: %d", code)
	}
	return l.Items
}

// The local agent enrolls itself on first start, reuses its key afterwards, stops
// within its drain timeout while a build runs (handing the step back), and is not
// started with a revoked key.
func TestLocalAgent_EnrollsOnceDrainsWithinTimeoutAndRespectsRevocation(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	sleepArg := fmt.Sprintf("200.%d", time.Now().UnixNano()%1_000_000) // names the builder's process
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf(`{
  long = derivation { name = "long-%s"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "export PATH=/bin:/usr/bin; echo started; sleep %s; touch $out" ]; };
}`, hex.EncodeToString(b), sleepArg)})
	_, js := c.Project("local", repo.Dir, nil)

	dir := t.TempDir()
	cfg := localagent.Config{URL: c.URL, Name: "local", StateDir: dir, MaxJobs: 1, Roles: []string{"build", "eval"},
		DrainTimeout: time.Second, Logger: slog.New(slog.NewTextHandler(c.Log, nil)).With("side", "local-agent")}
	la, err := localagent.Start(context.Background(), cfg, c.DB)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = la.Stop() })
	coordtest.Eventually(t, 30*time.Second, "the local agent connects", func() bool {
		a := agents(t, c)
		return len(a) == 1 && a[0].Connected
	})
	if a := agents(t, c)[0]; a.Name != "local" || strings.Join(a.Roles, ",") != "build,eval" {
		t.Errorf("agent %+v, want local with build and eval roles", a)
	}

	c.Trigger(js, false)
	var buildID int64
	coordtest.Eventually(t, 60*time.Second, "the long build runs", func() bool {
		var l struct {
			Items []struct {
				ID     int64  `json:"id"`
				Status string `json:"status"`
			}
		}
		c.Do("GET", "/api/v1/builds?job=long", "", nil, &l)
		if len(l.Items) == 1 {
			buildID = l.Items[0].ID
			return l.Items[0].Status == "running" && exec.Command("pgrep", "-f", "sleep "+sleepArg).Run() == nil
		}
		return false
	})
	start := time.Now()
	if err := la.Stop(); !errors.Is(err, daemon.ErrForced) {
		t.Errorf("Stop with a build running past the drain timeout: %v, want daemon.ErrForced", err)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("Stop took %v with a 1 s drain timeout", d)
	}
	coordtest.Eventually(t, 10*time.Second, "the cancelled builder is gone", func() bool {
		return exec.Command("pgrep", "-f", "sleep "+sleepArg).Run() != nil
	})
	coordtest.Eventually(t, 10*time.Second, "the handed-back build is queued again", func() bool {
		var bl struct{ Status string }
		c.Do("GET", fmt.Sprintf("/api/v1/builds/%d", buildID), "", nil, &bl)
		return bl.Status == "queued"
	})
	// Cancelled, so the agent started next has nothing to build when its key is revoked.
	if code := c.Do("POST", fmt.Sprintf("/api/v1/builds/%d/cancel", buildID), c.Admin, nil, nil); code != 200 {
		t.Fatalf("cancel: %d", code)
	}

	// Started again on the same state: the same key, no second agent.
	la, err = localagent.Start(context.Background(), cfg, c.DB)
	if err != nil {
		t.Fatal(err)
	}
	coordtest.Eventually(t, 30*time.Second, "the local agent reconnects", func() bool {
		a := agents(t, c)
		return len(a) == 1 && a[0].Connected
	})
	id := agents(t, c)[0].ID
	if code := c.Do("DELETE", fmt.Sprintf("/api/v1/agents/%d", id), c.Admin, nil, nil); code != 200 && code != 204 {
		t.Fatalf("revoke: %d", code)
	}
	select {
	case <-la.Done(): // the session closes at once and the key is refused for good
	case <-time.After(30 * time.Second):
		t.Fatal("the local agent kept running after its key was revoked")
	}
	if _, err := localagent.Start(context.Background(), cfg, c.DB); !errors.Is(err, localagent.ErrRevoked) {
		t.Errorf("start with a revoked key: %v, want ErrRevoked", err)
	}
}
