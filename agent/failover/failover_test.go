package failover_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	agentcli "github.com/fc-ci/fc/agent/cli"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

// tickingJobset is a job that prints "line 1" to "line n", one every 0.1 s, and
// appends "built" to record each time it is built; and a job built from its output.
func tickingJobset(t *testing.T, n int, record string) string {
	t.Helper()
	// The builder appends to it as whatever user Nix builds as.
	if err := os.WriteFile(record, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(record, 0o666); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`let
  %s
in rec {
  ticker = mk "ticker" { args = sh "i=1; while [ $i -le %d ]; do echo line $i; i=$((i+1)); sleep 0.1; done; echo built >> %s; echo > $out"; };
  after = mk "after" { args = sh "cat ${ticker} > $out"; };
}
`, coordtest.MkLet(coordtest.Salt(t)), n, record)
}

func expectedLines(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	return b.String()
}

// sharedDir is a directory every builder user may write to.
func sharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "fc-failover-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	return dir
}

// closedURL is the URL of a port nothing listens on: a coordinator that is down.
func closedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// connected says whether the agent named name holds a session with c.
func connected(c *coordtest.Coordinator, name string) bool {
	fl := c.CurrentFleet()
	for _, id := range fl.AgentIDs() {
		if s, ok := fl.Session(id); ok && s.Name == name {
			return true
		}
	}
	return false
}

func storedLog(t *testing.T, c *coordtest.Coordinator, buildID int64) string {
	t.Helper()
	code, body := coordtest.Get(t, fmt.Sprintf("%s/api/v1/builds/%d/log", c.URL, buildID))
	if code != 200 {
		return ""
	}
	return body
}

// TestFailover_AgentMovesToTheNextCoordinatorMidBuild: a real fc-agent with its own
// Nix store, given coordinator.urls [a port nothing listens on, A, B], passes over the
// dead one to A and takes a step that prints a line every 0.1 s. A dies hard mid-step
// (listener and connections cut, no goodbye). The agent is on B within seconds, the
// step is built once (one attempt, one run of its builder) and succeeds, its output
// uploaded to B, and its log holds every line once, in order: the agent resumed it at
// the offset the coordinators' log store held. The job built from its output comes
// after the move: its derivation is substituted from B's cache, not the dead A's.
//
// The coordinators share PostgreSQL and, here, a log directory ([logs] log_dir) and a
// cache directory ([cache] dir): logs and NARs are still files on a coordinator's
// disk (object storage for them comes separately).
func TestFailover_AgentMovesToTheNextCoordinatorMidBuild(t *testing.T) {
	// Serial: the agent must reach B within the lease's grace, which other builds on
	// this machine's cores could delay.
	logDir, cacheDir := t.TempDir(), t.TempDir()
	share := func(cfg *config.Config) { cfg.Logs.LogDir, cfg.Cache.Dir = logDir, cacheDir }
	a := coordtest.Start(t, coordtest.Options{Config: share})
	b := coordtest.Start(t, coordtest.Options{Config: share, DB: a.DB})
	const n = 80
	record := filepath.Join(sharedDir(t), "built")
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": tickingJobset(t, n, record)})
	_, js := a.Project("demo", repo.Dir, nil)
	coordtest.StartAgent(t, a, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	dead := closedURL(t)
	coordtest.StartAgent(t, a, coordtest.AgentOptions{Name: "builder", Isolated: true, URLs: []string{dead, a.URL, b.URL}})
	coordtest.Eventually(t, 60*time.Second, "the builder passes over the dead URL to A", func() bool { return connected(a, "builder") })
	if !a.Log.Contains("agent-builder: ", "cannot reach coordinator; retrying", "coordinator_url="+dead) {
		t.Errorf("the builder did not try the first URL")
	}

	a.Trigger(js, false)
	builds := coordtest.BuildsOf(t, a, coordtest.Evaluated(t, a, js, 0))
	id := builds["ticker"].ID
	coordtest.Eventually(t, 120*time.Second, "10 lines of the step's log on A", func() bool {
		return strings.Count(storedLog(t, a, id), "\n") >= 10
	})
	if st := coordtest.GetBuild(t, a, id); len(st.Steps) != 1 || st.Steps[0].Agent != "builder" {
		t.Fatalf("the step runs on %+v, want builder", st.Steps)
	}
	a.Kill()
	killed := time.Now()
	coordtest.Eventually(t, 10*time.Second, "the builder on B", func() bool { return connected(b, "builder") })
	t.Logf("the builder was on B %v after A died", time.Since(killed).Round(time.Millisecond))
	// A crash, not a goodbye: the agent saw its session drop.
	if !a.Log.Contains("agent-builder: ", "session to coordinator ended; reconnecting", "connection closed") ||
		a.Log.Contains("agent-builder: ", "coordinator shutting down") {
		t.Errorf("the agent did not see A's session drop as a crash would")
	}
	if got := coordtest.GetBuild(t, b, id).Status; got != "running" {
		t.Errorf("build %s when the agent reached B; the step was to still run", got)
	}

	build := coordtest.WaitBuild(t, b, id, 60*time.Second, "finished", coordtest.Build.Finished)
	st := build.Steps
	if build.Status != "succeeded" || len(st) != 1 || st[0].Attempts != 1 || st[0].Agent != "builder" {
		t.Errorf("after A died: build %s, steps %+v; want succeeded in one attempt on builder", build.Status, st)
	}
	if data, _ := os.ReadFile(record); strings.Count(string(data), "built\n") != 1 {
		t.Errorf("the step was built %d times, want once", strings.Count(string(data), "built\n"))
	}
	if got := storedLog(t, b, id); got != expectedLines(n) {
		t.Errorf("the log through B is not every line once, in order:\n%q", got)
	}
	after := coordtest.WaitBuild(t, b, builds["after"].ID, 60*time.Second, "finished", coordtest.Build.Finished)
	once := after.Status == "succeeded" && len(after.Steps) == 2 // its own step and the ticker's
	for _, s := range after.Steps {
		once = once && s.Status == "succeeded" && s.Attempts == 1
	}
	if !once {
		t.Errorf("the job built after the move: %s, steps %+v; want every step succeeded in one attempt", after.Status, after.Steps)
	}
}

// TestFailover_GracefulStopAndURLOrder: an agent given [A, B] connects to A (the
// first); when A stops gracefully (its goodbye, as in a rolling restart) the agent
// moves to B, not back to A; when B dies in turn it goes round to A, restarted.
func TestFailover_GracefulStopAndURLOrder(t *testing.T) {
	t.Parallel()
	a := coordtest.Start(t, coordtest.Options{})
	b := coordtest.Start(t, coordtest.Options{DB: a.DB})
	coordtest.StartAgent(t, a, coordtest.AgentOptions{Name: "mover", URLs: []string{a.URL, b.URL}})
	coordtest.Eventually(t, 30*time.Second, "the agent on A, the first URL", func() bool { return connected(a, "mover") })
	if connected(b, "mover") {
		t.Fatal("the agent holds sessions with both coordinators")
	}
	a.Stop()
	coordtest.Eventually(t, 10*time.Second, "the agent on B after A's goodbye", func() bool { return connected(b, "mover") })
	if !a.Log.Contains("agent-mover", "session to coordinator ended; reconnecting", "coordinator shutting down", "next="+b.URL) {
		t.Errorf("the agent did not move on A's goodbye")
	}
	a.Restart()
	b.Kill()
	coordtest.Eventually(t, 10*time.Second, "the agent back on A after B died", func() bool { return connected(a, "mover") })
}

// TestFailover_PushPassesOverADeadCoordinator: `fc-agent push` given coordinator.urls
// [a port nothing listens on, A] uploads to A.
func TestFailover_PushPassesOverADeadCoordinator(t *testing.T) {
	t.Parallel()
	a := coordtest.Start(t, coordtest.Options{})
	stateDir := t.TempDir()
	a.AllowPush(t, stateDir, "pusher")
	file := filepath.Join(t.TempDir(), "fc-failover-"+coordtest.Salt(t))
	if err := os.WriteFile(file, []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nix-store", "--add", file).Output()
	if err != nil {
		t.Fatalf("nix-store --add: %v", err)
	}
	path := strings.TrimSpace(string(out))
	var stdout, stderr bytes.Buffer
	env := []string{"FC_COORDINATOR__URLS=" + closedURL(t) + "," + a.URL, "FC_AGENT__STATE_DIR=" + stateDir, "FC_AGENT__NAME=pusher"}
	code := agentcli.Main(context.Background(), agentcli.Env{Args: []string{"push", path}, Environ: env, Stdout: &stdout, Stderr: &stderr})
	if code != 0 || !strings.Contains(stdout.String(), "sent "+path) {
		t.Fatalf("fc-agent push: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	hash := strings.SplitN(strings.TrimPrefix(path, "/nix/store/"), "-", 2)[0]
	if code, _ := coordtest.Get(t, a.URL+"/nix-cache/"+hash+".narinfo"); code != 200 {
		t.Errorf("narinfo of the pushed path on A: HTTP %d", code)
	}
}
