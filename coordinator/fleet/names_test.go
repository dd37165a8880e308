package fleet_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/agent/identity"
	"github.com/fc-ci/fc/agent/session"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/coordinator/fleet"
	"github.com/fc-ci/fc/protocol"
)

// dialEnroll connects a new key (the protocol client of fc-agent) with token and the
// name it says it has; fromHost marks the name as its host name.
func dialEnroll(t *testing.T, c *coordtest.Coordinator, name string, fromHost bool, token string) (*session.Conn, error) {
	t.Helper()
	id, err := identity.Generate(filepath.Join(t.TempDir(), "agent_key"), "")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := session.Dial(ctx, session.Config{URL: c.URL, Identity: id, Name: name, NameFromHost: fromHost,
		EnrollmentToken: token, AgentVersion: "test"},
		session.State{Capabilities: protocol.Capabilities{Systems: []string{"x86_64-linux"}, MaxJobs: 1, Roles: []string{"build"}}})
	if err == nil {
		t.Cleanup(func() { conn.Close() })
	}
	return conn, err
}

// createToken makes an enrollment token named name through the API.
func createToken(t *testing.T, c *coordtest.Coordinator, name string) string {
	t.Helper()
	var tok struct{ Token string }
	if code := c.Do("POST", "/api/v1/agents/tokens", c.Admin, map[string]any{"name": name}, &tok); code != 201 {
		t.Fatalf("create token %q: %d", name, code)
	}
	return tok.Token
}

// runAgentBinary runs the real fc-agent until it exits and returns its exit code and
// what it printed.
func runAgentBinary(t *testing.T, env ...string) (int, string) {
	t.Helper()
	bin := coordtest.AgentBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "run")
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("fc-agent run: %v, want it to exit with a code; output:\n%s", err, out.String())
	}
	return exit.ExitCode(), out.String()
}

// Agents chose their own names unchecked (empty, markup, newlines, 120,000
// characters): a name that breaks the rule of names is refused at enrollment, says
// why, records nothing and spends no use of the token.
func TestEnroll_InvalidNamesAreRefusedAndSpendNothing(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	tok := c.Token(1, time.Hour)
	for _, name := range []string{"<script>alert(1)</script>", "a\nb", strings.Repeat("a", 64), strings.Repeat("n", 120_000),
		"1abc", "-x", "a b", "ünï"} {
		_, err := dialEnroll(t, c, name, false, tok)
		var refused *protocol.Refused
		if !errors.As(err, &refused) || refused.Code != protocol.RefusedInvalidName || !strings.Contains(refused.Message, "agent name") {
			t.Errorf("name %.40q: %v, want a refusal (invalid_name) explaining the name", name, err)
			continue
		}
		if len(err.Error()) > 500 {
			t.Errorf("name %.40q: the refusal is %d bytes long; it must not echo the name whole", name, len(err.Error()))
		}
	}
	// A nameless agent takes its token's name; with none there either, it has no name.
	_, nameless, err := fleet.CreateToken(context.Background(), c.DB, "", 1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, err = dialEnroll(t, c, "", false, nameless)
	var refused *protocol.Refused
	if !errors.As(err, &refused) || refused.Code != protocol.RefusedInvalidName || !strings.Contains(refused.Message, "agent name is required") {
		t.Errorf("no name at all: %v, want a refusal (invalid_name: required)", err)
	}
	if as := listAgents(t, c); len(as) != 0 {
		t.Fatalf("refused agents got records: %+v", as)
	}
	// The token was not spent: a valid name enrolls with it now.
	conn, err := dialEnroll(t, c, "valid_name-1.0", false, tok)
	if err != nil {
		t.Fatalf("the token after the refusals: %v", err)
	}
	if conn.Welcome.Name != "valid_name-1.0" || !conn.Welcome.Enrolled {
		t.Errorf("welcome %+v", conn.Welcome)
	}
}

// The token's name was ignored: an agent without agent.name takes it (over its host
// name), and a token name another agent has already is refused by the real fc-agent
// with the clash named, exit code 4.
func TestEnroll_NamelessAgentTakesTheTokensName(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	a := startAgent(t, c, "", agentOpts{token: createToken(t, c, "rack-7")})
	got := waitConnected(t, c, "rack-7")
	// The coordinator records the session before the agent has read its welcome.
	a.log.WaitFor(t, 30*time.Second, "connected to coordinator", "name=rack-7")
	// The host name is what a nameless agent says it has; the token's name goes first.
	conn, err := dialEnroll(t, c, "hostname-x", true, createToken(t, c, "rack-8"))
	if err != nil || conn.Welcome.Name != "rack-8" {
		t.Fatalf("host name and token name: %+v %v, want rack-8", conn, err)
	}
	// Its own name goes before the token's.
	conn, err = dialEnroll(t, c, "own-name", false, createToken(t, c, "rack-9"))
	if err != nil || conn.Welcome.Name != "own-name" {
		t.Fatalf("own name and token name: %+v %v, want own-name", conn, err)
	}

	code, out := runAgentBinary(t, "FC_COORDINATOR__URL="+c.URL, "FC_AGENT__STATE_DIR="+t.TempDir(),
		"FC_COORDINATOR__ENROLLMENT_TOKEN="+createToken(t, c, "rack-7"), "FC_AGENT__NAME=")
	want := fmt.Sprintf(`coordinator refused the agent (name_taken): agent name "rack-7" is taken by agent %d`, got.ID)
	if code != 4 || !strings.Contains(out, want) {
		t.Fatalf("fc-agent with a taken token name: exit %d, want 4 printing %q; output:\n%s", code, want, out)
	}
	if !c.Log.Contains("agent refused: name taken", "rack-7") {
		t.Errorf("the coordinator does not log the refusal:\n%s", c.Log)
	}
}

// Duplicate names were accepted: a second agent of a name is refused (the real
// fc-agent prints whose the name is and exits 4) until the holder is revoked; then
// the same agent enrolls with the same token, which the refusal did not spend.
func TestEnroll_DuplicateNameIsRefusedUntilTheHolderIsRevoked(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	startAgent(t, c, "builder", agentOpts{token: c.Token(1, time.Hour)})
	first := waitConnected(t, c, "builder")

	dir, tok := t.TempDir(), c.Token(1, time.Hour)
	env := []string{"FC_COORDINATOR__URL=" + c.URL, "FC_AGENT__STATE_DIR=" + dir, "FC_COORDINATOR__ENROLLMENT_TOKEN=" + tok,
		"FC_AGENT__NAME=builder"}
	code, out := runAgentBinary(t, env...)
	want := fmt.Sprintf(`coordinator refused the agent (name_taken): agent name "builder" is taken by agent %d`, first.ID)
	if code != 4 || !strings.Contains(out, want) {
		t.Fatalf("a second builder: exit %d, want 4 printing %q; output:\n%s", code, want, out)
	}
	if n := len(listAgents(t, c)); n != 1 {
		t.Fatalf("%d agents after the refusal, want 1", n)
	}

	if code := c.Do("DELETE", "/api/v1/agents/"+itoa(first.ID), c.Admin, nil, nil); code != 204 {
		t.Fatalf("revoke: %d", code)
	}
	startAgent(t, c, "builder", agentOpts{token: tok, stateDir: dir})
	coordtest.Eventually(t, 30*time.Second, "the second builder enrolled", func() bool {
		for _, a := range listAgents(t, c) {
			if a.Name == "builder" && a.ID != first.ID && a.Connected {
				return true
			}
		}
		return false
	})
}

// POST /api/v1/agents: names follow the rule of names (at most 63 characters) and a
// name an agent that is not revoked has is 409 naming it; token names follow the
// rule too, since an agent may take one.
func TestRegister_NamesAreCheckedAndUnique(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	key := func() string {
		id, err := identity.Generate(filepath.Join(t.TempDir(), "agent_key"), "")
		if err != nil {
			t.Fatal(err)
		}
		return id.PublicKey("")
	}
	var first agentJSON
	if code := c.Do("POST", "/api/v1/agents", c.Admin, map[string]string{"name": "builder", "public_key": key()}, &first); code != 201 {
		t.Fatalf("register builder: %d", code)
	}
	var e struct{ Error, Field string }
	second := key()
	if code := c.Do("POST", "/api/v1/agents", c.Admin, map[string]string{"name": "builder", "public_key": second}, &e); code != 409 ||
		e.Field != "name" || e.Error != fmt.Sprintf(`agent name "builder" is taken by agent %d`, first.ID) {
		t.Errorf("a second builder: %d %+v, want 409 naming agent %d", code, e, first.ID)
	}
	for _, name := range []string{"", "<script>", "a\nb", strings.Repeat("a", 64), strings.Repeat("n", 120_000)} {
		e = struct{ Error, Field string }{}
		if code := c.Do("POST", "/api/v1/agents", c.Admin, map[string]string{"name": name, "public_key": key()}, &e); code != 422 || e.Field != "name" || len(e.Error) > 500 {
			t.Errorf("agent name %.40q: %d %.200q, want 422 on name", name, code, e.Error)
		}
		if code := c.Do("POST", "/api/v1/agents/tokens", c.Admin, map[string]any{"name": name}, nil); code != 422 {
			t.Errorf("token name %.40q: %d, want 422", name, code)
		}
	}
	if code := c.Do("POST", "/api/v1/agents", c.Admin, map[string]string{"name": strings.Repeat("a", 63), "public_key": key()}, nil); code != 201 {
		t.Errorf("a 63-character name: %d, want 201", code)
	}
	if code := c.Do("DELETE", "/api/v1/agents/"+itoa(first.ID), c.Admin, nil, nil); code != 204 {
		t.Fatalf("revoke: %d", code)
	}
	if code := c.Do("POST", "/api/v1/agents", c.Admin, map[string]string{"name": "builder", "public_key": second}, nil); code != 201 {
		t.Errorf("the name of a revoked agent: %d, want 201", code)
	}
}
