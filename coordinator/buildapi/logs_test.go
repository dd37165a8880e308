package buildapi_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
)

type logMsg struct {
	Type   string `json:"type"`
	Step   int64  `json:"step"`
	Offset int64  `json:"offset"`
	Line   int64  `json:"line"`
	Next   int64  `json:"next"`
	Data   string `json:"data"`
	Status string `json:"status"`
	// HasOffset: the message names its offset (a "log" message always does, at 0 too).
	HasOffset bool `json:"-"`
}

func dialLog(t *testing.T, c *coordtest.Coordinator, buildID int64, query string) *websocket.Conn {
	t.Helper()
	url := fmt.Sprintf("ws://%s/api/v1/builds/%d/log/stream?%s", c.Addr, buildID, query)
	conn, resp, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	if resp.Header.Get("X-Accel-Buffering") != "no" {
		t.Errorf("X-Accel-Buffering = %q, want no", resp.Header.Get("X-Accel-Buffering"))
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func readMsg(t *testing.T, conn *websocket.Conn) logMsg {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	_, raw, err := conn.ReadMessage()
	if err != nil {
		t.Fatalf("read log message: %v", err)
	}
	var m logMsg
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &keys); err != nil {
		t.Fatal(err)
	}
	_, m.HasOffset = keys["offset"]
	return m
}

// tickingJobset is one derivation printing "line i" every 100 ms, n times.
func tickingJobset(t *testing.T, n int) string {
	return fmt.Sprintf(`let
  %s
in {
  ticker = mk "ticker" { args = sh "i=1; while [ $i -le %d ]; do echo line $i; i=$((i+1)); sleep 0.1; done; echo > $out"; };
}
`, coordtest.MkLet(coordtest.Salt(t)), n)
}

func expectedLines(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "line %d\n", i)
	}
	return b.String()
}

// startLogCoordinator starts a coordinator for a live-log test. Agent sessions are not
// what these tests are about, so heartbeats allow 15 s of silence instead of
// coordtest's 3 s. Viewers decoding megabytes under the race detector share the
// process with the coordinator and its agents, and on a busy machine they can hold
// the heartbeat off for seconds. A dropped session then cancels the build the test
// is watching.
func startLogCoordinator(t *testing.T) *coordtest.Coordinator {
	return coordtest.Start(t, coordtest.Options{Config: func(c *config.Config) { c.Server.AgentHeartbeat = 5 }})
}

// TestLiveLog_FollowsAcrossReconnects: a viewer receives the lines while the build
// runs, in order, with no gap and no duplicate, across a reconnect of its own
// WebSocket and across a reconnect of the agent's session mid-build; the stored log
// is what the builder printed.
func TestLiveLog_FollowsAcrossReconnects(t *testing.T) {
	t.Parallel()
	c := startLogCoordinator(t)
	const n = 60
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": tickingJobset(t, n)})
	_, js := c.Project("demo", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "builder"})
	c.Trigger(js, false)
	id := coordtest.BuildsOf(t, c, coordtest.Evaluated(t, c, js, 0))["ticker"].ID

	var got strings.Builder
	var next int64
	conn := dialLog(t, c, id, "offset=0")
	liveLines := 0
	phase := 0
	for {
		m := readMsg(t, conn)
		switch m.Type {
		case "log":
			if !m.HasOffset {
				t.Errorf("log message at %d without its offset", next)
			}
			if m.Offset != next {
				t.Fatalf("chunk at offset %d, expected %d (gap or duplicate)", m.Offset, next)
			}
			got.WriteString(m.Data)
			next = m.Next
			if coordtest.GetBuild(t, c, id).Status == "running" {
				liveLines += strings.Count(m.Data, "\n")
			}
		case "end":
			if m.Status != "succeeded" {
				t.Errorf("end: %+v", m)
			}
			goto done
		}
		lines := strings.Count(got.String(), "\n")
		switch {
		case phase == 0 && lines >= 10:
			// The viewer's connection drops; it comes back from where it was.
			phase = 1
			conn.Close()
			conn = dialLog(t, c, id, fmt.Sprintf("offset=%d", next))
		case phase == 1 && lines >= 25:
			// The agent's session drops mid-build; its log resumes where the coordinator's copy ends.
			phase = 2
			fl := c.CurrentFleet()
			for _, agentID := range fl.AgentIDs() {
				if s, ok := fl.Session(agentID); ok && s.Name == "builder" {
					fl.DisconnectHere(agentID)
				}
			}
		}
	}
done:
	if phase != 2 {
		t.Errorf("the build ended before both reconnects (phase %d)", phase)
	}
	if got.String() != expectedLines(n) {
		t.Errorf("streamed log:\n%q\nwant\n%q", got.String(), expectedLines(n))
	}
	if liveLines < n/2 {
		t.Errorf("only %d lines arrived while the build ran", liveLines)
	}
	if code, body := coordtest.Get(t, fmt.Sprintf("%s/api/v1/builds/%d/log", c.URL, id)); code != 200 || body != expectedLines(n) {
		t.Errorf("stored log: %d %q", code, body)
	}
	// A later viewer asking for the tail gets the last lines, then the end.
	conn = dialLog(t, c, id, "tail=3")
	if m := readMsg(t, conn); m.Type != "log" || m.Data != "line 58\nline 59\nline 60\n" || m.Line != 57 {
		t.Errorf("tail=3 of a finished log: %+v", m)
	}
	if m := readMsg(t, conn); m.Type != "end" {
		t.Errorf("after the tail: %+v", m)
	}
}

// TestLiveLog_StalledViewerHoldsNothingBack: a viewer that never reads does not slow
// the build or another viewer.
func TestLiveLog_StalledViewerHoldsNothingBack(t *testing.T) {
	t.Parallel()
	c := startLogCoordinator(t)
	repo := coordtest.NewRepo(t)
	// About 8 MB of log, more than the socket buffers between a stalled viewer and the server hold.
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf(`let
  %s
in {
  chatty = mk "chatty" { args = sh "sleep 1; i=0; while [ $i -lt 80000 ]; do echo \"line $i 0123456789012345678901234567890123456789012345678901234567890123456789012345\"; i=$((i+1)); done; echo > $out"; };
}
`, coordtest.MkLet(coordtest.Salt(t)))})
	_, js := c.Project("demo", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "builder"})
	c.Trigger(js, false)
	id := coordtest.BuildsOf(t, c, coordtest.Evaluated(t, c, js, 0))["chatty"].ID
	stalled := dialLog(t, c, id, "offset=0") // never read
	_ = stalled
	good := dialLog(t, c, id, "offset=0")
	var size int64
	for {
		m := readMsg(t, good)
		if m.Type == "log" {
			size = m.Next
		}
		if m.Type == "end" {
			if m.Status != "succeeded" {
				t.Errorf("build ended %s", m.Status)
			}
			break
		}
	}
	if size < 7_000_000 {
		t.Errorf("the reading viewer got %d bytes", size)
	}
	if b := coordtest.GetBuild(t, c, id); b.Status != "succeeded" {
		t.Errorf("build: %s", b.Status)
	}
}

// TestLiveLog_HundredViewersExactBytesAndASlowOneCatchesUp: 100 viewers of a chatty
// build each receive exactly the stored bytes, in order, with no gap or duplicate;
// one more viewer reads nothing until the build has ended (it held nothing back),
// then gets the whole log with the same bytes and line numbers: what it had not
// taken is long gone from the chunks the viewers share, and is read again from the
// stored log (after a reconnect from its offset if the server dropped it meanwhile).
func TestLiveLog_HundredViewersExactBytesAndASlowOneCatchesUp(t *testing.T) {
	// Not parallel: its 100 viewers decode 270 MB under the race detector, which would
	// starve the other live-log tests sharing this process.
	c := startLogCoordinator(t)
	repo := coordtest.NewRepo(t)
	// About 2.7 MB in 30,000 numbered lines: more than the shared chunks keep (2 MiB).
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf(`let
  %s
in {
  chatty = mk "chatty" { args = sh "sleep 1; i=0; while [ $i -lt 30000 ]; do echo \"line $i 0123456789012345678901234567890123456789012345678901234567890123456789012345678\"; i=$((i+1)); done; echo > $out"; };
}
`, coordtest.MkLet(coordtest.Salt(t)))})
	_, js := c.Project("demo", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "builder"})
	c.Trigger(js, false)
	id := coordtest.BuildsOf(t, c, coordtest.Evaluated(t, c, js, 0))["chatty"].ID

	type got struct {
		data       string
		lines      int64 // the Line of each message matched the lines before it
		reconnects int
		err        string
	}
	// follow reads one viewer's stream to its end, checking offsets and line numbers;
	// when its connection drops (the server drops a viewer that takes nothing for
	// writeTimeout), it comes back from its offset, as the dashboard does.
	follow := func(conn *websocket.Conn) got {
		var g got
		var b strings.Builder
		var next, lines int64
		for {
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Minute))
			_, raw, err := conn.ReadMessage()
			if err != nil {
				conn.Close()
				if g.reconnects++; g.reconnects > 5 {
					g.err = err.Error()
					return g
				}
				url := fmt.Sprintf("ws://%s/api/v1/builds/%d/log/stream?offset=%d", c.Addr, id, next)
				if conn, _, err = websocket.DefaultDialer.Dial(url, nil); err != nil {
					g.err = err.Error()
					return g
				}
				continue
			}
			var m logMsg
			if err := json.Unmarshal(raw, &m); err != nil {
				g.err = err.Error()
				return g
			}
			switch m.Type {
			case "log":
				if m.Offset != next || m.Line != lines {
					g.err = fmt.Sprintf("chunk at offset %d line %d, expected %d line %d", m.Offset, m.Line, next, lines)
					return g
				}
				b.WriteString(m.Data)
				next, lines = m.Next, lines+int64(strings.Count(m.Data, "\n"))
			case "attempt": // the step was rescued (a busy machine): its new log starts at 0
				b.Reset()
				next, lines = 0, 0
			case "wait":
			case "end":
				if m.Status != "succeeded" || m.Next != next {
					g.err = fmt.Sprintf("end %+v at %d", m, next)
				}
				g.data, g.lines = b.String(), lines
				conn.Close()
				return g
			default:
				g.err = fmt.Sprintf("unexpected %+v", m)
				return g
			}
		}
	}
	const viewers = 100
	slow := dialLog(t, c, id, "offset=0")
	conns := make([]*websocket.Conn, viewers)
	for i := range conns {
		conns[i] = dialLog(t, c, id, "offset=0")
	}
	results := make([]got, viewers)
	var wg sync.WaitGroup
	for i, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = follow(conn)
		}()
	}
	wg.Wait()
	// The build has ended while the slow viewer read nothing.
	if b := coordtest.GetBuild(t, c, id); b.Status != "succeeded" {
		t.Fatalf("build: %s", b.Status)
	}
	code, stored := coordtest.Get(t, fmt.Sprintf("%s/api/v1/builds/%d/log", c.URL, id))
	if code != 200 || len(stored) < 2_500_000 || strings.Count(stored, "\n") != 30000 {
		t.Fatalf("stored log: %d, %d bytes, %d lines", code, len(stored), strings.Count(stored, "\n"))
	}
	for i, g := range results {
		if g.err != "" || g.data != stored {
			t.Errorf("viewer %d: %s; %d bytes, want the stored %d", i, g.err, len(g.data), len(stored))
		}
	}
	g := follow(slow)
	if g.err != "" || g.data != stored || g.lines != 30000 {
		t.Errorf("slow viewer: %s; %d bytes, %d lines, want the stored %d bytes", g.err, len(g.data), g.lines, len(stored))
	}
	t.Logf("the slow viewer came back %d times", g.reconnects)
}
