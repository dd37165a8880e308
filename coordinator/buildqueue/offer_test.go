package buildqueue_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/coordtest"
)

// TestUpload_OffersLeaveOutWhatTheCacheHolds builds a chain c1 <- c2 <- … <- c6 on one
// agent, on each Nix connection. Each upload offers the step's output and its input's,
// whose presence in the cache the agent learns from the plan, and not the paths below
// (the closure, which grows with every layer): 1 + 5×2 = 11 paths offered, against
// 1 + 2 + … + 6 = 21 for whole closures. Then the cache loses c5, which the agent
// believes it holds, while c7 (on top of c6) builds: c7's offer is refused as
// incomplete, and the whole closure, offered at once, puts c5 back.
func TestUpload_OffersLeaveOutWhatTheCacheHolds(t *testing.T) {
	t.Parallel()
	for _, conn := range []string{"daemon", "process"} {
		t.Run(conn, func(t *testing.T) {
			t.Parallel()
			c := coordtest.Start(t, coordtest.Options{})
			flag := filepath.Join(sharedDir(t), "flag")
			var expr strings.Builder
			fmt.Fprintf(&expr, "let\n  %s\n  c1 = mk \"c1\" { };\n", coordtest.MkLet(coordtest.Salt(t)))
			for i := 2; i <= 6; i++ {
				fmt.Fprintf(&expr, "  c%d = mk \"c%d\" { args = sh \"echo ${c%d} > $out\"; };\n", i, i, i-1)
			}
			fmt.Fprintf(&expr, "  c7 = mk \"c7\" { args = sh \"while [ ! -e %s ]; do sleep 0.05; done; echo ${c6} > $out\"; };\n", flag)
			expr.WriteString("in { inherit c1 c2 c3 c4 c5 c6 c7; }\n")
			repo := coordtest.NewRepo(t)
			repo.Commit(map[string]string{"release.nix": expr.String()})
			_, js := c.Project("offers", repo.Dir, nil)
			coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
			c.Trigger(js, false)
			bs := coordtest.BuildsOf(t, c, coordtest.Evaluated(t, c, js, 0))
			before := c.Metric(t, "fc_cache_upload_offered_paths_total")
			coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "builder", NixConnection: conn})

			built := map[string]coordtest.Build{}
			for i := 1; i <= 6; i++ {
				job := fmt.Sprintf("c%d", i)
				built[job] = coordtest.WaitBuild(t, c, bs[job].ID, 60*time.Second, "finished", coordtest.Build.Finished)
				if built[job].Status != "succeeded" {
					t.Fatalf("%s: %s", job, built[job].Status)
				}
			}
			if got := c.Metric(t, "fc_cache_upload_offered_paths_total") - before; got != 11 {
				t.Errorf("c1..c6 offered %v paths, want 11 (each step's output and its input's)", got)
			}

			// The cache loses c5; the builder may restore it (an admin's grant: c5 is
			// not an output of a step it holds).
			c5 := built["c5"].Outputs["out"]
			if _, err := c.DB.Pool().Exec(context.Background(), `DELETE FROM narinfos WHERE hash_part = $1`,
				strings.TrimPrefix(c5, "/nix/store/")[:32]); err != nil {
				t.Fatal(err)
			}
			grantPush(t, c, "builder")
			offered := c.Metric(t, "fc_cache_upload_offered_paths_total")
			if err := os.WriteFile(flag, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if b := coordtest.WaitBuild(t, c, bs["c7"].ID, 60*time.Second, "finished", coordtest.Build.Finished); b.Status != "succeeded" {
				t.Fatalf("c7 after the cache lost c5: %s", b.Status)
			}
			// In one attempt: the refused offer is not the step's failure.
			for _, st := range coordtest.GetBuild(t, c, bs["c7"].ID).Steps {
				if st.DrvPath == bs["c7"].DrvPath && st.Attempts != 1 {
					t.Errorf("c7 built in %d attempts, want 1", st.Attempts)
				}
			}
			if got := c.Metric(t, "fc_cache_upload_offered_paths_total") - offered; got != 2+7 {
				t.Errorf("c7 offered %v paths, want 2 (c7, c6: refused) + 7 (the whole closure)", got)
			}
			if got := c.Metric(t, `fc_cache_upload_rejections_total{reason="incomplete_offer"}`); got != 1 {
				t.Errorf("incomplete offers: %v, want 1", got)
			}
			if code, _ := coordtest.Get(t, c.URL+"/nix-cache/"+strings.TrimPrefix(c5, "/nix/store/")[:32]+".narinfo"); code != http.StatusOK {
				t.Errorf("c5 after c7's upload: narinfo %d, want 200", code)
			}
		})
	}
}

// grantPush gives the agent named name the push permission.
func grantPush(t *testing.T, c *coordtest.Coordinator, name string) {
	t.Helper()
	var agents struct {
		Items []struct {
			ID   int64  `json:"id"`
			Name string `json:"name"`
		} `json:"items"`
	}
	if code := c.Do("GET", "/api/v1/agents", c.Admin, nil, &agents); code != http.StatusOK {
		t.Fatalf("list agents: %d", code)
	}
	for _, a := range agents.Items {
		if a.Name == name {
			if code := c.Do("PUT", fmt.Sprintf("/api/v1/agents/%d", a.ID), c.Admin, map[string]any{"push": true}, nil); code != http.StatusOK {
				t.Fatalf("grant push: %d", code)
			}
			return
		}
	}
	t.Fatalf("no agent %s in %+v", name, agents.Items)
}
