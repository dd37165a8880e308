package fleet_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	agentcli "github.com/fc-ci/fc/agent/cli"
	agentconfig "github.com/fc-ci/fc/agent/config"
	"github.com/fc-ci/fc/agent/identity"
	"github.com/fc-ci/fc/agent/session"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

type testAgent struct {
	cfg    agentconfig.Config
	log    *coordtest.LogBuffer
	cancel context.CancelFunc
	drain  func()
	done   chan error
}

type agentOpts struct {
	url      string
	token    string
	stateDir string
	version  int
	features []string
}

func startAgent(t *testing.T, c *coordtest.Coordinator, name string, o agentOpts) *testAgent {
	t.Helper()
	cfg := agentconfig.Defaults()
	cfg.Coordinator.URL = c.URL
	if o.url != "" {
		cfg.Coordinator.URL = o.url
	}
	cfg.Coordinator.EnrollmentToken = o.token
	cfg.Agent.Name = name
	cfg.Agent.StateDir = o.stateDir
	if cfg.Agent.StateDir == "" {
		cfg.Agent.StateDir = t.TempDir()
	}
	cfg.Agent.Systems = []string{"x86_64-linux", "i686-linux"}
	cfg.Agent.Features = o.features
	cfg.Agent.MaxJobs = 3
	a := &testAgent{cfg: cfg, log: &coordtest.LogBuffer{}, done: make(chan error, 1)}
	d, err := agentcli.NewDaemon(cfg, slog.New(slog.NewTextHandler(a.log, nil)), o.version)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel, a.drain = cancel, d.Drain
	go func() { a.done <- d.Run(ctx) }()
	t.Cleanup(func() { cancel(); a.wait(t, 30*time.Second) })
	return a
}

// wait returns the daemon's result, failing the test if it is still running.
func (a *testAgent) wait(t *testing.T, within time.Duration) error {
	t.Helper()
	select {
	case err := <-a.done:
		a.done <- err // keep it for later callers
		return err
	case <-time.After(within):
		t.Fatalf("agent still running after %v; its log:\n%s", within, a.log)
		return nil
	}
}

type agentJSON struct {
	ID                int64    `json:"id"`
	Name              string   `json:"name"`
	Fingerprint       string   `json:"fingerprint"`
	Systems           []string `json:"systems"`
	Features          []string `json:"features"`
	MaxJobs           int      `json:"max_jobs"`
	Connected         bool     `json:"connected"`
	Draining          bool     `json:"draining"`
	Enabled           bool     `json:"enabled"`
	Revoked           bool     `json:"revoked"`
	AgentVersion      string   `json:"agent_version"`
	NixVersion        string   `json:"nix_version"`
	LastSeen          *string  `json:"last_seen"`
	Running           int      `json:"running"`
	FreeDiskBytes     int64    `json:"free_disk_bytes"`
	MandatoryFeatures []string `json:"mandatory_features"`
}

func listAgents(t *testing.T, c *coordtest.Coordinator) []agentJSON {
	t.Helper()
	var l struct{ Items []agentJSON }
	if code := c.Do("GET", "/api/v1/agents", "", nil, &l); code != 200 {
		t.Fatalf("GET /api/v1/agents: %d", code)
	}
	return l.Items
}

func agentNamed(t *testing.T, c *coordtest.Coordinator, name string) (agentJSON, bool) {
	for _, a := range listAgents(t, c) {
		if a.Name == name {
			return a, true
		}
	}
	return agentJSON{}, false
}

func waitConnected(t *testing.T, c *coordtest.Coordinator, name string) agentJSON {
	t.Helper()
	var got agentJSON
	coordtest.Eventually(t, 30*time.Second, name+" connected", func() bool {
		a, ok := agentNamed(t, c, name)
		got = a
		return ok && a.Connected
	})
	return got
}

func TestEnroll_WithTokenThenReconnectByKeyAlone(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	dir := t.TempDir()
	a := startAgent(t, c, "builder1", agentOpts{token: c.Token(1, time.Hour), stateDir: dir})
	got := waitConnected(t, c, "builder1")
	id, err := identity.Load(dir + "/agent_key")
	if err != nil {
		t.Fatal(err)
	}
	if got.Fingerprint != id.Fingerprint() {
		t.Errorf("pinned fingerprint %s, agent key %s", got.Fingerprint, id.Fingerprint())
	}
	if strings.Join(got.Systems, ",") != "x86_64-linux,i686-linux" || got.MaxJobs != 3 || got.AgentVersion == "" {
		t.Errorf("capabilities not recorded: %+v", got)
	}
	if !c.Log.Contains("agent enrolled", "builder1") {
		t.Errorf("coordinator did not log the enrollment:\n%s", c.Log)
	}

	a.cancel()
	if err := a.wait(t, 30*time.Second); err != nil {
		t.Fatalf("agent stopped with %v", err)
	}
	coordtest.Eventually(t, 10*time.Second, "disconnect recorded", func() bool {
		a, _ := agentNamed(t, c, "builder1")
		return !a.Connected
	})

	// The token is used up; the key alone is enough now.
	startAgent(t, c, "builder1", agentOpts{stateDir: dir})
	again := waitConnected(t, c, "builder1")
	if again.ID != got.ID || len(listAgents(t, c)) != 1 {
		t.Errorf("reconnect made a new agent record: %d vs %d (%d agents)", again.ID, got.ID, len(listAgents(t, c)))
	}
}

func TestEnroll_BadTokensAndUnknownKeysAreRefused(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	usedUp := c.Token(1, time.Hour)
	startAgent(t, c, "first", agentOpts{token: usedUp})
	waitConnected(t, c, "first")
	expired := c.Token(5, time.Hour)
	if _, err := c.DB.Pool().Exec(context.Background(), `UPDATE enrollment_tokens SET expires_at = now() - interval '1 second' WHERE uses_left = 5`); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, token, coordLog string }{
		{"used-up", usedUp, "enrollment token unknown, expired or used up"},
		{"expired", expired, "enrollment token unknown, expired or used up"},
		{"wrong", "fcagent_0000000000000000000000000000000000000000", "enrollment token unknown, expired or used up"},
		{"none", "", "unknown key and no enrollment token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := startAgent(t, c, "bad-"+tc.name, agentOpts{token: tc.token})
			err := a.wait(t, 30*time.Second)
			var refused *protocol.Refused
			if !errors.As(err, &refused) || refused.Code != protocol.RefusedUnauthorized {
				t.Fatalf("agent ended with %v, want a refusal (unauthorized)", err)
			}
			if !a.log.Contains("coordinator refused this agent", "unauthorized") {
				t.Errorf("agent log lacks a clear refusal line:\n%s", a.log)
			}
			if !c.Log.Contains("agent refused", tc.coordLog, "bad-"+tc.name) {
				t.Errorf("coordinator log lacks %q for bad-%s:\n%s", tc.coordLog, tc.name, c.Log)
			}
			if _, ok := agentNamed(t, c, "bad-"+tc.name); ok {
				t.Error("a refused agent got a record")
			}
		})
	}
}

func TestRevoke_CutsOffAtOnceAndForever(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	dir := t.TempDir()
	a := startAgent(t, c, "doomed", agentOpts{token: c.Token(1, time.Hour), stateDir: dir})
	got := waitConnected(t, c, "doomed")

	start := time.Now()
	if code := c.Do("DELETE", "/api/v1/agents/"+itoa(got.ID), c.Admin, nil, nil); code != 204 {
		t.Fatalf("revoke: %d", code)
	}
	err := a.wait(t, 5*time.Second)
	elapsed := time.Since(start)
	var refused *protocol.Refused
	if !errors.As(err, &refused) || refused.Code != protocol.RefusedRevoked {
		t.Fatalf("agent ended with %v, want refused (revoked)", err)
	}
	t.Logf("revoked agent cut off and refused in %v", elapsed)
	if c.CurrentFleet().Connected() != 0 {
		t.Error("session still registered after revocation")
	}
	// Even a fresh, valid token cannot bring the revoked key back.
	b := startAgent(t, c, "doomed", agentOpts{token: c.Token(1, time.Hour), stateDir: dir})
	err = b.wait(t, 30*time.Second)
	if !errors.As(err, &refused) || refused.Code != protocol.RefusedRevoked {
		t.Fatalf("revoked key with a new token: %v, want refused (revoked)", err)
	}
	var after agentJSON
	c.Do("GET", "/api/v1/agents/"+itoa(got.ID), "", nil, &after)
	if !after.Revoked || after.Connected {
		t.Errorf("registry after revocation: %+v", after)
	}
}

func TestCoordinatorRestart_AgentsReconnectByThemselves(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	tok := c.Token(2, time.Hour)
	startAgent(t, c, "a1", agentOpts{token: tok})
	startAgent(t, c, "a2", agentOpts{token: tok})
	waitConnected(t, c, "a1")
	waitConnected(t, c, "a2")

	c.Stop()
	c.Restart()
	coordtest.Eventually(t, 60*time.Second, "both agents back on the restarted coordinator", func() bool {
		return c.CurrentFleet().Connected() == 2
	})
	waitConnected(t, c, "a1")
	waitConnected(t, c, "a2")
}

func TestConnect_ThroughAPlainHTTPReverseProxy(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	target, _ := url.Parse(c.URL)
	proxy := httptest.NewServer(httputil.NewSingleHostReverseProxy(target))
	t.Cleanup(proxy.Close)
	startAgent(t, c, "behind-proxy", agentOpts{url: proxy.URL, token: c.Token(1, time.Hour)})
	got := waitConnected(t, c, "behind-proxy")
	// The row says connected just before the session is registered for commands.
	coordtest.Eventually(t, 30*time.Second, "the session is registered", func() bool {
		return slices.Contains(c.CurrentFleet().AgentIDs(), got.ID)
	})
	// The coordinator reaches the agent over the agent's own session, through the proxy.
	reply, err := c.CurrentFleet().Command(context.Background(), got.ID, protocol.Message{Type: protocol.TypeCancel,
		Cancel: &protocol.Cancel{Work: protocol.WorkRef{Kind: "step", ID: 1}}})
	if err != nil || reply.Type != protocol.TypeAck {
		t.Fatalf("command through the proxy: %+v %v", reply, err)
	}
}

func TestAdminDrainAndEnable_AreShownAndTellTheAgent(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	a := startAgent(t, c, "d1", agentOpts{token: c.Token(1, time.Hour)})
	got := waitConnected(t, c, "d1")
	var drained agentJSON
	if code := c.Do("POST", "/api/v1/agents/"+itoa(got.ID)+"/drain", c.Admin, nil, &drained); code != 200 || !drained.Draining {
		t.Fatalf("drain: %d %+v", code, drained)
	}
	a.log.WaitFor(t, 10*time.Second, "drained by an admin")
	reply, err := c.CurrentFleet().Command(context.Background(), got.ID, protocol.Message{Type: protocol.TypeAssign,
		Assign: &protocol.Assign{Work: protocol.WorkRef{Kind: "step", ID: 7}}})
	if err != nil || reply.Type != protocol.TypeReject || !strings.Contains(reply.Reject.Reason, "draining") {
		t.Errorf("a drained agent must reject work: %+v %v", reply, err)
	}
	var enabled agentJSON
	if code := c.Do("POST", "/api/v1/agents/"+itoa(got.ID)+"/enable", c.Admin, nil, &enabled); code != 200 || enabled.Draining || !enabled.Enabled {
		t.Fatalf("enable: %d %+v", code, enabled)
	}
	a.log.WaitFor(t, 10*time.Second, "enabled by an admin")
	var disabled agentJSON
	if code := c.Do("POST", "/api/v1/agents/"+itoa(got.ID)+"/disable", c.Admin, nil, &disabled); code != 200 || disabled.Enabled {
		t.Fatalf("disable: %d %+v", code, disabled)
	}
}

func TestDrain_IdleAgentStopsAndIsShownShuttingDown(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	a := startAgent(t, c, "leaving", agentOpts{token: c.Token(1, time.Hour)})
	waitConnected(t, c, "leaving")
	start := time.Now()
	a.drain()
	if err := a.wait(t, 10*time.Second); err != nil {
		t.Fatalf("drained idle agent ended with %v, want nil", err)
	}
	t.Logf("idle agent drained and stopped in %v", time.Since(start))
	got, _ := agentNamed(t, c, "leaving")
	if !got.Draining {
		t.Errorf("registry does not show the agent drained: %+v", got)
	}
}

func TestRegisterByPublicKey_ConnectsWithoutToken(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	dir := t.TempDir()
	id, err := identity.Generate(dir+"/agent_key", "nixos-builder")
	if err != nil {
		t.Fatal(err)
	}
	var reg agentJSON
	if code := c.Do("POST", "/api/v1/agents", c.Admin, map[string]string{"public_key": id.PublicKey("nixos-builder")}, &reg); code != 201 {
		t.Fatalf("register: %d", code)
	}
	if reg.Name != "nixos-builder" || reg.Fingerprint != id.Fingerprint() {
		t.Errorf("registered %+v", reg)
	}
	startAgent(t, c, "nixos-builder", agentOpts{stateDir: dir})
	waitConnected(t, c, "nixos-builder")
	if code := c.Do("POST", "/api/v1/agents", c.Admin, map[string]string{"public_key": "ssh-rsa AAAA bad"}, nil); code != 422 {
		t.Errorf("a non-ed25519 key: %d, want 422", code)
	}
	if code := c.Do("POST", "/api/v1/agents", c.Admin, map[string]string{"public_key": id.PublicKey("again")}, nil); code != 409 {
		t.Errorf("registering a pinned key twice: %d, want 409", code)
	}
}

func TestCapabilities_ComeFromTheRealNix(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	cfg := agentconfig.Defaults()
	cfg.Coordinator.URL = c.URL
	cfg.Coordinator.EnrollmentToken = c.Token(1, time.Hour)
	cfg.Agent.Name = "probed"
	cfg.Agent.StateDir = t.TempDir()
	cfg.Agent.MandatoryFeatures = []string{"big-parallel"}
	d, err := agentcli.NewDaemon(cfg, slog.New(slog.DiscardHandler), 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	got := waitConnected(t, c, "probed")
	if len(got.Systems) == 0 || got.Systems[0] != "x86_64-linux" {
		t.Errorf("systems %v, want Nix's system first", got.Systems)
	}
	if !strings.HasPrefix(got.NixVersion, "2.") {
		t.Errorf("nix version %q", got.NixVersion)
	}
	if got.MaxJobs < 1 || strings.Join(got.MandatoryFeatures, ",") != "big-parallel" {
		t.Errorf("max_jobs %d, mandatory %v", got.MaxJobs, got.MandatoryFeatures)
	}
	coordtest.Eventually(t, 10*time.Second, "a heartbeat with a resource report", func() bool {
		a, _ := agentNamed(t, c, "probed")
		return a.FreeDiskBytes > 0
	})
}

func TestTokensAPI_ShowsTheTokenOnceWithDefaults(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	var tok struct {
		ID        int64  `json:"id"`
		Token     string `json:"token"`
		Uses      int    `json:"uses"`
		ExpiresAt string `json:"expires_at"`
	}
	if code := c.Do("POST", "/api/v1/agents/tokens", c.Admin, map[string]any{"name": "rack-1"}, &tok); code != 201 {
		t.Fatalf("create token: %d", code)
	}
	exp, err := time.Parse(time.RFC3339, tok.ExpiresAt)
	if !strings.HasPrefix(tok.Token, "fcagent_") || tok.Uses != 1 || err != nil || time.Until(exp) > time.Hour+time.Minute {
		t.Errorf("token answer %+v (expiry err %v)", tok, err)
	}
	for _, body := range []map[string]any{{"name": "x", "uses": 0}, {"name": "x", "expires_in": -5}, {"name": ""}} {
		if code := c.Do("POST", "/api/v1/agents/tokens", c.Admin, body, nil); code != 422 {
			t.Errorf("%v: %d, want 422", body, code)
		}
	}
	startAgent(t, c, "with-api-token", agentOpts{token: tok.Token})
	waitConnected(t, c, "with-api-token")
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestNewSession_ReplacesTheOldOneForTheSameAgent(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	dir := t.TempDir()
	startAgent(t, c, "twin", agentOpts{token: c.Token(1, time.Hour), stateDir: dir})
	got := waitConnected(t, c, "twin")
	id, err := identity.Load(dir + "/agent_key")
	if err != nil {
		t.Fatal(err)
	}
	// A second connection with the same key: the coordinator keeps only the newer one.
	conn, err := session.Dial(context.Background(), session.Config{URL: c.URL, Identity: id, Name: "twin", AgentVersion: "test"},
		session.State{Capabilities: protocol.Capabilities{Systems: []string{"x86_64-linux"}, MaxJobs: 1, Roles: []string{"build"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if conn.Welcome.AgentID != got.ID {
		t.Fatalf("second session welcomed as agent %d, want %d", conn.Welcome.AgentID, got.ID)
	}
	c.Log.WaitFor(t, 10*time.Second, "closing its previous session", fmt.Sprint(got.ID))
	if n := c.CurrentFleet().Connected(); n != 1 {
		t.Errorf("%d sessions registered for one agent, want 1", n)
	}
}

// TestCacheToken_EachSessionsAgentReadsThePrivateCache: each daemon session's welcome
// gives the agent a new cache read token, which the agent writes to a netrc file only
// it can read; a private cache accepts the current token and refuses the one of an
// older session and that of a revoked agent. Neither the agents API nor a log shows it.
func TestCacheToken_EachSessionsAgentReadsThePrivateCache(t *testing.T) {
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) { cfg.Cache.Private = true }})
	dir := t.TempDir()
	a := startAgent(t, c, "reader", agentOpts{token: c.Token(1, time.Hour), stateDir: dir})
	got := waitConnected(t, c, "reader")
	netrc := filepath.Join(dir, "cache.netrc")
	read := func(login, token string) int {
		req, _ := http.NewRequest("GET", c.URL+"/nix-cache/nix-cache-info", nil)
		if token != "" {
			req.SetBasicAuth(login, token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	first := netrcToken(t, netrc, "127.0.0.1", "reader", "")
	if code := read("", ""); code != 401 {
		t.Errorf("anonymous read of the private cache: %d, want 401", code)
	}
	if code := read("reader", first); code != 200 {
		t.Errorf("read with the session's token: %d, want 200", code)
	}
	if code := read("reader", first[:len(first)-1]+"x"); code != 401 {
		t.Errorf("read with a wrong token: %d, want 401", code)
	}

	// A push session (fc-agent push) neither gets a token nor ends the daemon's.
	id, err := identity.Load(filepath.Join(dir, "agent_key"))
	if err != nil {
		t.Fatal(err)
	}
	push, err := session.Dial(context.Background(), session.Config{URL: c.URL, Identity: id, Name: "reader", AgentVersion: "test",
		Purpose: protocol.PurposePush}, session.State{})
	if err != nil {
		t.Fatal(err)
	}
	push.Close()
	if push.Welcome.CacheToken != "" || read("reader", first) != 200 {
		t.Errorf("a push session was given a token, or ended the daemon's")
	}

	// The next session (here: after a coordinator restart) brings a new token; the
	// old one is refused from then on.
	c.Restart()
	second := netrcToken(t, netrc, "127.0.0.1", "reader", first)
	if code := read("reader", first); code != 401 {
		t.Errorf("read with the previous session's token: %d, want 401", code)
	}
	if code := read("reader", second); code != 200 {
		t.Errorf("read with the new session's token: %d, want 200", code)
	}

	hash := sha256.Sum256([]byte(second))
	var agents bytes.Buffer
	req, _ := http.NewRequest("GET", c.URL+"/api/v1/agents", nil)
	req.Header.Set("Authorization", "Bearer "+c.Admin)
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	} else {
		_, _ = agents.ReadFrom(resp.Body)
		resp.Body.Close()
	}
	for _, secret := range []string{first, second, hex.EncodeToString(hash[:]), base64.StdEncoding.EncodeToString(hash[:])} {
		if strings.Contains(agents.String(), secret) {
			t.Errorf("GET /api/v1/agents shows a cache token or its hash: %s", agents.String())
		}
		if strings.Contains(c.Log.String(), secret) || strings.Contains(a.log.String(), secret) {
			t.Errorf("a log holds a cache token or its hash")
		}
	}

	if code := c.Do("DELETE", "/api/v1/agents/"+itoa(got.ID), c.Admin, nil, nil); code != 204 {
		t.Fatalf("revoke: %d", code)
	}
	if code := read("reader", second); code != 401 {
		t.Errorf("read with a revoked agent's token: %d, want 401", code)
	}
}

// netrcToken waits for the agent's netrc file to hold an entry for machine and login
// whose password is not old, checks that only its owner may read the file, and
// returns the password.
func netrcToken(t *testing.T, path, machine, login, old string) string {
	t.Helper()
	var token string
	coordtest.Eventually(t, 30*time.Second, "the agent writes a new cache token to "+path, func() bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
		if len(f) != 6 || f[0] != "machine" || f[1] != machine || f[2] != "login" || f[3] != login || f[4] != "password" {
			t.Fatalf("netrc file starts %q, want machine %s login %s password <token>", strings.SplitN(string(b), "\n", 2)[0], machine, login)
		}
		token = f[5]
		return token != old
	})
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("netrc file mode %v (%v), want 0600", st.Mode().Perm(), err)
	}
	return token
}
