package multihost_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/coordtest"
)

// TestMultihost_Faults runs the faults one after another on one cluster (starting it
// costs more than any fault): each subtest builds its own jobs and asserts what a
// user would see through the API of a coordinator that survived.
func TestMultihost_Faults(t *testing.T) {
	c := startCluster(t)
	steps := []struct {
		name string
		run  func(*testing.T, *cluster)
	}{
		{"CoordinatorKilledMidBuild", testCoordinatorKilled},
		{"AgentCutOffWithinLease", testCutWithinLease},
		{"PostgresRestarted", testPostgresRestarted},
		{"S3RestartedDuringUpload", testS3Restarted},
		{"AgentCutOffBeyondLease", testCutBeyondLease},
	}
	for _, s := range steps {
		start := time.Now()
		if !t.Run(s.name, func(t *testing.T) { s.run(t, c) }) {
			return // the cluster may be left in the fault's state
		}
		t.Logf("%s: %v", s.name, time.Since(start).Round(time.Millisecond))
	}
}

// jobs makes a repository with release.nix holding body (a let with mk and sh, see
// coordtest.MkLet, then body as the attribute set), a project on it through c, and
// evaluates it; it returns the builds by job name.
func (c *cluster) jobs(t *testing.T, via *coord, name, body string) map[string]coordtest.Build {
	t.Helper()
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf("let\n  %s\nin %s\n", coordtest.MkLet(coordtest.Salt(t)), body)})
	_, js := via.api.Project(name, repo.Dir, nil)
	via.api.Trigger(js, false)
	return coordtest.BuildsOf(t, via.api, coordtest.Evaluated(t, via.api, js, 0))
}

// record is a file outside the stores that builders append to: how many times a
// derivation was really built.
func (c *cluster) record(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(c.dir, name)
	if err := os.WriteFile(p, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	return p
}

func builtTimes(t *testing.T, record string) int {
	t.Helper()
	b, err := os.ReadFile(record)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "built\n")
}

// ticker is a job printing "line 1" to "line n", one every 0.1 s, appending "built"
// to record once done.
func ticker(n int, record string) string {
	return fmt.Sprintf(`mk "ticker" { args = sh "i=1; while [ $i -le %d ]; do echo line $i; i=$((i+1)); sleep 0.1; done; echo built >> %s; echo > $out"; }`, n, record)
}

func expectedLines(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	return b.String()
}

// storedLog is the build's log as coordinator k answers it ("" when it has none).
func (k *coord) storedLog(t *testing.T, buildID int64) string {
	t.Helper()
	code, body := k.get(t, fmt.Sprintf("/api/v1/builds/%d/log", buildID))
	if code != http.StatusOK {
		return ""
	}
	return body
}

// get fetches path from k without credentials, from the op host.
func (k *coord) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := k.c.op.client().Get(k.url + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// other is a coordinator other than k.
func (c *cluster) other(k *coord) *coord {
	for _, o := range c.coords {
		if o != k {
			return o
		}
	}
	return nil
}

// running waits until the build's step runs on an agent and its log has lines, and
// returns the agent's name.
func (c *cluster) running(t *testing.T, k *coord, id int64, lines int) string {
	t.Helper()
	var agent string
	coordtest.Eventually(t, 120*time.Second, fmt.Sprintf("build %d running with %d lines of log", id, lines), func() bool {
		b := coordtest.GetBuild(t, k.api, id)
		if len(b.Steps) != 1 || b.Steps[0].Status != "running" || b.Steps[0].Agent == "" {
			return false
		}
		agent = b.Steps[0].Agent
		return strings.Count(k.storedLog(t, id), "\n") >= lines
	})
	return agent
}

// testCoordinatorKilled: the coordinator a building agent holds its session with is
// SIGKILLed mid-build. The agent moves to another coordinator, the step is built once
// (one attempt, one run of its builder) and succeeds, and the log a surviving
// coordinator serves has every line once, in order. The killed one comes back.
func testCoordinatorKilled(t *testing.T, c *cluster) {
	const n = 80
	record := c.record(t, "killed")
	via := c.coords[1]
	id := c.jobs(t, via, "killed", fmt.Sprintf("{ ticker = %s; }", ticker(n, record)))["ticker"].ID
	builder := c.running(t, via, id, 10)
	home := c.coordOf(builder)
	if home == nil {
		t.Fatalf("no coordinator for %s", builder)
	}
	before := c.linesOf(builder, "connected to coordinator")
	home.proc.kill()
	killed := time.Now()
	coordtest.Eventually(t, 30*time.Second, builder+" reconnects elsewhere", func() bool {
		return c.linesOf(builder, "connected to coordinator") > before
	})
	moved := c.coordOf(builder)
	t.Logf("%s moved from %s to %s in %v", builder, home.name, moved.name, time.Since(killed).Round(time.Millisecond))
	if moved == home {
		t.Fatalf("%s reconnected to %s, which is dead", builder, home.name)
	}
	survivor := c.other(home)
	b := coordtest.WaitBuild(t, survivor.api, id, 90*time.Second, "finished", coordtest.Build.Finished)
	if b.Status != "succeeded" || len(b.Steps) != 1 || b.Steps[0].Attempts != 1 || b.Steps[0].Agent != builder {
		t.Errorf("build %s, steps %+v; want succeeded in one attempt on %s", b.Status, b.Steps, builder)
	}
	if got := builtTimes(t, record); got != 1 {
		t.Errorf("the derivation was built %d times, want once", got)
	}
	for _, k := range c.coords {
		if k == home {
			continue
		}
		if code, got := k.get(t, fmt.Sprintf("/api/v1/builds/%d/log", id)); got != expectedLines(n) {
			t.Errorf("the log through %s (HTTP %d) is not every line once, in order:\n%q", k.name, code, got)
		}
	}
	home.restart()
}

func testCutWithinLease(t *testing.T, c *cluster)   { t.Skip("todo") }
func testPostgresRestarted(t *testing.T, c *cluster) { t.Skip("todo") }
func testS3Restarted(t *testing.T, c *cluster)       { t.Skip("todo") }
func testCutBeyondLease(t *testing.T, c *cluster)    { t.Skip("todo") }
