package cli_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/fc-ci/fc/agent/cli"
	"github.com/fc-ci/fc/agent/config"
	"github.com/fc-ci/fc/agent/identity"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage/storagetest"
)

// The test binary doubles as fc-agent when FC_TEST_AS_AGENT is set, so the tests
// drive a real process (signals, exit codes, stdout and stderr) built with the race
// detector. FC_TEST_PROTOCOL_VERSION makes it speak another protocol version; that
// knob exists only here.
func TestMain(m *testing.M) {
	if os.Getenv("FC_TEST_AS_AGENT") == "1" {
		os.Exit(runAsAgent())
	}
	storagetest.Main(m)
}

func runAsAgent() int {
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	version := 0
	if v := os.Getenv("FC_TEST_PROTOCOL_VERSION"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			fmt.Fprintf(os.Stderr, "FC_TEST_PROTOCOL_VERSION: %v\n", err)
			return 99
		}
		version = n
	}
	return cli.Main(context.Background(), cli.Env{Args: os.Args[1:], Environ: os.Environ(),
		Stdout: os.Stdout, Stderr: os.Stderr, Signals: sigs, ProtocolVersion: version})
}

// lockedBuffer collects a process's output while a test may read it.
type lockedBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // made by a waiter, closed by the next write
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
	return l.b.Write(p)
}

// next is closed by the next write.
func (l *lockedBuffer) next() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.changed == nil {
		l.changed = make(chan struct{})
	}
	return l.changed
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// agentCmd is fc-agent with args, in an empty working directory (no ./agent.toml),
// with the parent's environment minus any FC_ settings, plus env.
func agentCmd(t *testing.T, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	// The race detector sleeps 1 s before a successful exit; that would hide how
	// long the agent itself takes to stop.
	gorace := "atexit_sleep_ms=0"
	for _, kv := range os.Environ() {
		if v, ok := strings.CutPrefix(kv, "GORACE="); ok {
			gorace = v + " " + gorace
			continue
		}
		if !strings.HasPrefix(kv, "FC_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(append(cmd.Env, "GORACE="+gorace, "FC_TEST_AS_AGENT=1"), env...)
	cmd.Dir = t.TempDir()
	return cmd
}

type agentProc struct {
	cmd            *exec.Cmd
	stdout, stderr *lockedBuffer
	exited         chan struct{}
}

// startAgent starts fc-agent; the test's cleanup kills it if it still runs.
func startAgent(t *testing.T, env []string, args ...string) *agentProc {
	t.Helper()
	p := &agentProc{cmd: agentCmd(t, env, args...), stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, exited: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// wait returns the exit code, failing the test if the process runs longer than within.
func (p *agentProc) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(within):
		t.Fatalf("fc-agent still running after %v; stderr:\n%s", within, p.stderr)
		return -1
	}
}

// waitStderr waits until the process has written s to stderr, failing the test if it
// exits first or within passes. Every write wakes it: no polling interval.
func (p *agentProc) waitStderr(t *testing.T, within time.Duration, s string) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		next := p.stderr.next()
		if strings.Contains(p.stderr.String(), s) {
			return
		}
		select {
		case <-next:
		case <-p.exited: // its output is all in by now (Wait copies it before returning)
			if !strings.Contains(p.stderr.String(), s) {
				t.Fatalf("fc-agent exited with %d before writing %q:\n%s", p.cmd.ProcessState.ExitCode(), s, p.stderr)
			}
			return
		case <-deadline.C:
			t.Fatalf("fc-agent did not write %q within %v; stderr:\n%s", s, within, p.stderr)
		}
	}
}

func (p *agentProc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// agentEnv configures an agent for c by environment variables, as an operator would.
func agentEnv(c *coordtest.Coordinator, name, stateDir, token string) []string {
	env := []string{"FC_COORDINATOR__URL=" + c.URL, "FC_AGENT__STATE_DIR=" + stateDir,
		"FC_AGENT__NAME=" + name, "FC_AGENT__SYSTEMS=x86_64-linux", "FC_LOG_LEVEL=debug"}
	if token != "" {
		env = append(env, "FC_COORDINATOR__ENROLLMENT_TOKEN="+token)
	}
	return env
}

type agentJSON struct {
	ID           int64    `json:"id"`
	Name         string   `json:"name"`
	Fingerprint  string   `json:"fingerprint"`
	Systems      []string `json:"systems"`
	Connected    bool     `json:"connected"`
	Draining     bool     `json:"draining"`
	ShuttingDown bool     `json:"shutting_down"`
	Revoked      bool     `json:"revoked"`
}

func agentNamed(t *testing.T, c *coordtest.Coordinator, name string) (agentJSON, bool) {
	t.Helper()
	var l struct{ Items []agentJSON }
	if code := c.Do("GET", "/api/v1/agents", "", nil, &l); code != 200 {
		t.Fatalf("GET /api/v1/agents: %d", code)
	}
	for _, a := range l.Items {
		if a.Name == name {
			return a, true
		}
	}
	return agentJSON{}, false
}

// waitConnected waits until the registry shows the agent process connected.
func waitConnected(t *testing.T, c *coordtest.Coordinator, p *agentProc, name string) agentJSON {
	t.Helper()
	var got agentJSON
	coordtest.Eventually(t, 60*time.Second, name+" connected", func() bool {
		if !p.running() {
			t.Fatalf("fc-agent exited with %d before connecting:\n%s", p.cmd.ProcessState.ExitCode(), p.stderr)
		}
		a, ok := agentNamed(t, c, name)
		got = a
		return ok && a.Connected
	})
	return got
}

func TestRun_IncompatibleProtocolVersionExits3NamingBothVersions(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	skewed := protocol.Version + 1
	env := append(agentEnv(c, "from-the-future", t.TempDir(), c.Token(1, time.Hour)),
		"FC_TEST_PROTOCOL_VERSION="+strconv.Itoa(skewed))
	p := startAgent(t, env)
	code := p.wait(t, 60*time.Second)
	stderr := p.stderr.String()
	if code != cli.ExitIncompatible {
		t.Fatalf("exit code %d, want %d (incompatible); stderr:\n%s", code, cli.ExitIncompatible, stderr)
	}
	for _, want := range []string{
		fmt.Sprintf("protocol version %d", skewed),
		fmt.Sprintf("coordinator speaks %d", protocol.Version),
		protocol.RefusedVersion,
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr does not contain %q:\n%s", want, stderr)
		}
	}
	if !c.Log.Contains("agent refused: incompatible protocol", "from-the-future") {
		t.Errorf("coordinator did not log the refusal:\n%s", c.Log)
	}
	if _, ok := agentNamed(t, c, "from-the-future"); ok {
		t.Error("an agent with an incompatible protocol got a record (and used the token)")
	}
}

func TestRun_UnknownKeyWithoutTokenExits4(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	p := startAgent(t, agentEnv(c, "stranger", t.TempDir(), ""))
	code := p.wait(t, 60*time.Second)
	if code != cli.ExitRefused {
		t.Fatalf("exit code %d, want %d (refused); stderr:\n%s", code, cli.ExitRefused, p.stderr)
	}
	if !strings.Contains(p.stderr.String(), protocol.RefusedUnauthorized) {
		t.Errorf("stderr does not say unauthorized:\n%s", p.stderr)
	}
}

func TestRun_RevokedAgentExits4AndCannotComeBack(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	dir := t.TempDir()
	p := startAgent(t, agentEnv(c, "doomed", dir, c.Token(1, time.Hour)))
	got := waitConnected(t, c, p, "doomed")

	start := time.Now()
	if code := c.Do("DELETE", "/api/v1/agents/"+strconv.FormatInt(got.ID, 10), c.Admin, nil, nil); code != 204 {
		t.Fatalf("revoke: %d", code)
	}
	code := p.wait(t, 30*time.Second)
	t.Logf("revoked agent process exited %v after the revocation", time.Since(start))
	if code != cli.ExitRefused {
		t.Fatalf("running agent after revocation: exit code %d, want %d; stderr:\n%s", code, cli.ExitRefused, p.stderr)
	}
	if !strings.Contains(p.stderr.String(), protocol.RefusedRevoked) {
		t.Errorf("stderr does not say revoked:\n%s", p.stderr)
	}

	// Started again with the same key and a fresh, valid token: still refused.
	again := startAgent(t, agentEnv(c, "doomed", dir, c.Token(1, time.Hour)))
	if code := again.wait(t, 60*time.Second); code != cli.ExitRefused {
		t.Fatalf("restarted revoked agent: exit code %d, want %d; stderr:\n%s", code, cli.ExitRefused, again.stderr)
	}
	if !strings.Contains(again.stderr.String(), protocol.RefusedRevoked) {
		t.Errorf("stderr does not say revoked:\n%s", again.stderr)
	}
}

func TestRun_IdleAgentDrainsAndExits0OnSignal(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
	}{{"SIGTERM", syscall.SIGTERM}, {"SIGINT", syscall.SIGINT}} {
		sig := tc.sig
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := coordtest.Start(t, coordtest.Options{})
			name := "leaving-" + strings.ToLower(tc.name)
			p := startAgent(t, agentEnv(c, name, t.TempDir(), c.Token(1, time.Hour)))
			waitConnected(t, c, p, name)

			start := time.Now()
			if err := p.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			code := p.wait(t, 30*time.Second)
			elapsed := time.Since(start)
			t.Logf("idle agent exited %d %v after %s", code, elapsed, tc.name)
			if code != cli.ExitOK {
				t.Fatalf("exit code %d after %s, want 0; stderr:\n%s", code, tc.name, p.stderr)
			}
			if elapsed >= 10*time.Second {
				t.Errorf("idle agent took %v to drain, want < 10 s", elapsed)
			}
			for _, want := range []string{"draining: taking no new work", "drained; stopping"} {
				if !strings.Contains(p.stderr.String(), want) {
					t.Errorf("agent log lacks %q:\n%s", want, p.stderr)
				}
			}
			// The drain was reported before the agent left; the registry keeps showing it.
			got, ok := agentNamed(t, c, name)
			if !ok || !got.Draining || !got.ShuttingDown {
				t.Errorf("registry after the drain: %+v (found %v), want draining and shutting_down", got, ok)
			}
			coordtest.Eventually(t, 10*time.Second, "disconnect recorded", func() bool {
				a, _ := agentNamed(t, c, name)
				return !a.Connected
			})
		})
	}
}

// An agent that cannot reach its coordinator and has no work has nothing to finish:
// a signal stops it at once instead of after the retry loop.
func TestRun_SignalWhileCoordinatorUnreachableExits0(t *testing.T) {
	t.Parallel()
	env := []string{"FC_COORDINATOR__URL=http://127.0.0.1:1", "FC_AGENT__STATE_DIR=" + t.TempDir(),
		"FC_AGENT__NAME=lonely", "FC_AGENT__SYSTEMS=x86_64-linux"}
	p := startAgent(t, env)
	p.waitStderr(t, 60*time.Second, "cannot reach coordinator; retrying")
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code := p.wait(t, 30*time.Second)
	t.Logf("unconnected agent exited %d %v after SIGTERM", code, time.Since(start))
	if code != cli.ExitOK || time.Since(start) >= 10*time.Second {
		t.Fatalf("exit code %d after %v, want 0 within 10 s; stderr:\n%s", code, time.Since(start), p.stderr)
	}
}

func TestKeygen_WritesKeyOnceAndPrintsPublicKeyAndFingerprint(t *testing.T) {
	t.Parallel()
	state := filepath.Join(t.TempDir(), "state") // created by keygen
	env := []string{"FC_AGENT__STATE_DIR=" + state, "FC_AGENT__NAME=rack-7"}
	keygen := func() (stdout, stderr string) {
		t.Helper()
		p := startAgent(t, env, "keygen")
		if code := p.wait(t, 60*time.Second); code != cli.ExitOK {
			t.Fatalf("keygen: exit code %d; stderr:\n%s", code, p.stderr)
		}
		return p.stdout.String(), p.stderr.String()
	}

	out, errOut := keygen()
	keyPath := filepath.Join(state, "agent_key")
	st, err := os.Stat(keyPath)
	if err != nil {
		t.Fatalf("keygen wrote no key: %v; stderr:\n%s", err, errOut)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", st.Mode().Perm())
	}
	if !strings.Contains(errOut, "created "+keyPath) {
		t.Errorf("stderr does not say the key was created:\n%s", errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("stdout %q, want the public key line and the fingerprint", out)
	}
	if !strings.HasPrefix(lines[0], "ssh-ed25519 ") || !strings.HasSuffix(lines[0], " rack-7") {
		t.Errorf("public key line %q, want ssh-ed25519 ... rack-7", lines[0])
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(lines[0]))
	if err != nil {
		t.Fatalf("printed public key does not parse: %v", err)
	}
	if !strings.HasPrefix(lines[1], "SHA256:") || lines[1] != ssh.FingerprintSHA256(pub) {
		t.Errorf("fingerprint %q, want SHA256 of the printed key (%s)", lines[1], ssh.FingerprintSHA256(pub))
	}
	id, err := identity.Load(keyPath)
	if err != nil || id.Fingerprint() != lines[1] {
		t.Errorf("the key on disk (%v) is not the printed one", err)
	}
	before, _ := os.ReadFile(keyPath)

	out2, errOut2 := keygen()
	if out2 != out {
		t.Errorf("second keygen printed %q, want the same key %q", out2, out)
	}
	if !strings.Contains(errOut2, "not replaced") {
		t.Errorf("second keygen does not say it kept the key:\n%s", errOut2)
	}
	if after, _ := os.ReadFile(keyPath); !bytes.Equal(before, after) {
		t.Error("second keygen changed the key file")
	}
}

func TestMain_BadConfigurationAndUsage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	badFile := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(badFile, []byte("[agent]\nname = \"x\"\n\nmax_jobz = 4\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	state := "FC_AGENT__STATE_DIR=" + t.TempDir()
	cases := []struct {
		name   string
		env    []string
		args   []string
		code   int
		stderr []string
		stdout string
	}{
		{"malformed variable", []string{state, "FC_AGENT__MAX_JOBS=abc"}, nil, cli.ExitError,
			[]string{"FC_AGENT__MAX_JOBS", `"abc"`}, ""},
		{"unknown key in --config", []string{state}, []string{"--config", badFile}, cli.ExitError,
			[]string{badFile, "line 4", `"agent.max_jobz"`, "unknown key"}, ""},
		{"unknown key in FC_CONFIG_FILE", []string{state, "FC_CONFIG_FILE=" + badFile}, []string{"keygen"}, cli.ExitError,
			[]string{badFile, "line 4", `"agent.max_jobz"`}, ""},
		{"missing --config file", []string{state}, []string{"--config", filepath.Join(dir, "absent.toml")}, cli.ExitError,
			[]string{"absent.toml"}, ""},
		{"bad coordinator url", []string{state, "FC_COORDINATOR__URL=ftp://ci.example.org"}, nil, cli.ExitError,
			[]string{"coordinator.url", "ftp://ci.example.org"}, ""},
		{"config check", []string{state}, []string{"config", "check"}, cli.ExitOK, nil, "configuration OK: coordinator http://127.0.0.1:3000"},
		{"config check refuses an unknown key", []string{state}, []string{"--config", badFile, "config", "check"}, cli.ExitError,
			[]string{badFile, `"agent.max_jobz"`}, ""},
		{"config without check", []string{state}, []string{"config"}, cli.ExitUsage, []string{"config needs a command: check"}, ""},
		{"unknown command", nil, []string{"frobnicate"}, cli.ExitUsage, []string{`unknown command "frobnicate"`, "usage: fc-agent"}, ""},
		{"unknown flag", nil, []string{"--nope"}, cli.ExitUsage, []string{"nope"}, ""},
		{"help", nil, []string{"-h"}, cli.ExitOK, []string{"usage: fc-agent", "keygen"}, ""},
		{"version", nil, []string{"version"}, cli.ExitOK, nil, fmt.Sprintf("(protocol %d)", protocol.Version)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := startAgent(t, tc.env, tc.args...)
			code := p.wait(t, 60*time.Second)
			if code != tc.code {
				t.Fatalf("exit code %d, want %d; stderr:\n%s", code, tc.code, p.stderr)
			}
			for _, want := range tc.stderr {
				if !strings.Contains(p.stderr.String(), want) {
					t.Errorf("stderr does not contain %q:\n%s", want, p.stderr)
				}
			}
			if !strings.Contains(p.stdout.String(), tc.stdout) {
				t.Errorf("stdout %q does not contain %q", p.stdout, tc.stdout)
			}
		})
	}
}

// Behind TLS (here a TLS-terminating reverse proxy with its own CA) the agent dials
// wss:// and trusts ca_file; without it the certificate is refused and it keeps trying.
func TestRun_HTTPSCoordinatorTrustedThroughCAFile(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	target, _ := url.Parse(c.URL)
	proxy := httptest.NewUnstartedServer(httputil.NewSingleHostReverseProxy(target))
	proxy.Config.ErrorLog = log.New(io.Discard, "", 0) // the untrusting agent's failed handshakes
	proxy.StartTLS()
	t.Cleanup(proxy.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: proxy.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}

	env := agentEnv(c, "over-tls", t.TempDir(), c.Token(1, time.Hour))
	env = append(env, "FC_COORDINATOR__URL="+proxy.URL, "FC_COORDINATOR__CA_FILE="+caFile)
	p := startAgent(t, env)
	waitConnected(t, c, p, "over-tls")

	env = agentEnv(c, "untrusting", t.TempDir(), c.Token(1, time.Hour))
	env = append(env, "FC_COORDINATOR__URL="+proxy.URL)
	q := startAgent(t, env)
	q.waitStderr(t, 60*time.Second, "certificate signed by unknown authority")
	if !q.running() {
		t.Fatalf("fc-agent without the CA exited with %d, want it to keep retrying:\n%s", q.cmd.ProcessState.ExitCode(), q.stderr)
	}
	if a, ok := agentNamed(t, c, "untrusting"); ok {
		t.Errorf("an agent that does not trust the certificate got through: %+v", a)
	}
}

func TestRun_UnreadableCAOrTokenFileExits1(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"FC_AGENT__STATE_DIR=" + t.TempDir(), "FC_AGENT__SYSTEMS=x86_64-linux", "FC_COORDINATOR__URL=http://127.0.0.1:1"}
	cases := []struct {
		name string
		env  string
		want []string
	}{
		{"missing ca_file", "FC_COORDINATOR__CA_FILE=" + filepath.Join(dir, "absent.pem"), []string{"coordinator.ca_file", "absent.pem"}},
		{"ca_file without a certificate", "FC_COORDINATOR__CA_FILE=" + notPEM, []string{"coordinator.ca_file", notPEM, "no PEM certificate"}},
		{"missing enrollment_token_file", "FC_COORDINATOR__ENROLLMENT_TOKEN_FILE=" + filepath.Join(dir, "absent.token"),
			[]string{"coordinator.enrollment_token_file", "absent.token"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := startAgent(t, append(base[:len(base):len(base)], tc.env)) // base is shared: never append in place
			if code := p.wait(t, 60*time.Second); code != cli.ExitError {
				t.Fatalf("exit code %d, want %d; stderr:\n%s", code, cli.ExitError, p.stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(p.stderr.String(), w) {
					t.Errorf("stderr does not contain %q:\n%s", w, p.stderr)
				}
			}
		})
	}
}

func TestCapabilities_NixThenOverrides(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cfg := config.Defaults()
	caps, err := cli.Capabilities(cfg)(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(caps.Systems) == 0 || caps.Systems[0] != "x86_64-linux" || !strings.HasPrefix(caps.NixVersion, "2.") {
		t.Errorf("from Nix: systems %q, nix %q", caps.Systems, caps.NixVersion)
	}
	if caps.MaxJobs != runtime.NumCPU() || caps.Slots != 16*runtime.NumCPU() || caps.SpeedFactor != 1 || !reflect.DeepEqual(caps.Roles, []string{protocol.RoleBuild, protocol.RoleEval}) {
		t.Errorf("defaults: max_jobs %d, slots %d (cores %d), speed %v, roles %q", caps.MaxJobs, caps.Slots, runtime.NumCPU(), caps.SpeedFactor, caps.Roles)
	}

	cfg.Agent.Systems = []string{"aarch64-linux"}
	cfg.Agent.Features = []string{"kvm"}
	cfg.Agent.MandatoryFeatures = []string{"big-parallel"}
	cfg.Agent.MaxJobs = 2
	cfg.Agent.StepSlots = 5
	cfg.Agent.SpeedFactor = 2.5
	cfg.Agent.Roles = []string{protocol.RoleEval}
	caps, err = cli.Capabilities(cfg)(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := protocol.Capabilities{Systems: []string{"aarch64-linux"}, Features: []string{"kvm"}, MandatoryFeatures: []string{"big-parallel"},
		MaxJobs: 2, Slots: 5, SpeedFactor: 2.5, Roles: []string{protocol.RoleEval}, NixVersion: caps.NixVersion}
	if !reflect.DeepEqual(caps, want) || !strings.HasPrefix(caps.NixVersion, "2.") {
		t.Errorf("overrides:\n got  %+v\n want %+v", caps, want)
	}
}

// Not parallel: it empties PATH for the whole test binary (t.Setenv).
func TestCapabilities_WithoutNixNeedConfiguredSystems(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no nix here
	cfg := config.Defaults()
	if _, err := cli.Capabilities(cfg)(context.Background()); err == nil || !strings.Contains(err.Error(), "agent.systems") {
		t.Errorf("no Nix and no systems: err = %v, want advice naming agent.systems", err)
	}
	cfg.Agent.Systems = []string{"x86_64-linux"}
	caps, err := cli.Capabilities(cfg)(context.Background())
	if err != nil || !reflect.DeepEqual(caps.Systems, []string{"x86_64-linux"}) || caps.NixVersion != "" {
		t.Errorf("no Nix, systems configured: %+v, %v", caps, err)
	}
}

func TestTLSConfig(t *testing.T) {
	if c, err := cli.TLSConfig(""); c != nil || err != nil {
		t.Errorf("no ca_file: %v, %v; want nil (system roots)", c, err)
	}
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := cli.TLSConfig(caFile)
	if err != nil || c == nil || c.RootCAs == nil || c.MinVersion < tls.VersionTLS12 {
		t.Fatalf("TLSConfig(%s) = %+v, %v", caFile, c, err)
	}
	if _, err := srv.Certificate().Verify(x509.VerifyOptions{Roots: c.RootCAs}); err != nil {
		t.Errorf("the configured CA is not trusted: %v", err)
	}
}
