package server_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/coordinator/fleet"
	"github.com/fc-ci/fc/storage"
)

// These tests talk to a real coordinator (a real listener and http.Server, as
// fc-coordinator serve runs it) over raw TCP, so they control every byte and see
// exactly when the server hangs up.

// closeWait is how long a test waits for the server to end a connection it should
// end within a second or two: generous for a shared machine, and far below the
// hard-coded timeouts these tests replace (10 s for headers, none for bodies).
const closeWait = 8 * time.Second

func startBounded(t *testing.T, set func(*config.Server)) *coordtest.Coordinator {
	t.Helper()
	return coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) { set(&cfg.Server) }})
}

func dial(t *testing.T, c *coordtest.Coordinator) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", c.Addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// trickle writes one byte of s every interval until the connection fails or the test
// ends (then the cleanup closes the connection and the writer stops).
func trickle(conn net.Conn, s string, every time.Duration) {
	go func() {
		for i := 0; ; i++ {
			if _, err := conn.Write([]byte{s[i%len(s)]}); err != nil {
				return
			}
			time.Sleep(every) // a slow client is what these tests are about: its pace, not a wait for the server
		}
	}()
}

// awaitClose reads what the server sends until it closes the connection, and returns
// what it read and when the close came. A connection still open after closeWait fails
// the test.
func awaitClose(t *testing.T, conn net.Conn) (string, time.Time) {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(closeWait)); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the connection is still open after %v; read so far: %q", closeWait, got)
	}
	// io.EOF (a clean close) ends ReadAll without an error; a reset is a close too.
	return string(got), time.Now()
}

func TestServer_TrickledBodyIsCutAfterRequestTimeout(t *testing.T) {
	t.Parallel()
	c := startBounded(t, func(s *config.Server) { s.RequestTimeout = 1 })
	// The webhook route resolves its project first (an unknown one is 404 at once).
	pid, _ := c.Project("hooked", coordtest.NewRepo(t).Dir, nil)
	routes := []struct {
		name, path, key string
	}{
		// An authenticated write, and the route anyone may call.
		{"authenticated", "/api/v1/projects", c.Admin},
		{"webhook", fmt.Sprintf("/api/v1/webhooks/%d/github", pid), ""},
	}
	for _, rt := range routes {
		t.Run(rt.name, func(t *testing.T) {
			conn := dial(t, c)
			head := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: fc\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n", rt.path)
			if rt.key != "" {
				head += "Authorization: Bearer " + rt.key + "\r\n"
			}
			if _, err := io.WriteString(conn, head+"\r\n{"); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			trickle(conn, " ", 100*time.Millisecond)
			got, closed := awaitClose(t, conn)
			took := closed.Sub(start)
			t.Logf("closed after %v with %q", took.Round(time.Millisecond), firstLine(got))
			if took < 900*time.Millisecond {
				t.Errorf("closed after %v, before request_timeout (1 s)", took)
			}
			// An answer, when the client could still read one, is 408 naming the setting.
			if got != "" && (!strings.HasPrefix(got, "HTTP/1.1 408 ") || !strings.Contains(got, "request_timeout")) {
				t.Errorf("answer %q, want 408 naming server.request_timeout", got)
			}
		})
	}
	// A body that arrives in time is served as before, on a connection that stays usable.
	conn := dial(t, c)
	br := bufio.NewReader(conn)
	for range 2 {
		req := "POST /api/v1/webhooks/1/github HTTP/1.1\r\nHost: fc\r\nContent-Length: 2\r\n\r\n{}"
		if _, err := io.WriteString(conn, req); err != nil {
			t.Fatal(err)
		}
		resp := readResponse(t, conn, br)
		if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusNotFound {
			t.Fatalf("webhook with a whole body: %d, want it refused by signature or project", resp.StatusCode)
		}
	}
}

func TestServer_HeadersMustArriveWithinHeaderTimeout(t *testing.T) {
	t.Parallel()
	c := startBounded(t, func(s *config.Server) { s.HeaderTimeout = 1 })
	conn := dial(t, c)
	if _, err := io.WriteString(conn, "GET /health HTTP/1.1\r\nHost: fc\r\nX-Slow: "); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	trickle(conn, "a", 100*time.Millisecond)
	_, closed := awaitClose(t, conn)
	if took := closed.Sub(start); took < 900*time.Millisecond {
		t.Errorf("closed after %v, before header_timeout (1 s)", took)
	}
}

func TestServer_IdleKeepAliveConnectionIsClosedAfterIdleTimeout(t *testing.T) {
	t.Parallel()
	c := startBounded(t, func(s *config.Server) { s.IdleTimeout = 1 })
	conn := dial(t, c)
	br := bufio.NewReader(conn)
	if _, err := io.WriteString(conn, "GET /health HTTP/1.1\r\nHost: fc\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if resp := readResponse(t, conn, br); resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("health: %d, close %v; want 200 on a kept-alive connection", resp.StatusCode, resp.Close)
	}
	idle := time.Now()
	if err := conn.SetReadDeadline(time.Now().Add(closeWait)); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("an idle keep-alive connection is still open after %v", closeWait)
	}
	if took := time.Since(idle); took < 900*time.Millisecond || len(rest) > 0 {
		t.Errorf("closed after %v idle with %q; want after idle_timeout (1 s), silently", took, rest)
	}
}

// An agent's WebSocket session is exempt from the body deadline: with every timeout
// at one second, it lives on (the same session, heartbeats arriving) well past them.
func TestServer_WebSocketSessionOutlivesRequestTimeout(t *testing.T) {
	t.Parallel()
	c := startBounded(t, func(s *config.Server) { s.RequestTimeout, s.HeaderTimeout, s.IdleTimeout = 1, 1, 1 })
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "ws", Roles: []string{"eval"}})
	var agent storage.Agent
	var session *fleet.Session
	// On a loaded machine a handshake can outlast the 1 s header timeout and the agent
	// retries; what counts is a session that, once established, lives on.
	coordtest.Eventually(t, 30*time.Second, "the agent connects", func() bool {
		agents, _, err := c.DB.ListAgents(context.Background(), storage.Page{Limit: 10})
		if err != nil || len(agents) != 1 || !agents[0].Connected {
			return false
		}
		s, ok := c.CurrentFleet().Session(agents[0].ID)
		agent, session = agents[0], s
		return ok
	})
	since := time.Now()
	// Heartbeats (one a second here) mark the agent seen; wait for one 4 s on.
	coordtest.Eventually(t, 30*time.Second, "a heartbeat 4 s after the session began", func() bool {
		a, err := c.DB.GetAgent(context.Background(), agent.ID)
		return err == nil && a.LastSeenAt != nil && a.LastSeenAt.After(since.Add(4*time.Second))
	})
	if now, ok := c.CurrentFleet().Session(agent.ID); !ok || now != session {
		t.Fatalf("the agent's session did not last past request_timeout (live %v, same %v)", ok, now == session)
	}
	if c.Log.Contains("agent session ended") {
		t.Fatal("an agent session ended while it should have lived on")
	}
}

func readResponse(t *testing.T, conn net.Conn, br *bufio.Reader) *http.Response {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\r\n")
	return line
}
