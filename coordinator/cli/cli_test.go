package cli_test

import (
	"bufio"
	"bytes"
	"io"
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

	"github.com/fc-ci/fc/coordinator/cli"
	"github.com/fc-ci/fc/storage/storagetest"
)

// The test binary doubles as fc-coordinator when FC_TEST_AS_COORDINATOR is set, so the
// tests drive a real process (signals, exit codes) built with the race detector.
func TestMain(m *testing.M) {
	if os.Getenv("FC_TEST_AS_COORDINATOR") == "1" {
		os.Exit(cli.Run())
	}
	storagetest.Main(m)
}

// lockedBuffer collects a process's stderr while a test may read it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) WriteString(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.WriteString(s)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type proc struct {
	cmd    *exec.Cmd
	stderr *lockedBuffer
	addr   string
	exited chan struct{}
}

func coordinatorCmd(t *testing.T, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), "FC_TEST_AS_COORDINATOR=1"), env...)
	cmd.Dir = t.TempDir() // no ./coordinator.toml
	return cmd
}

var listenRE = regexp.MustCompile(`msg="coordinator listening" addr=(\S+)`)

// startServe runs "fc-coordinator serve" on a free port and waits until it listens.
func startServe(t *testing.T, env []string) *proc {
	t.Helper()
	cmd := coordinatorCmd(t, append(env, "FC_SERVER__PORT=0"), "serve")
	pr, pw := io.Pipe()
	p := &proc{cmd: cmd, stderr: &lockedBuffer{}, exited: make(chan struct{})}
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); pw.Close(); close(p.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
	})
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			p.stderr.WriteString(line + "\n")
			if m := listenRE.FindStringSubmatch(line); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
	}()
	select {
	case p.addr = <-found:
	case <-p.exited:
		t.Fatalf("coordinator exited before listening:\n%s", p.stderr)
	case <-time.After(90 * time.Second):
		t.Fatalf("coordinator did not listen within 90 s:\n%s", p.stderr)
	}
	return p
}

func (p *proc) stop(t *testing.T, sig syscall.Signal) int {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("coordinator did not stop within 60 s of %v", sig)
	}
	return p.cmd.ProcessState.ExitCode()
}

func postgresRunningIn(dir string) bool {
	out, _ := exec.Command("ps", "-eo", "args").Output()
	return strings.Contains(string(out), "postgres -D "+dir)
}

func TestServe_EmbeddedDatabaseSurvivesRestartAndStopsWithSignals(t *testing.T) {
	t.Parallel()
	state, err := os.MkdirTemp("", "fc-cli-") // short: the socket path must fit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	if err := os.Chmod(state, 0o755); err != nil { // the postgres user must reach state/postgres
		t.Fatal(err)
	}
	env := []string{"FC_STATE_DIR=" + state, "FC_DATABASE__URL="}

	p := startServe(t, env)
	health, err := http.Get("http://" + p.addr + "/health")
	if err != nil || health.StatusCode != 200 {
		t.Fatalf("health: %v %v", health, err)
	}

	// admin create-key shares the running coordinator's private PostgreSQL and
	// prints the key alone on stdout.
	out, err := coordinatorCmd(t, env, "admin", "create-key", "--name", "ops", "--role", "admin").Output()
	if err != nil {
		t.Fatalf("create-key: %v", err)
	}
	key := strings.TrimSpace(string(out))
	if !regexp.MustCompile(`^fc_[0-9a-f]{32}$`).MatchString(key) {
		t.Fatalf("create-key printed %q, want the key alone", out)
	}
	out, err = coordinatorCmd(t, env, "admin", "create-agent-token", "--name", "rack1", "--uses", "2").Output()
	if err != nil || !regexp.MustCompile(`^fcagent_[0-9a-f]{40}\n$`).Match(out) {
		t.Fatalf("create-agent-token printed %q (%v), want the token alone", out, err)
	}
	req, _ := http.NewRequest("POST", "http://"+p.addr+"/api/v1/projects",
		strings.NewReader(`{"name":"kept","repository_url":"https://example.org/r.git"}`))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("create project with the printed key: %v %v", resp, err)
	}

	if code := p.stop(t, syscall.SIGINT); code != 0 {
		t.Fatalf("exit code %d after SIGINT, want 0:\n%s", code, p.stderr)
	}
	if postgresRunningIn(filepath.Join(state, "postgres")) {
		t.Fatal("private PostgreSQL still running after the coordinator stopped")
	}

	// Started again on the same state: the same data, then SIGTERM stops it too.
	p = startServe(t, env)
	resp, err = http.Get("http://" + p.addr + "/api/v1/projects/kept")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("project lost across restart: %v %v\n%s", resp, err, p.stderr)
	}
	if code := p.stop(t, syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0:\n%s", code, p.stderr)
	}
	if postgresRunningIn(filepath.Join(state, "postgres")) {
		t.Fatal("private PostgreSQL still running after SIGTERM")
	}
}

func TestMigrate_UpAndStatusOnAConfiguredDatabase(t *testing.T) {
	t.Parallel()
	url := storagetest.EmptyURL(t)
	env := []string{"FC_DATABASE__URL=" + url}
	out, err := coordinatorCmd(t, env, "migrate", "status").Output()
	if err != nil || !strings.Contains(string(out), "pending") {
		t.Fatalf("status before up: %v\n%s", err, out)
	}
	out, err = coordinatorCmd(t, env, "migrate", "up").Output()
	if err != nil || !strings.Contains(string(out), "applied migration 1") {
		t.Fatalf("up: %v\n%s", err, out)
	}
	out, err = coordinatorCmd(t, env, "migrate", "up").Output()
	if err != nil || !strings.Contains(string(out), "up to date") {
		t.Fatalf("second up: %v\n%s", err, out)
	}
	out, err = coordinatorCmd(t, env, "migrate", "status").Output()
	if err != nil || strings.Contains(string(out), "pending") || !strings.Contains(string(out), "00001_initial.sql") {
		t.Fatalf("status after up: %v\n%s", err, out)
	}
}

func TestMigrate_CreateWritesTheNextNumberedFile(t *testing.T) {
	t.Parallel()
	cmd := coordinatorCmd(t, nil, "migrate", "create", "add_widgets")
	if err := os.MkdirAll(filepath.Join(cmd.Dir, "migrations"), 0o755); err != nil {
		t.Fatal(err)
	}
	first := filepath.Join(cmd.Dir, "migrations", "00001_initial.sql")
	if err := os.WriteFile(first, []byte("-- +goose Up\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(cmd.Dir, "migrations", "00002_add_widgets.sql")); err != nil {
		entries, _ := os.ReadDir(filepath.Join(cmd.Dir, "migrations"))
		t.Fatalf("00002_add_widgets.sql not written: %v (have %v)", err, entries)
	}
}

func TestErrors_BadConfigAndUsage(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		env  []string
		code int
		want string
	}{
		{[]string{"frobnicate"}, nil, cli.ExitUsage, `unknown command "frobnicate"`},
		{[]string{"admin", "create-key", "--name", "x", "--role", "root"}, nil, cli.ExitUsage, "--role"},
		{[]string{"admin", "create-agent-token", "--name", "<script>"}, nil, cli.ExitUsage, `--name "<script>"`},
		{[]string{"serve"}, []string{"FC_SERVER__PORT=eighty"}, cli.ExitError, "FC_SERVER__PORT"},
		{[]string{"--config", "/nonexistent/fc.toml", "serve"}, nil, cli.ExitError, "/nonexistent/fc.toml"},
		{[]string{"config"}, nil, cli.ExitUsage, "config needs a command: check"},
		{[]string{"config", "check"}, []string{"FC_SERVER__PORT=70000"}, cli.ExitError, "configuration refused: server.port 70000"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			t.Parallel()
			cmd := coordinatorCmd(t, c.env, c.args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
			if code != c.code || !strings.Contains(stderr.String(), c.want) {
				t.Errorf("exit %d, stderr %q; want exit %d mentioning %q", code, stderr.String(), c.code, c.want)
			}
		})
	}
}

// config check loads what serve would and says what it means; an unknown key is refused
// naming its file and line; nothing is started (no database).
func TestConfigCheck_SaysWhatTheFileMeansOrWhyNot(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(good, []byte("state_dir = \"/srv/fc\"\n[server]\nhost = \"::\"\nport = 8080\n[logs]\nlog_dir = \"/var/log/fc\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("[server]\nhost = \"::\"\nprot = 8080\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := coordinatorCmd(t, nil, "--config", good, "config", "check").CombinedOutput()
	want := "configuration OK: listening on [::]:8080, state in /srv/fc, cache in /srv/fc/cache, logs in /var/log/fc, database: a private PostgreSQL in /srv/fc/postgres\n"
	if err != nil || string(out) != want {
		t.Errorf("config check of a good file: %v\n%s\nwant %s", err, out, want)
	}
	declares := filepath.Join(dir, "declares.toml")
	if err := os.WriteFile(declares, []byte("[[projects]]\nname = \"p\"\nrepository_url = \"https://example.org/p\"\n"+
		"[[projects.jobsets]]\nname = \"main\"\nnix_expression = \"release.nix\"\n"+
		"[[users]]\nusername = \"alice\"\nrole = \"admin\"\npassword_file = \"/run/secrets/alice\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = coordinatorCmd(t, nil, "--config", declares, "config", "check").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "declares 1 projects (1 jobsets), 0 API keys, 0 agents, 1 users (in "+declares+")") {
		t.Errorf("config check of a file with declarations: %v\n%s", err, out)
	}
	// A member of a cluster keeping NARs or logs on its own disk is told what that means.
	clustered := filepath.Join(dir, "cluster.toml")
	if err := os.WriteFile(clustered, []byte("[cluster]\nenabled = true\nkey_file = \"/etc/fc/cluster.key\"\n"+
		"[logs]\nstore = \"s3\"\n[s3]\nendpoint = \"127.0.0.1:8333\"\nbucket = \"fc\"\naccess_key_file = \"/etc/fc/s3-access\"\nsecret_key_file = \"/etc/fc/s3-secret\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = coordinatorCmd(t, nil, "--config", clustered, "config", "check").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `note: cache.store is "dir": the NARs in `) || strings.Contains(string(out), "logs.store") {
		t.Errorf("config check of a cluster member with NARs on its own disk: %v\n%s", err, out)
	}
	out, err = coordinatorCmd(t, []string{"FC_CONFIG_FILE=" + bad}, "config", "check").CombinedOutput()
	if err == nil || !strings.Contains(string(out), bad+" line 3") || !strings.Contains(string(out), `"server.prot"`) {
		t.Errorf("config check of a file with an unknown key: %v\n%s", err, out)
	}
}
