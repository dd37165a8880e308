package coordtest

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	agentcli "github.com/fc-ci/fc/agent/cli"
	agentconfig "github.com/fc-ci/fc/agent/config"
	"github.com/fc-ci/fc/agent/identity"
)

// AgentOptions describe a test agent.
type AgentOptions struct {
	Name     string
	Roles    []string // default: build
	Features []string // default: Nix's system-features (on these machines they include kvm)
	MaxJobs  int      // default 1
	// StepSlots is agent.step_slots (steps taken at once); 0: the agent's default
	// (16 × max_jobs).
	StepSlots int
	// Isolated runs the real fc-agent binary in its own mount namespace with its own,
	// empty /nix: everything it builds from must come through the coordinator's cache,
	// as on a separate host.
	Isolated bool
	// URLs are coordinator.urls, the coordinators the agent fails over between (the
	// first is where it connects first); empty: coordinator.url, the one StartAgent
	// is given. The enrollment token comes from that one: they share a database.
	URLs []string
	// NixConnection is agent.nix_connection ("daemon" or "process"); empty: the
	// agent's default.
	NixConnection string
	// Env adds environment variables, FC_… or e.g. a PATH with a broken nix-store
	// first (isolated agents only; a later one wins).
	Env []string
}

// Agent is a running test agent.
type Agent struct {
	Name     string
	StateDir string
	cmd      *exec.Cmd // isolated
	cancel   context.CancelFunc
	done     chan error
}

// StartAgent runs an agent against c until the test ends.
func StartAgent(t testing.TB, c *Coordinator, o AgentOptions) *Agent {
	t.Helper()
	if o.Roles == nil {
		o.Roles = []string{"build"}
	}
	if o.MaxJobs == 0 {
		o.MaxJobs = 1
	}
	a := &Agent{Name: o.Name, StateDir: t.TempDir(), done: make(chan error, 1)}
	if o.Isolated {
		a.startIsolated(t, c, o)
		return a
	}
	cfg := agentconfig.Defaults()
	cfg.Coordinator.URL = c.URL
	if len(o.URLs) > 0 {
		cfg.Coordinator.URL, cfg.Coordinator.URLs = "", o.URLs
	}
	cfg.Coordinator.EnrollmentToken = c.Token(1, time.Hour)
	cfg.Agent.Name = o.Name
	cfg.Agent.StateDir = a.StateDir
	cfg.Agent.Roles = o.Roles
	if o.Features != nil {
		cfg.Agent.Features = o.Features
	}
	cfg.Agent.MaxJobs = o.MaxJobs
	cfg.Agent.StepSlots = o.StepSlots
	if o.NixConnection != "" {
		cfg.Agent.NixConnection = o.NixConnection
	}
	d, err := agentcli.NewDaemon(cfg, slog.New(slog.NewTextHandler(c.Log, nil)).With("side", "agent-"+o.Name), 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel = cancel
	go func() { a.done <- d.Run(ctx) }()
	t.Cleanup(a.Stop)
	return a
}

var (
	agentBinOnce sync.Once
	agentBin     string
	agentBinErr  error
)

// AgentBinary builds fc-agent once per test binary.
func AgentBinary(t testing.TB) string {
	t.Helper()
	agentBinOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		dir, err := os.MkdirTemp("", "fc-agent-bin-")
		if err != nil {
			agentBinErr = err
			return
		}
		agentBin = filepath.Join(dir, "fc-agent")
		cmd := exec.Command("go", "build", "-o", agentBin, "./agent/cmd/fc-agent")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			agentBinErr = fmt.Errorf("go build fc-agent: %v\n%s", err, out)
		}
	})
	if agentBinErr != nil {
		t.Fatal(agentBinErr)
	}
	return agentBin
}

func (a *Agent) startIsolated(t testing.TB, c *Coordinator, o AgentOptions) {
	t.Helper()
	bin := AgentBinary(t)
	store := filepath.Join(a.StateDir, "nix")
	if err := os.MkdirAll(store, 0o755); err != nil {
		t.Fatal(err)
	}
	// The store Nix makes is read-only; make it removable again for t.TempDir.
	t.Cleanup(func() { _ = exec.Command("chmod", "-R", "u+w", a.StateDir).Run() })
	cmd := exec.Command("unshare", "--mount", "/bin/sh", "-c", // no fork: the agent keeps this PID, so signals reach it
		`mount --bind "$FC_TEST_STORE" /nix && exec "$FC_TEST_AGENT" run`)
	cmd.Env = append(os.Environ(),
		"FC_TEST_STORE="+store, "FC_TEST_AGENT="+bin,
		coordinatorVar(c, o),
		"FC_COORDINATOR__ENROLLMENT_TOKEN="+c.Token(1, time.Hour),
		"FC_AGENT__NAME="+o.Name,
		"FC_AGENT__STATE_DIR="+filepath.Join(a.StateDir, "state"),
		"FC_AGENT__ROLES="+strings.Join(o.Roles, ","),
		"FC_AGENT__MAX_JOBS="+strconv.Itoa(o.MaxJobs),
		"FC_LOG_LEVEL=debug",
		// Each store keeps its own build-user locks, but the nixbld users are the
		// host's: two stores would hand the same user to two builders (and kill one).
		"NIX_CONFIG=build-users-group =",
	)
	if o.StepSlots != 0 {
		cmd.Env = append(cmd.Env, "FC_AGENT__STEP_SLOTS="+strconv.Itoa(o.StepSlots))
	}
	if o.Features != nil {
		cmd.Env = append(cmd.Env, "FC_AGENT__FEATURES="+strings.Join(o.Features, ","))
	}
	cmd.Env = append(cmd.Env, o.Env...)
	w := prefixWriter{prefix: "agent-" + o.Name + ": ", w: c.Log}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start isolated agent: %v", err)
	}
	a.cmd = cmd
	go func() { a.done <- cmd.Wait() }()
	t.Cleanup(a.Stop)
}

// coordinatorVar names the agent's coordinators: FC_COORDINATOR__URLS when the test
// gives several, else FC_COORDINATOR__URL.
func coordinatorVar(c *Coordinator, o AgentOptions) string {
	if len(o.URLs) > 0 {
		return "FC_COORDINATOR__URLS=" + strings.Join(o.URLs, ",")
	}
	return "FC_COORDINATOR__URL=" + c.URL
}

type prefixWriter struct {
	prefix string
	w      *LogBuffer
}

func (p prefixWriter) Write(b []byte) (int, error) {
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line != "" {
			_, _ = p.w.Write([]byte(p.prefix + line))
		}
	}
	return len(b), nil
}

// Kill stops the agent at once, as a crash would (SIGKILL to the whole process group
// of an isolated agent; an in-process one just drops its session and work).
func (a *Agent) Kill() {
	if a.cmd != nil {
		_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
		<-a.done
		a.done <- nil
		return
	}
	a.Stop()
}

// Signal sends sig to an isolated agent.
func (a *Agent) Signal(sig syscall.Signal) {
	if a.cmd != nil {
		_ = a.cmd.Process.Signal(sig)
	}
}

// Wait waits for the agent to exit and returns its exit error.
func (a *Agent) Wait(within time.Duration) (error, bool) {
	select {
	case err := <-a.done:
		a.done <- err
		return err, true
	case <-time.After(within):
		return nil, false
	}
}

// Stop stops the agent (forcefully) and waits for it.
func (a *Agent) Stop() {
	if a.cmd != nil {
		select {
		case err := <-a.done:
			a.done <- err
			return
		default:
		}
		_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
		<-a.done
		a.done <- nil
		return
	}
	if a.cancel != nil {
		a.cancel()
		select {
		case err := <-a.done:
			a.done <- err
		case <-time.After(30 * time.Second):
		}
	}
}

// AllowPush makes the agent whose state directory is stateDir (its key is created
// there, where fc-agent looks for it) known to the coordinator, as an admin
// registering its key would, and grants it the push permission: what `fc-agent push`
// needs. It returns the agent's id.
func (c *Coordinator) AllowPush(t testing.TB, stateDir, name string) int64 {
	t.Helper()
	id, _, err := identity.LoadOrGenerate(filepath.Join(stateDir, "agent_key"), name)
	if err != nil {
		t.Fatal(err)
	}
	var a struct {
		ID int64 `json:"id"`
	}
	if code := c.Do("POST", "/api/v1/agents", c.Admin, map[string]any{"name": name, "public_key": id.PublicKey(name)}, &a); code != http.StatusCreated {
		t.Fatalf("register the pushing agent: %d", code)
	}
	if code := c.Do("PUT", fmt.Sprintf("/api/v1/agents/%d", a.ID), c.Admin, map[string]any{"push": true}, nil); code != http.StatusOK {
		t.Fatalf("grant the push permission: %d", code)
	}
	return a.ID
}
