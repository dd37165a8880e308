package fleet_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	agentcli "github.com/fc-ci/fc/agent/cli"
	agentconfig "github.com/fc-ci/fc/agent/config"
	"github.com/fc-ci/fc/agent/session"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/protocol"
)

// dialPush opens a push session (fc-agent push's) as the agent whose key is in
// stateDir, enrolling it with token when it is new.
func dialPush(t *testing.T, c *coordtest.Coordinator, name, stateDir, token string) *session.Conn {
	t.Helper()
	cfg := agentconfig.Defaults()
	cfg.Coordinator.URL = c.URL
	cfg.Coordinator.EnrollmentToken = token
	cfg.Agent.StateDir = stateDir
	cfg.Agent.Name = name
	sc, err := agentcli.SessionConfig(cfg, slog.New(slog.DiscardHandler), 0)
	if err != nil {
		t.Fatal(err)
	}
	sc.Purpose = protocol.PurposePush
	conn, err := session.Dial(context.Background(), sc, session.State{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Revoking an agent ends every session of its key at once: its daemon's and its push
// sessions (one kept uploading after the DELETE).
func TestRevoke_EndsThePushSessionsToo(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	dir := t.TempDir()
	a := startAgent(t, c, "doomed", agentOpts{token: c.Token(1, time.Hour), stateDir: dir})
	got := waitConnected(t, c, "doomed")
	pushes := []*session.Conn{dialPush(t, c, "doomed", dir, ""), dialPush(t, c, "doomed", dir, "")}

	if code := c.Do("DELETE", "/api/v1/agents/"+itoa(got.ID), c.Admin, nil, nil); code != 204 {
		t.Fatalf("revoke: %d", code)
	}
	a.wait(t, 5*time.Second)
	for i, p := range pushes {
		select {
		case <-p.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("push session %d still open 5 s after the revocation", i)
		}
	}
	// And no new one opens.
	cfg := agentconfig.Defaults()
	cfg.Coordinator.URL, cfg.Agent.StateDir, cfg.Agent.Name = c.URL, dir, "doomed"
	sc, err := agentcli.SessionConfig(cfg, slog.New(slog.DiscardHandler), 0)
	if err != nil {
		t.Fatal(err)
	}
	sc.Purpose = protocol.PurposePush
	if conn, err := session.Dial(context.Background(), sc, session.State{}); err == nil {
		conn.Close()
		t.Fatal("a revoked key opened a push session")
	}
}

// A push session that enrolled its key says so in its welcome.
func TestPushSession_WelcomeSaysWhetherItEnrolled(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	dir := t.TempDir()
	if w := dialPush(t, c, "pusher", dir, c.Token(1, time.Hour)).Welcome; !w.Enrolled {
		t.Errorf("first push session: %+v, want enrolled", w)
	}
	if w := dialPush(t, c, "pusher", dir, "").Welcome; w.Enrolled {
		t.Errorf("second push session: %+v, want not enrolled", w)
	}
}

// The push permission is an admin's to grant and withdraw, and the agent's JSON shows it.
func TestAgentsAPI_PushPermission(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	startAgent(t, c, "builder", agentOpts{token: c.Token(1, time.Hour)})
	got := waitConnected(t, c, "builder")
	var a struct {
		Push *bool `json:"push"`
	}
	if code := c.Do("GET", "/api/v1/agents/"+itoa(got.ID), "", nil, &a); code != 200 || a.Push == nil || *a.Push {
		t.Fatalf("new agent: %d push=%v, want false", code, a.Push)
	}
	path := fmt.Sprintf("/api/v1/agents/%d", got.ID)
	for _, tc := range []struct {
		body any
		want int
		push bool
	}{
		{map[string]any{"push": true}, 200, true},
		{map[string]any{"push": false}, 200, false},
		{map[string]any{}, 422, false},
		{map[string]any{"push": "yes"}, 422, false},
		{map[string]any{"pussh": true}, 422, false},
	} {
		a.Push = nil
		if code := c.Do("PUT", path, c.Admin, tc.body, &a); code != tc.want {
			t.Errorf("PUT %v: %d, want %d", tc.body, code, tc.want)
		}
		if tc.want == 200 && (a.Push == nil || *a.Push != tc.push) {
			t.Errorf("PUT %v answered push=%v", tc.body, a.Push)
		}
	}
	if code := c.Do("PUT", "/api/v1/agents/999999", c.Admin, map[string]any{"push": true}, nil); code != 404 {
		t.Errorf("PUT on a missing agent: %d, want 404", code)
	}
}
