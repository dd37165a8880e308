package agentinstall_test

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// sshHost is a fresh "host": a real sshd (Debian's openssh-server) on a free port
// with a host key of its own, letting in the test's client key as root, and a
// directory that is the host's root (--root).
type sshHost struct {
	Port      int
	HostKey   ssh.PublicKey
	ClientKey string // the private key file the installer logs in with
	Root      string
	log       *lockedBuffer
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.WriteString(s + "\n")
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// writeKey writes a new ed25519 private key in OpenSSH format and returns its public key.
func writeKey(t *testing.T, path string) ssh.PublicKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startSSHD runs sshd -D until the test ends; extra lines go into its configuration.
func startSSHD(t *testing.T, extra ...string) *sshHost {
	t.Helper()
	if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
		t.Fatalf("no /usr/sbin/sshd (apt-get install openssh-server): %v", err)
	}
	// sshd refuses to start without its privilege separation directory.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	h := &sshHost{Port: freePort(t), ClientKey: filepath.Join(dir, "client_key"), Root: t.TempDir(), log: &lockedBuffer{}}
	h.HostKey = writeKey(t, filepath.Join(dir, "host_key"))
	clientPub := writeKey(t, h.ClientKey)
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), ssh.MarshalAuthorizedKey(clientPub), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s/host_key
AuthorizedKeysFile %s/authorized_keys
PidFile none
UsePAM %s
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
LogLevel VERBOSE
%s
`, h.Port, dir, dir, usePAM(), strings.Join(extra, "\n"))
	if err := os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	listening := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			h.log.add(sc.Text())
			if strings.Contains(sc.Text(), "Server listening on 127.0.0.1 port "+strconv.Itoa(h.Port)) {
				once.Do(func() { close(listening) })
			}
		}
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		// The listener and any connection still open (its own process group).
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("sshd log:\n%s", h.log)
		}
	})
	select {
	case <-listening:
	case <-exited:
		t.Fatalf("sshd exited:\n%s", h.log)
	case <-time.After(30 * time.Second):
		t.Fatalf("sshd did not listen within 30 s:\n%s", h.log)
	}
	return h
}

// usePAM is "no" unless root's password is locked ("!…" in /etc/shadow): without
// PAM, sshd refuses a locked account even a key login.
func usePAM() string {
	b, _ := os.ReadFile("/etc/shadow")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "root:!") {
			return "yes"
		}
	}
	return "no"
}

// URL is the installer's target.
func (h *sshHost) URL() string { return fmt.Sprintf("ssh://root@127.0.0.1:%d", h.Port) }

// stopAgent ends the agent the PID file under root names (the installer started it
// in a session of its own): SIGTERM, then SIGKILL to its process group.
func stopAgent(t *testing.T, root string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "var/lib/fc-agent/fc-agent.pid"))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(30 * time.Second)
	for alive(pid) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond) // not our child: nothing to wait on
	}
	if alive(pid) {
		t.Errorf("agent %d still runs 30 s after SIGTERM; killing it", pid)
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// alive says whether pid runs (a zombie does not: its parent is not this test).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "State:") {
			return !strings.Contains(l, "Z")
		}
	}
	return true
}
