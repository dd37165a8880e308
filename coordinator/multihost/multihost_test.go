package multihost_test

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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
		if !t.Run(s.name, func(t *testing.T) {
			start := time.Now()
			s.run(t, c)
			t.Logf("took %v", time.Since(start).Round(time.Millisecond))
		}) {
			return // the cluster may be left in the fault's state
		}
	}
}

// jobs makes a repository with release.nix holding body (a let with mk and sh, see
// coordtest.MkLet, then body as the attribute set), a project on it through c, and
// evaluates it; it returns the builds by job name.
func (c *cluster) jobs(t *testing.T, via *coord, name, body string) map[string]coordtest.Build {
	t.Helper()
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf("let\n  %s\nin %s\n", coordtest.MkLet(coordtest.Salt(t)), body)})
	_, js := via.in(t).Project(name, repo.Dir, nil)
	via.in(t).Trigger(js, false)
	return coordtest.BuildsOf(t, via.in(t), coordtest.Evaluated(t, via.in(t), js, 0))
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
	resp, err := k.hc.Get(k.url + path)
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
		b := coordtest.GetBuild(t, k.in(t), id)
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
	c.waitLines(t, 30*time.Second, before, builder, "connected to coordinator")
	moved := c.coordOf(builder)
	t.Logf("%s moved from %s to %s in %v", builder, home.name, moved.name, time.Since(killed).Round(time.Millisecond))
	if moved == home {
		t.Fatalf("%s reconnected to %s, which is dead", builder, home.name)
	}
	survivor := c.other(home)
	b := coordtest.WaitBuild(t, survivor.in(t), id, 90*time.Second, "finished", coordtest.Build.Finished)
	if b.Status != "succeeded" || len(b.Steps) != 1 || b.Steps[0].Attempts != 1 || b.Steps[0].Agent != builder {
		t.Errorf("build %s, steps %+v; want succeeded in one attempt on %s", b.Status, b.Steps, builder)
	}
	if got := builtTimes(t, record); got != 1 {
		t.Errorf("the derivation was built %d times, want once", got)
	}
	if len(b.Steps) == 1 {
		// The API may say finished before the test has read the coordinator's line.
		line := []string{"step finished", fmt.Sprintf("step=%d ", b.Steps[0].ID)}
		coordtest.Eventually(t, 10*time.Second, "the step's \"step finished\" line", func() bool { return c.coordLines(line...) > 0 })
		if got := c.coordLines(line...); got != 1 {
			t.Errorf("step %d finished %d times in the coordinators' logs, want once", b.Steps[0].ID, got)
		}
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
	// The killed coordinator kept the start of the log on its disk: back, it serves
	// the whole log from the bucket, not that stale copy.
	if code, got := home.get(t, fmt.Sprintf("/api/v1/builds/%d/log", id)); got != expectedLines(n) {
		t.Errorf("the log through %s, restarted (HTTP %d), is not every line once, in order:\n%q", home.name, code, got)
	}
}

// cutFor is how long an agent is cut off.
const cutFor = 30 * time.Second

// cutOff takes agent name off the network for cutFor: the coordinator it was on sees
// its session end (awaited), then the rest of the time passes, and it is put back.
func (c *cluster) cutOff(t *testing.T, name string) {
	t.Helper()
	a := c.agents[name]
	home := c.coordOf(name)
	before := c.linesOf(home.name, "agent disconnected", "name="+name)
	a.h.cut()
	cut := time.Now()
	c.waitLines(t, cutFor, before, home.name, "agent disconnected", "name="+name)
	t.Logf("%s saw %s gone %v after the cut", home.name, name, time.Since(cut).Round(time.Millisecond))
	time.Sleep(time.Until(cut.Add(cutFor))) // the fault is a cut of this length: nothing to await
	a.h.mend()
}

// testCutWithinLease: a building agent cut off for 30 s, less than its lease's grace
// after the session ends: nothing is rebuilt, and the same agent finishes the build,
// once, with its whole log.
func testCutWithinLease(t *testing.T, c *cluster) {
	if c.lease.grace <= int(cutFor/time.Second) {
		t.Fatalf("lease grace %d s is not longer than the cut", c.lease.grace)
	}
	const n = 100
	record := c.record(t, "within")
	via := c.coords[2]
	id := c.jobs(t, via, "within", fmt.Sprintf("{ ticker = %s; }", ticker(n, record)))["ticker"].ID
	builder := c.running(t, via, id, 3)
	before := c.linesOf(builder, "connected to coordinator")
	c.cutOff(t, builder)
	c.waitLines(t, 60*time.Second, before, builder, "connected to coordinator")
	b := coordtest.WaitBuild(t, via.in(t), id, 90*time.Second, "finished", coordtest.Build.Finished)
	if b.Status != "succeeded" || len(b.Steps) != 1 || b.Steps[0].Attempts != 1 || b.Steps[0].Agent != builder {
		t.Errorf("build %s, steps %+v; want succeeded in one attempt on %s", b.Status, b.Steps, builder)
	}
	if got := builtTimes(t, record); got != 1 {
		t.Errorf("the derivation was built %d times, want once", got)
	}
	if got := c.coordLines("step assigned", fmt.Sprintf("step=%d ", b.Steps[0].ID)); got != 1 {
		t.Errorf("step %d was assigned %d times, want once", b.Steps[0].ID, got)
	}
	// Through every coordinator, including one the agent left mid-log (which kept
	// the start of the log on its disk).
	for _, k := range c.coords {
		if got := k.storedLog(t, id); got != expectedLines(n) {
			t.Errorf("the log through %s is not every line once, in order:\n%q", k.name, got)
		}
	}
}

// testPostgresRestarted: PostgreSQL stopped (pg_ctl stop) under a running build: every
// coordinator's API answers 503 with the JSON error; started again on the same data
// directory and port, everything recovers without a coordinator restarted: the build
// finishes once with its whole log, and a new evaluation and its build work.
func testPostgresRestarted(t *testing.T, c *cluster) {
	const n = 120
	record := c.record(t, "pg")
	via := c.coords[0]
	id := c.jobs(t, via, "pg", fmt.Sprintf("{ ticker = %s; }", ticker(n, record)))["ticker"].ID
	builder := c.running(t, via, id, 5)
	earlier := finishedBuilds(t, via)
	home := c.coordOf(builder)
	failed := c.linesOf(home.name, "record heartbeat", "agent=")
	c.pg.stop(t)
	for _, k := range c.coords {
		var body struct {
			Error string `json:"error"`
		}
		code := k.in(t).Do("GET", "/api/v1/builds", "", nil, &body)
		if code != http.StatusServiceUnavailable || body.Error != "database unavailable" {
			t.Errorf("%s: GET /api/v1/builds with PostgreSQL down: %d %+v, want 503 {\"error\":\"database unavailable\"}", k.name, code, body)
		}
		// With a key, the key cannot be checked: the same status, saying so.
		code = k.in(t).Do("GET", "/api/v1/builds", c.admin, nil, &body)
		if code != http.StatusServiceUnavailable || body.Error != "cannot check the API key: database unavailable" {
			t.Errorf("%s: GET /api/v1/builds with a key, PostgreSQL down: %d %+v, want 503", k.name, code, body)
		}
	}
	// Down until a heartbeat has failed to be recorded at the builder's coordinator.
	c.waitLines(t, 30*time.Second, failed, home.name, "record heartbeat", "agent=")
	c.pg.start(t)
	// In the first second back a request may still take a pooled connection that
	// PostgreSQL closed (pgxpool pings only those idle for longer): 503, then recovery.
	var b coordtest.Build
	coordtest.Eventually(t, 90*time.Second, fmt.Sprintf("build %d finished after the restart", id), func() bool {
		b = coordtest.Build{}
		code := via.in(t).Do("GET", fmt.Sprintf("/api/v1/builds/%d", id), "", nil, &b)
		if code != http.StatusOK && code != http.StatusServiceUnavailable {
			t.Fatalf("GET build %d after the restart: %d, want 200 or, at first, 503", id, code)
		}
		return code == http.StatusOK && b.Finished()
	})
	if b.Status != "succeeded" || len(b.Steps) != 1 || b.Steps[0].Attempts != 1 || b.Steps[0].Agent != builder {
		t.Errorf("build %s, steps %+v; want succeeded in one attempt on %s", b.Status, b.Steps, builder)
	}
	if got := builtTimes(t, record); got != 1 {
		t.Errorf("the derivation was built %d times, want once", got)
	}
	// Through every coordinator (see testCutWithinLease).
	for _, k := range c.coords {
		if got := k.storedLog(t, id); got != expectedLines(n) {
			t.Errorf("the log through %s is not every line once, in order:\n%q", k.name, got)
		}
	}
	// Nothing lost: every build finished before the stop is there, as it was.
	for id, status := range earlier {
		if got := coordtest.GetBuild(t, c.coords[2].in(t), id).Status; got != status {
			t.Errorf("build %d was %s before the restart, is %s", id, status, got)
		}
	}
	after := c.jobs(t, c.coords[1], "after-pg", `{ small = mk "small" {}; }`)["small"]
	if b := coordtest.WaitBuild(t, c.coords[2].in(t), after.ID, 60*time.Second, "finished", coordtest.Build.Finished); b.Status != "succeeded" {
		t.Errorf("a build after the restart: %s", b.Status)
	}
}

// testS3Restarted: SeaweedFS killed the moment a builder has written a 24 MB output
// of random data (so its upload comes with the server down) and started again once
// the upload was refused. The agent sends it again until it is stored (no rebuild:
// the coordinator said its storage failed, not the data); a watcher asking every
// coordinator for the output's narinfo and, whenever there is one, its NAR, never
// finds a narinfo without its blob; and at the end an empty store substitutes the
// output from the cache.
func testS3Restarted(t *testing.T, c *cluster) {
	marker := filepath.Join(c.dir, "s3-written")
	record := c.record(t, "s3")
	via := c.coords[1]
	job := fmt.Sprintf(`{ big = mk "big" { args = sh "head -c 24000000 /dev/urandom > $out; echo built >> %s; touch %s"; }; }`, record, marker)
	build := coordtest.GetBuild(t, via.in(t), c.jobs(t, via, "s3", job)["big"].ID)
	out := build.Outputs["out"]
	if out == "" {
		t.Fatalf("build %+v has no output path", build)
	}
	hash := strings.TrimPrefix(out, "/nix/store/")[:32]

	stop := make(chan struct{})
	watched := make(chan struct{})
	var checks int
	var narinfos atomic.Int64
	go func() {
		defer close(watched)
		for {
			for _, k := range c.coords {
				checks++
				if k.narinfoWithoutBlob(t, hash, &narinfos) {
					t.Errorf("%s serves the narinfo of %s but not its NAR", k.name, out)
				}
			}
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	var once sync.Once
	stopWatch := func() { once.Do(func() { close(stop); <-watched }) }
	defer stopWatch()

	coordtest.Eventually(t, 120*time.Second, "the builder wrote the output", func() bool {
		_, err := os.Stat(marker)
		return err == nil
	})
	rejected := c.log.Count("upload rejected", "s3://")
	c.s3.proc.kill()
	c.log.WaitForMore(t, 60*time.Second, rejected, "upload rejected", "s3://")
	c.s3.start(t)
	c.waitBucket()
	b := coordtest.WaitBuild(t, via.in(t), build.ID, 120*time.Second, "finished", coordtest.Build.Finished)
	builder := ""
	if len(b.Steps) == 1 {
		builder = b.Steps[0].Agent
	}
	if b.Status != "succeeded" || builder == "" || b.Steps[0].Attempts != 1 {
		t.Fatalf("build %s, steps %+v; want succeeded in one attempt", b.Status, b.Steps)
	}
	if got := builtTimes(t, record); got != 1 {
		t.Errorf("the derivation was built %d times, want once", got)
	}
	if c.linesOf(builder, "upload the outputs; retrying", "could not store") == 0 {
		t.Errorf("%s did not send the upload again after the refusal", builder)
	}
	// The watcher goes on until it has checked the narinfo with its NAR a few times.
	coordtest.Eventually(t, 30*time.Second, "the watcher sees the narinfo", func() bool {
		return narinfos.Load() >= int64(len(c.coords))
	})
	stopWatch()
	if narinfos.Load() == 0 {
		t.Errorf("the watcher never saw the narinfo (%d checks)", checks)
	}
	t.Logf("build steps %+v; the watcher made %d checks, %d with a narinfo", b.Steps, checks, narinfos.Load())
	got, err := c.op.emptyStore(t, fmt.Sprintf("nix-store --realise %s --option substituters %s/nix-cache --option trusted-public-keys '%s' --option narinfo-cache-negative-ttl 0 && wc -c < %s",
		out, c.coords[2].url, c.pubKey, out))
	if err != nil || !strings.Contains(got, "24000000") {
		t.Fatalf("substitute %s from %s: %v\n%s", out, c.coords[2].name, err, got)
	}
}

// narinfoWithoutBlob asks k for the narinfo of hash and, when it has one, for its NAR
// (the whole of it); it reports whether the narinfo came without its NAR.
func (k *coord) narinfoWithoutBlob(t *testing.T, hash string, seen *atomic.Int64) bool {
	code, info := k.get(t, "/nix-cache/"+hash+".narinfo")
	if code != http.StatusOK {
		return false
	}
	seen.Add(1)
	var url string
	var size int64
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(l, "URL: "); ok {
			url = v
		}
		if v, ok := strings.CutPrefix(l, "FileSize: "); ok {
			fmt.Sscan(v, &size)
		}
	}
	resp, err := k.hc.Get(k.url + "/nix-cache/" + url)
	if err != nil {
		t.Logf("NAR %s from %s: %v", url, k.name, err)
		return true
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK || err != nil || n != size {
		t.Logf("NAR %s from %s: HTTP %d, %d of %d bytes, %v", url, k.name, resp.StatusCode, n, size, err)
		return true
	}
	return false
}

// emptyStore runs script in the host's namespace with an empty /nix of its own.
func (h *host) emptyStore(t *testing.T, script string) (string, error) {
	t.Helper()
	root := tempDir(t, "fcmh-store-")
	for _, d := range []string{"nix", "xdg"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out, err := h.command("unshare", "--mount", "--fork", "sh", "-c",
		fmt.Sprintf("mount --bind %s/nix /nix && export XDG_CACHE_HOME=%s/xdg NIX_CONFIG='build-users-group =' && %s", root, root, script)).CombinedOutput()
	return string(out), err
}

// testCutBeyondLease: the coordinators restarted one by one with a lease shorter than
// the cut; a building agent cut off for 30 s loses its step, which is rescued onto
// another agent and finishes there. When the cut agent comes back, what it still
// holds of the step is refused (its report, or the work itself at its first
// heartbeat), and the build's result is the rescuer's.
func testCutBeyondLease(t *testing.T, c *cluster) {
	c.lease = lease{ttl: 5, grace: 2}
	for _, k := range c.coords {
		k.proc.stop()
		k.restart()
	}
	const n = 100
	record := c.record(t, "beyond")
	via := c.coords[0]
	id := c.jobs(t, via, "beyond", fmt.Sprintf("{ ticker = %s; }", ticker(n, record)))["ticker"].ID
	cutAgent := c.running(t, via, id, 3)
	step := coordtest.GetBuild(t, via.in(t), id).Steps[0].ID
	before := c.linesOf(cutAgent, "connected to coordinator")
	done := make(chan struct{})
	go func() { defer close(done); c.cutOff(t, cutAgent) }()
	b := coordtest.WaitBuild(t, via.in(t), id, 2*cutFor, "finished by another agent", coordtest.Build.Finished)
	rescuer := b.Steps[0].Agent
	if b.Status != "succeeded" || len(b.Steps) != 1 || b.Steps[0].Attempts != 2 || rescuer == cutAgent {
		t.Errorf("build %s, steps %+v; want succeeded at the second attempt on another agent than %s", b.Status, b.Steps, cutAgent)
	}
	<-done
	// Back, the agent delivers what it has of the attempt: the log that comes before
	// its report (refused for its stale lease), or the report itself; its next
	// heartbeat then stops the work.
	staleLog := []string{"coordinator refused the log", fmt.Sprintf("steps %d epoch 1: stale lease", step)}
	staleReport := []string{"coordinator refused the report of step", fmt.Sprintf("step %d ", step)}
	coordtest.Eventually(t, 60*time.Second, cutAgent+" back, its stale work refused", func() bool {
		return c.linesOf(cutAgent, "connected to coordinator") > before &&
			(c.linesOf(cutAgent, staleLog...) > 0 || c.linesOf(cutAgent, staleReport...) > 0)
	})
	t.Logf("%s built it in the cut, %s rescued it; refused of the cut agent's attempt: %d log streams, %d reports",
		cutAgent, rescuer, c.linesOf(cutAgent, staleLog...), c.coordLines("step report refused", fmt.Sprintf("step=%d ", step)))
	after := coordtest.GetBuild(t, c.coords[2].in(t), id)
	if after.Status != "succeeded" || after.Steps[0].Agent != rescuer || after.Steps[0].Attempts != 2 {
		t.Errorf("after %s came back: build %s, steps %+v; want the rescuer's result", cutAgent, after.Status, after.Steps)
	}
	if got := builtTimes(t, record); got != 2 {
		t.Errorf("the derivation was built %d times, want twice (the cut agent's build, the rescuer's)", got)
	}
	if got := via.storedLog(t, id); got != expectedLines(n) {
		t.Errorf("the rescuer's log is not every line once, in order:\n%q", got)
	}
}

// finishedBuilds are the finished builds k lists, with their status (those of the
// faults before; none when a fault runs alone).
func finishedBuilds(t *testing.T, k *coord) map[int64]string {
	t.Helper()
	var l struct{ Items []coordtest.Build }
	if code := k.in(t).Do("GET", "/api/v1/builds?limit=500", "", nil, &l); code != http.StatusOK {
		t.Fatalf("list builds: %d", code)
	}
	out := map[int64]string{}
	for _, b := range l.Items {
		if b.Finished() {
			out[b.ID] = b.Status
		}
	}
	return out
}
