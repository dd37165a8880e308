package multihost_test

// The real processes: PostgreSQL, SeaweedFS, fc-coordinator and fc-agent, each in its
// host's namespace, their output in a coordtest.LogBuffer a test waits on.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage/pgcluster"
)

// proc is a running process (its own process group).
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

// startProc starts cmd with its output in log, each line prefixed with name.
func startProc(t testing.TB, name string, log *coordtest.LogBuffer, cmd *exec.Cmd) *proc {
	t.Helper()
	w := &lineWriter{prefix: name + ": ", log: log}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	t.Cleanup(p.kill)
	return p
}

// kill SIGKILLs the process group and waits for the process.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and waits (SIGKILL after 30 s).
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.kill()
	}
}

// lineWriter writes whole lines to a LogBuffer, prefixed.
type lineWriter struct {
	mu     sync.Mutex
	prefix string
	log    *coordtest.LogBuffer
	part   []byte
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.part = append(w.part, b...)
	for {
		i := strings.IndexByte(string(w.part), '\n')
		if i < 0 {
			return len(b), nil
		}
		_, _ = w.log.Write([]byte(w.prefix + string(w.part[:i+1])))
		w.part = w.part[i+1:]
	}
}

// tempDir is a directory every user may enter (PostgreSQL runs as postgres), removed
// at the end.
func tempDir(t testing.TB, pattern string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = exec.Command("chmod", "-R", "u+w", dir).Run() // Nix stores are read-only
		_ = os.RemoveAll(dir)
	})
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	return dir
}

// postgres is the one database server, on the pg host's TCP port 5432 and on a Unix
// socket in its directory (the test itself connects over that).
type postgres struct {
	owner *testing.T // the cluster's test: a restarted server lives as long
	h     *host
	dir   string
	bin   string
	log   *coordtest.LogBuffer
	proc  *proc
}

func startPostgres(t *testing.T, h *host, log *coordtest.LogBuffer) *postgres {
	t.Helper()
	bin, err := pgcluster.FindBinDir()
	if err != nil {
		t.Fatal(err)
	}
	pg := &postgres{owner: t, h: h, dir: tempDir(t, "fcmh-pg-"), bin: bin, log: log}
	if err := os.Chown(pg.dir, pgUID(t), pgGID(t)); err != nil {
		t.Fatal(err)
	}
	if out, err := pg.asPostgres(exec.Command(filepath.Join(bin, "initdb"), "-D", pg.data(), "-U", "postgres",
		"--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync")).CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	hba, err := os.OpenFile(filepath.Join(pg.data(), "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(hba, "host all all %s0/24 trust\n", subnet)
	hba.Close()
	pg.start(t)
	return pg
}

func (pg *postgres) data() string { return filepath.Join(pg.dir, "data") }

// start runs the server in the foreground of its namespace (so the test holds it) and
// waits until it accepts connections.
func (pg *postgres) start(t *testing.T) {
	t.Helper()
	cmd := pg.h.command("setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--",
		filepath.Join(pg.bin, "postgres"), "-D", pg.data(), "-k", pg.dir, "-c", "listen_addresses="+pg.h.addr,
		"-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200")
	ready := []string{"postgres: ", "database system is ready to accept connections"}
	before := pg.log.Count(ready...)
	pg.proc = startProc(pg.owner, "postgres", pg.log, cmd)
	pg.log.WaitForMore(t, 60*time.Second, before, ready...)
}

// stop is pg_ctl stop (fast: open sessions are ended) on the same data directory.
func (pg *postgres) stop(t *testing.T) {
	t.Helper()
	if out, err := pg.asPostgres(exec.Command(filepath.Join(pg.bin, "pg_ctl"), "stop", "-D", pg.data(), "-m", "fast", "-w")).CombinedOutput(); err != nil {
		t.Fatalf("pg_ctl stop: %v\n%s", err, out)
	}
	<-pg.proc.done
}

// socketURL is database name over the Unix socket (from the test's own namespace).
func (pg *postgres) socketURL(name string) string {
	return fmt.Sprintf("postgres:///%s?host=%s&user=postgres&sslmode=disable", name, pg.dir)
}

// tcpURL is database name as the coordinators reach it.
func (pg *postgres) tcpURL(name string) string {
	return fmt.Sprintf("postgres://postgres@%s:5432/%s?sslmode=disable", pg.h.addr, name)
}

func (pg *postgres) asPostgres(cmd *exec.Cmd) *exec.Cmd {
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(pgUID(nil)), Gid: uint32(pgGID(nil))}}
	cmd.Dir = pg.dir
	return cmd
}

func pgUID(t testing.TB) int { return lookupID(t, "-u") }
func pgGID(t testing.TB) int { return lookupID(t, "-g") }

func lookupID(t testing.TB, flag string) int {
	out, err := exec.Command("id", flag, "postgres").Output()
	var id int
	if err == nil {
		_, err = fmt.Sscan(string(out), &id)
	}
	if err != nil && t != nil {
		t.Fatalf("the postgres user: %v (%s)", err, pgcluster.InstallHint)
	}
	return id
}

// seaweed is the S3 server (scripts/seaweedfs builds it), answering on s3Port.
type seaweed struct {
	owner  *testing.T // the cluster's test: a restarted server lives as long
	h      *host
	bin    string
	dir    string
	keyDir string
	log    *coordtest.LogBuffer
	proc   *proc
}

const (
	s3Port    = "8333"
	bucket    = "fc-multihost"
	accessKey = "fc-multihost-access"
	secretKey = "fc-multihost-secret"
)

func startSeaweed(t *testing.T, h *host, bin string, log *coordtest.LogBuffer) *seaweed {
	t.Helper()
	s := &seaweed{owner: t, h: h, bin: bin, dir: tempDir(t, "fcmh-s3-"), keyDir: tempDir(t, "fcmh-s3keys-"), log: log}
	identities := `{"identities":[{"name":"fc","credentials":[{"accessKey":"` + accessKey + `","secretKey":"` + secretKey +
		`"}],"actions":["Admin","Read","Write","List","Tagging"]}]}`
	for name, v := range map[string]string{"access_key": accessKey, "secret_key": secretKey, "s3.json": identities} {
		if err := os.WriteFile(filepath.Join(s.keyDir, name), []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s.start(t)
	return s
}

func (s *seaweed) start(t *testing.T) {
	t.Helper()
	// The namespace is the server's alone: its default ports are free.
	s.proc = startProc(s.owner, "seaweedfs", s.log, s.h.command(s.bin, "server", "-dir="+s.dir, "-ip="+s.h.addr, "-ip.bind=0.0.0.0",
		"-s3", "-s3.port="+s3Port, "-s3.config="+filepath.Join(s.keyDir, "s3.json"), "-s3.port.iceberg=0", "-s3.port.lance=0",
		"-master.volumeSizeLimitMB=64", "-volume.max=20"))
}

func (s *seaweed) endpoint() string { return s.h.addr + ":" + s3Port }

// binaries builds fc-coordinator (fc-agent: coordtest.AgentBinary) once per test binary.
var coordinatorBin = sync.OnceValues(func() (string, error) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	dir, err := os.MkdirTemp("", "fc-coordinator-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "fc-coordinator")
	cmd := exec.Command("go", "build", "-o", bin, "./coordinator/cmd/fc-coordinator")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build fc-coordinator: %w\n%s", err, out)
	}
	return bin, nil
})
