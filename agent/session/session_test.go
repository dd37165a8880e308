package session_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"github.com/fc-ci/fc/agent/identity"
	"github.com/fc-ci/fc/agent/session"
	"github.com/fc-ci/fc/protocol"
)

func TestConnectURL_DerivesTheWebSocketURLFromTheBaseURL(t *testing.T) {
	cases := []struct {
		base, want string
	}{
		{"http://127.0.0.1:3000", "ws://127.0.0.1:3000/api/v1/agent/connect"},
		{"https://ci.example.org", "wss://ci.example.org/api/v1/agent/connect"},
		{"https://ci.example.org:8443", "wss://ci.example.org:8443/api/v1/agent/connect"},
		{"http://ci.example.org/", "ws://ci.example.org/api/v1/agent/connect"},
		{"https://example.org/fc", "wss://example.org/fc/api/v1/agent/connect"},
		{"https://example.org/fc/", "wss://example.org/fc/api/v1/agent/connect"},
		{"http://example.org/ci/fc/", "ws://example.org/ci/fc/api/v1/agent/connect"},
		{"http://[::1]:3000", "ws://[::1]:3000/api/v1/agent/connect"},
	}
	for _, tc := range cases {
		t.Run(tc.base, func(t *testing.T) {
			got, err := session.ConnectURL(tc.base)
			if err != nil {
				t.Fatalf("ConnectURL(%q): %v", tc.base, err)
			}
			if got != tc.want {
				t.Errorf("ConnectURL(%q) = %q, want %q", tc.base, got, tc.want)
			}
		})
	}
}

func TestConnectURL_RejectsOtherSchemes(t *testing.T) {
	for _, base := range []string{"ftp://example.org", "ws://example.org", "wss://example.org", "example.org:3000", "", "://nohost", "http://bad host/"} {
		t.Run(base, func(t *testing.T) {
			got, err := session.ConnectURL(base)
			if err == nil {
				t.Fatalf("ConnectURL(%q) = %q, want an error", base, got)
			}
			if !strings.Contains(err.Error(), "coordinator url") {
				t.Errorf("error %q does not say it is about the coordinator url", err)
			}
		})
	}
}

// stalledCoordinator accepts the WebSocket and the agent's control stream, reads the
// hello, then never answers: a coordinator stuck on its database, say.
func stalledCoordinator(t *testing.T) (url string, gotHello <-chan protocol.Hello) {
	t.Helper()
	hellos := make(chan protocol.Hello, 1)
	stop := make(chan struct{})
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/agent/connect" {
			http.NotFound(w, r)
			return
		}
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		mux, err := yamux.Server(protocol.NetConn(ws), protocol.YamuxConfig())
		if err != nil {
			ws.Close()
			return
		}
		defer mux.Close()
		st, err := mux.AcceptStream()
		if err != nil {
			return
		}
		var h protocol.StreamHeader
		var m protocol.Message
		if protocol.ReadFrame(st, &h) == nil && protocol.ReadFrame(st, &m) == nil && m.Hello != nil {
			hellos <- *m.Hello
		}
		select {
		case <-stop:
		case <-mux.CloseChan():
		}
	}))
	t.Cleanup(func() { close(stop); srv.Close() })
	return srv.URL, hellos
}

func TestDial_CancelDuringHandshakeReturnsPromptly(t *testing.T) {
	url, hellos := stalledCoordinator(t)
	id, err := identity.Generate(filepath.Join(t.TempDir(), "agent_key"), "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		c, err := session.Dial(ctx, session.Config{URL: url, Identity: id, Name: "stuck", AgentVersion: "test"}, session.State{})
		if c != nil {
			c.Close()
		}
		done <- err
	}()
	select {
	case h := <-hellos:
		if h.Name != "stuck" || h.ProtocolVersion != protocol.Version {
			t.Errorf("hello %+v", h)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the agent never said hello")
	}
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Dial succeeded against a coordinator that never answered")
		}
		t.Logf("Dial returned %v after cancel: %v", time.Since(start), err)
	case <-time.After(3 * time.Second):
		t.Fatal("session.Dial ignored ctx cancellation during the handshake")
	}
}
