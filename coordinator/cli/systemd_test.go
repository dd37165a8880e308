package cli_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage/storagetest"
)

// notifySocket is systemd's side of sd_notify: a unixgram socket that collects what
// a daemon sends.
type notifySocket struct {
	path    string
	mu      sync.Mutex
	msgs    []string
	arrived chan struct{} // signalled on each message
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	dir, err := os.MkdirTemp("", "fc-sd-") // short: a socket path has at most 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s := &notifySocket{path: filepath.Join(dir, "notify"), arrived: make(chan struct{}, 1)}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: s.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.msgs = append(s.msgs, string(buf[:n]))
			s.mu.Unlock()
			select {
			case s.arrived <- struct{}{}:
			default:
			}
		}
	}()
	return s
}

// waitFor waits for the first message from index from on that has every line of
// want, and returns it and its index.
func (s *notifySocket) waitFor(t *testing.T, from int, within time.Duration, want ...string) (string, int) {
	t.Helper()
	deadline := time.After(within)
	for {
		s.mu.Lock()
		for i := from; i < len(s.msgs); i++ {
			lines := strings.Split(s.msgs[i], "\n")
			ok := true
			for _, w := range want {
				ok = ok && (strings.HasSuffix(w, "=") && hasPrefixLine(lines, w) || contains(lines, w))
			}
			if ok {
				m := s.msgs[i]
				s.mu.Unlock()
				return m, i
			}
		}
		all := strings.Join(s.msgs, " | ")
		s.mu.Unlock()
		select {
		case <-s.arrived:
		case <-deadline:
			t.Fatalf("no notification with %q within %v; got: %s", want, within, all)
		}
	}
}

// count is how many messages arrived so far.
func (s *notifySocket) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

// at is the message at index i.
func (s *notifySocket) at(i int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.msgs[i]
}

func contains(lines []string, w string) bool {
	for _, l := range lines {
		if l == w {
			return true
		}
	}
	return false
}

// hasPrefixLine matches "KEY=" against any value of KEY.
func hasPrefixLine(lines []string, prefix string) bool {
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			return true
		}
	}
	return false
}

// statusOf is the STATUS= value of a notification.
func statusOf(msg string) string {
	for _, l := range strings.Split(msg, "\n") {
		if v, ok := strings.CutPrefix(l, "STATUS="); ok {
			return v
		}
	}
	return ""
}

// buildBinary builds one of the daemons into a temporary directory.
func buildBinary(t *testing.T, pkg string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(pkg))
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = filepath.Join("..", "..")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// daemonProc is a daemon started as systemd would: NOTIFY_SOCKET, and a watchdog of
// watchdogUsec whose WATCHDOG_PID is the daemon's own (the shell execs it).
type daemonProc struct {
	cmd    *exec.Cmd
	log    *coordtest.LogBuffer
	exited chan struct{}
}

func startNotified(t *testing.T, sock *notifySocket, watchdogUsec string, env []string, bin string, args ...string) *daemonProc {
	t.Helper()
	cmd := exec.Command("sh", append([]string{"-c", `export WATCHDOG_PID=$$; exec "$@"`, "sh", bin}, args...)...)
	cmd.Env = append(append(os.Environ(), "NOTIFY_SOCKET="+sock.path, "WATCHDOG_USEC="+watchdogUsec), env...)
	cmd.Dir = t.TempDir() // no configuration file but the test's
	p := &daemonProc{cmd: cmd, log: &coordtest.LogBuffer{}, exited: make(chan struct{})}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			_, _ = p.log.Write([]byte(sc.Text() + "\n"))
		}
	}()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); pw.Close(); close(p.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("%s output:\n%s", filepath.Base(bin), p.log)
		}
	})
	return p
}

// terminate sends SIGTERM and expects STOPPING=1 and a clean exit.
func (p *daemonProc) terminate(t *testing.T, sock *notifySocket, from int) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	msg, _ := sock.waitFor(t, from, 30*time.Second, "STOPPING=1")
	if statusOf(msg) == "" {
		t.Errorf("STOPPING=1 without a STATUS= line: %q", msg)
	}
	select {
	case <-p.exited:
	case <-time.After(60 * time.Second):
		t.Fatal("did not exit within 60 s of SIGTERM")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// watchdogPings waits for n WATCHDOG=1 pings from index from on.
func watchdogPings(t *testing.T, sock *notifySocket, from, n int) int {
	t.Helper()
	for range n {
		_, i := sock.waitFor(t, from, 10*time.Second, "WATCHDOG=1")
		from = i + 1
	}
	return from
}

func TestSystemd_CoordinatorIsReadyWhenServingPingsAndSaysStopping(t *testing.T) {
	t.Parallel()
	bin := buildBinary(t, "./coordinator/cmd/fc-coordinator")
	sock := listenNotify(t)
	p := startNotified(t, sock, "400000", []string{"FC_DATABASE__URL=" + storagetest.URL(t), "FC_STATE_DIR=" + t.TempDir(),
		"FC_SERVER__PORT=0"}, bin, "serve")

	starting, _ := sock.waitFor(t, 0, 90*time.Second, "STATUS=")
	ready, readyAt := sock.waitFor(t, 0, 90*time.Second, "READY=1")
	if strings.Contains(starting, "READY=1") || !strings.Contains(statusOf(starting), "database") {
		t.Errorf("first notification %q, want a status saying it opens the database before READY=1", starting)
	}
	addr := regexp.MustCompile(`serving on (\S+)`).FindStringSubmatch(statusOf(ready))
	if addr == nil {
		t.Fatalf("READY=1 without the address it serves on: %q", ready)
	}
	// Ready means serving: the API answers at once, no retry.
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + addr[1] + "/health")
	if err != nil {
		t.Fatalf("API right after READY=1: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET /health right after READY=1: %d", resp.StatusCode)
	}
	next := watchdogPings(t, sock, readyAt+1, 3)
	p.log.WaitFor(t, 5*time.Second, "pinging the systemd watchdog", "every=200ms")
	p.terminate(t, sock, next)
}

func TestSystemd_AgentIsReadyWhenConnectedReloadsLogLevelOnSIGHUP(t *testing.T) {
	t.Parallel()
	bin := buildBinary(t, "./agent/cmd/fc-agent")
	c := coordtest.Start(t, coordtest.Options{})
	sock := listenNotify(t)
	conf := filepath.Join(t.TempDir(), "agent.toml")
	writeConf := func(body string) {
		t.Helper()
		if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeConf("log_level = \"info\"\n")
	p := startNotified(t, sock, "300000", []string{"FC_COORDINATOR__URL=" + c.URL,
		"FC_COORDINATOR__ENROLLMENT_TOKEN=" + c.Token(1, time.Hour), "FC_AGENT__NAME=sd-agent",
		"FC_AGENT__STATE_DIR=" + t.TempDir(), "FC_AGENT__ROLES=build"}, bin, "--config", conf, "run")

	ready, readyAt := sock.waitFor(t, 0, 60*time.Second, "READY=1")
	// Ready means connected: the coordinator has it as connected already.
	var connected bool
	if err := c.DB.Pool().QueryRow(context.Background(), `SELECT connected FROM agents WHERE name = 'sd-agent'`).Scan(&connected); err != nil || !connected {
		t.Fatalf("agent connected when READY=1 came: %v %v", connected, err)
	}
	if s := statusOf(ready); !strings.Contains(s, "connected to "+c.URL) || !strings.Contains(s, `"sd-agent"`) {
		t.Errorf("READY=1 status %q does not say where it is connected", s)
	}
	watchdogPings(t, sock, readyAt+1, 3)

	// At info, the cache credentials written on connecting (a debug line) were not logged.
	p.log.WaitFor(t, 10*time.Second, "connected to coordinator")
	if p.log.Contains("level=DEBUG") {
		t.Fatalf("debug lines at log_level info:\n%s", p.log)
	}
	writeConf("log_level = \"debug\"\n")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.log.WaitFor(t, 10*time.Second, "SIGHUP: reloaded the configuration", `applied="[log_level INFO -> DEBUG]"`)
	if !p.log.Contains("level=DEBUG", "SIGHUP: debug logging is on") {
		t.Errorf("no debug line after the reload to debug:\n%s", p.log)
	}

	// Back to info, min_free_disk applied, and a setting that needs a restart: said.
	writeConf("log_level = \"info\"\n[agent]\nmax_jobs = 3\nmin_free_disk = 12345\n")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.log.WaitFor(t, 10*time.Second, "level=WARN", "SIGHUP: reloaded the configuration", "log_level DEBUG -> INFO",
		"agent.min_free_disk ", "-> 12345]", "need_restart=[agent.max_jobs]")
	if n := strings.Count(p.log.String(), "SIGHUP: debug logging is on"); n != 1 {
		t.Errorf("%d debug lines of reloads, want only the first reload's (the second set info)", n)
	}

	// A lost session shows in the status, and so does the next; READY=1 came once.
	mark := sock.count()
	c.Restart()
	_, lost := sock.waitFor(t, mark, 30*time.Second, "STATUS=")
	if s := statusOf(sock.at(lost)); !strings.HasPrefix(s, "reconnecting to "+c.URL) {
		t.Errorf("status after the coordinator went away: %q", s)
	}
	again, at := sock.waitFor(t, lost+1, 60*time.Second, "STATUS=")
	if s := statusOf(again); !strings.HasPrefix(s, "connected to "+c.URL) || strings.Contains(again, "READY=1") {
		t.Errorf("notification after reconnecting: %q, want a connected status without READY=1", again)
	}
	p.terminate(t, sock, at+1)
}
