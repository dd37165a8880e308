package cluster_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
)

// routed is two members on one database: a project, an evaluator and a builder on
// c1 (A), nothing on c2 (B). It returns the builds of the evaluation of jobs.
func routed(t *testing.T, jobs string) (a, b *coordtest.Coordinator, builds map[string]coordtest.Build, builder int64) {
	t.Helper()
	cs := startCluster(t, 2, func(cfg *config.Config) { cfg.Queue.LeaseTTL = 60 })
	a, b = cs[0], cs[1]
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf("let\n  %s\nin rec {\n%s}\n", coordtest.MkLet(coordtest.Salt(t)), jobs)})
	_, js := a.Project("demo", repo.Dir, nil)
	coordtest.StartAgent(t, a, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, a, coordtest.AgentOptions{Name: "builder"})
	builder = agentID(t, a, "builder")
	// B learns (by gossip, then its pull) that the builder's session is on A.
	coordtest.Eventually(t, 10*time.Second, "B knows the builder is on A", func() bool {
		api, ok := b.Cluster.Holder(builder)
		return ok && api == a.URL
	})
	a.Trigger(js, false)
	builds = coordtest.BuildsOf(t, a, coordtest.Evaluated(t, a, js, 0))
	return a, b, builds, builder
}

func agentID(t *testing.T, c *coordtest.Coordinator, name string) int64 {
	t.Helper()
	var id int64
	coordtest.Eventually(t, 30*time.Second, "agent "+name+" enrolled", func() bool {
		_ = c.DB.Pool().QueryRow(context.Background(), `SELECT id FROM agents WHERE name = $1`, name).Scan(&id)
		return id != 0
	})
	return id
}

func waitRunning(t *testing.T, c *coordtest.Coordinator, id int64) {
	t.Helper()
	coordtest.WaitBuild(t, c, id, 60*time.Second, "running", func(b coordtest.Build) bool { return b.Status == "running" })
}

type logMsg struct {
	Type   string `json:"type"`
	Offset *int64 `json:"offset"`
	Next   int64  `json:"next"`
	Data   string `json:"data"`
	Status string `json:"status"`
}

// TestRouting_LiveLogThroughAnotherCoordinator: steps build on an agent connected
// to A, printing a line every 100 ms; their logs followed through B's WebSocket come
// live (the first lines while the step still runs), every line once and in order,
// each message starting where the last ended: one viewer comes while the step runs
// (B proxies it to A), one while its step still waits for the first (B follows it
// until it starts on A, then relays A's stream).
func TestRouting_LiveLogThroughAnotherCoordinator(t *testing.T) {
	t.Parallel()
	const lines = 30
	script := fmt.Sprintf("for i in $(seq 1 %d); do echo line $i; sleep 0.1; done; echo > $out", lines)
	a, b, builds, _ := routed(t, fmt.Sprintf(`  printer = mk "printer" { args = sh "%s"; };
  second = mk "second" { after = printer; args = sh "%s"; };
`, script, script))
	first, second := builds["printer"].ID, builds["second"].ID
	waitRunning(t, a, first)
	if st := coordtest.GetBuild(t, b, second).Status; st != "queued" {
		t.Fatalf("second build is %s, want queued behind the first", st)
	}
	viewers := map[int64]*websocket.Conn{}
	for _, id := range []int64{first, second} {
		ws := "ws" + strings.TrimPrefix(b.URL, "http") + fmt.Sprintf("/api/v1/builds/%d/log/stream", id)
		conn, resp, err := websocket.DefaultDialer.Dial(ws, http.Header{"Authorization": {"Bearer " + b.Admin}})
		if err != nil {
			t.Fatalf("dial %s: %v (%v)", ws, err, resp)
		}
		defer conn.Close()
		viewers[id] = conn
	}
	var want strings.Builder
	for i := 1; i <= lines; i++ {
		fmt.Fprintf(&want, "line %d\n", i)
	}
	for _, id := range []int64{first, second} {
		text, live := readLog(t, b, viewers[id], id)
		if !live {
			t.Errorf("build %d: the first lines came only after the step ended: not live", id)
		}
		if !strings.Contains(text, want.String()) || strings.Count(text, "line 1\n") != 1 {
			t.Errorf("build %d: log through B:\n%s\nwant every line once, in order:\n%s", id, text, want.String())
		}
	}
	if !b.Log.Contains("live log served through the agent's coordinator") || !b.Log.Contains("live log relayed from the agent's coordinator") {
		t.Errorf("B neither forwarded nor relayed the streams")
	}
}

// readLog reads a live log stream to its end, checking its offsets; live is whether
// the first lines came while the build ran.
func readLog(t *testing.T, c *coordtest.Coordinator, conn *websocket.Conn, id int64) (text string, live bool) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(90 * time.Second))
	var sb strings.Builder
	var next int64
	for {
		var m logMsg
		if err := conn.ReadJSON(&m); err != nil {
			t.Fatalf("build %d: read: %v (so far %q)", id, err, sb.String())
		}
		if m.Type == "end" {
			if m.Status != "succeeded" || m.Next != next {
				t.Errorf("build %d: end %+v, want succeeded at %d", id, m, next)
			}
			return sb.String(), live
		}
		if m.Type != "log" {
			continue
		}
		if m.Offset == nil || *m.Offset != next || m.Next != next+int64(len(m.Data)) {
			t.Fatalf("build %d: message at %v..%d after %d: a gap or a repeat", id, m.Offset, m.Next, next)
		}
		if next == 0 {
			live = coordtest.GetBuild(t, c, id).Status == "running"
		}
		next = m.Next
		sb.WriteString(m.Data)
	}
}

// TestRouting_CancelDrainRevokeThroughAnotherCoordinator: a cancel sent to B stops the
// build on A's agent at once (not at its lease's end); a drain sent to B reaches
// the agent, and a revocation closes its session on A.
func TestRouting_CancelDrainRevokeThroughAnotherCoordinator(t *testing.T) {
	t.Parallel()
	a, b, builds, builder := routed(t, `  long = mk "long" { args = sh "echo started; sleep 120; echo > $out"; };
`)
	id := builds["long"].ID
	waitRunning(t, a, id)
	a.Log.WaitFor(t, 30*time.Second, "side=agent-builder", "msg=building")
	start := time.Now()
	if code := b.Do("POST", fmt.Sprintf("/api/v1/builds/%d/cancel", id), b.Admin, nil, nil); code != 200 {
		t.Fatalf("cancel through B: %d", code)
	}
	a.Log.WaitFor(t, 5*time.Second, "side=agent-builder", "cancelling work")
	t.Logf("cancel reached the agent in %v", time.Since(start))
	// Through the internal API, not the agent's next heartbeat.
	coordtest.Eventually(t, 5*time.Second, "A served the forwarded cancel", func() bool { return forwarded(a) == 1 })
	if b.Log.Contains("cancel not delivered now") {
		t.Errorf("B did not deliver the cancel")
	}

	if code := b.Do("POST", fmt.Sprintf("/api/v1/agents/%d/drain", builder), b.Admin, nil, nil); code != 200 {
		t.Fatalf("drain through B: %d", code)
	}
	a.Log.WaitFor(t, 5*time.Second, "side=agent-builder", "drained by an admin")
	coordtest.Eventually(t, 5*time.Second, "A served the forwarded drain", func() bool { return forwarded(a) == 2 })

	// A revocation sent to B closes the agent's session on A at once.
	if code := b.Do("DELETE", fmt.Sprintf("/api/v1/agents/%d", builder), b.Admin, nil, nil); code != 204 {
		t.Fatalf("revoke through B: %d", code)
	}
	coordtest.Eventually(t, 5*time.Second, "B forwarded the revocation to A", func() bool {
		return a.Log.Contains("path=/internal/cluster/disconnect ", "status=204")
	})
	coordtest.Eventually(t, 5*time.Second, "the revoked agent's session on A closed", func() bool {
		_, ok := a.CurrentFleet().Session(builder)
		return !ok
	})
}

// forwarded counts the commands other members forwarded to c.
func forwarded(c *coordtest.Coordinator) int {
	n := 0
	for _, l := range strings.Split(c.Log.String(), "\n") {
		if strings.Contains(l, "path=/internal/cluster/command ") && strings.Contains(l, "status=200") {
			n++
		}
	}
	return n
}
