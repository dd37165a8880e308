package nixos_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/coordtest"
)

// The agent started as its unit says (command, environment, working directory) with
// the TOML the module generated enrolls with a real coordinator using the token file,
// and drains on SIGTERM. Two things stand in for systemd: the credential is named by
// FC_COORDINATOR__ENROLLMENT_TOKEN_FILE (LoadCredential's /run/credentials is
// systemd's), and Nix is the machine's single-user one (no nix-daemon, so no
// NIX_REMOTE=daemon).
func TestModules_AgentEnrollsWithItsGeneratedConfig(t *testing.T) {
	h := newHarness(t)
	c := coordtest.Start(t, coordtest.Options{})
	dir := t.TempDir()
	state, token := filepath.Join(dir, "state"), filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte(c.Token(1, time.Hour)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := h.eval(t, []string{"agent"}, `{ services.fc-agent = { enable = true; enrollmentTokenFile = "`+token+`";
	  settings.coordinator.url = "`+c.URL+`";
	  settings.agent = { name = "nixos-builder"; state_dir = "`+state+`"; max_jobs = 2; roles = [ "build" ]; }; }; }`)
	if err != nil {
		t.Fatal(err)
	}
	u := s.Units["fc-agent"]
	if err := os.MkdirAll(state, 0o700); err != nil { // tmpfiles' job
		t.Fatal(err)
	}
	argv := strings.Fields(u.ServiceConfig["ExecStart"].(string))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = u.ServiceConfig["WorkingDirectory"].(string)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + state, "XDG_CACHE_HOME=" + filepath.Join(dir, "cache"),
		"FC_COORDINATOR__ENROLLMENT_TOKEN_FILE=" + token}
	for k, v := range u.Environment {
		if k != "NIX_REMOTE" && k != "XDG_CACHE_HOME" {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	cmd.Env = append(cmd.Env, "FC_CONFIG_FILE="+u.ConfigFile) // environment.etc's file
	cmd.Stdout, cmd.Stderr = c.Log, c.Log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	coordtest.Eventually(t, 60*time.Second, "the agent connected as nixos-builder", func() bool {
		var agents struct {
			Items []struct {
				Name      string `json:"name"`
				Connected bool   `json:"connected"`
			} `json:"items"`
		}
		c.Do("GET", "/api/v1/agents", c.Admin, nil, &agents)
		for _, a := range agents.Items {
			if a.Name == "nixos-builder" && a.Connected {
				return true
			}
		}
		return false
	})
	if _, err := os.Stat(filepath.Join(state, "agent_key")); err != nil {
		t.Errorf("the agent's key is not in its state directory: %v", err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("the agent's exit after SIGTERM: %v", waitErr)
		}
	case <-time.After(60 * time.Second):
		t.Error("the agent did not drain and exit within 60 s of SIGTERM")
	}
}
