// Package pgcluster runs a private PostgreSQL cluster from the machine's server
// binaries: initdb on first use, the server on a Unix socket inside its directory (no
// TCP port), stopped cleanly with the process that owns it. The test helper and the
// coordinator's embedded database both use it.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Config says where the cluster lives.
type Config struct {
	// Dir holds the data directory (Dir/data) and the socket. Created if missing.
	Dir string
	// BinDir holds initdb and postgres; empty means PATH, then /usr/lib/postgresql/*/bin.
	BinDir string
	// Logger receives the server's life events; nil discards them.
	Logger *slog.Logger
	// ExtraArgs are passed to postgres (e.g. "-c", "fsync=off" for tests).
	ExtraArgs []string
}

// Cluster is a running server.
type Cluster struct {
	cfg     Config
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	logFile *os.File
	shared  bool // started by another process: Stop leaves it running
}

// InstallHint says what to install when the server binaries are missing.
const InstallHint = "install the PostgreSQL server (Debian/Ubuntu: apt-get install -y postgresql; " +
	"it provides /usr/lib/postgresql/<version>/bin/initdb and postgres)"

// FindBinDir returns the directory holding initdb and postgres.
func FindBinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			if _, err := os.Stat(filepath.Join(filepath.Dir(real), "postgres")); err == nil {
				return filepath.Dir(real), nil
			}
		}
		if _, err := exec.LookPath("postgres"); err == nil {
			return filepath.Dir(p), nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	for _, m := range matches {
		dir := filepath.Dir(m)
		if _, err := os.Stat(filepath.Join(dir, "postgres")); err == nil {
			return dir, nil
		}
	}
	return "", fmt.Errorf("PostgreSQL server binaries (initdb, postgres) not found on PATH or in /usr/lib/postgresql/*/bin: %s", InstallHint)
}

func versionOf(initdbPath string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(initdbPath))))
	return v
}

// Start initialises the cluster if needed and starts the server. The server gets
// SIGTERM if this process dies, so no orphan is left behind.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.BinDir == "" {
		dir, err := FindBinDir()
		if err != nil {
			return nil, err
		}
		cfg.BinDir = dir
	}
	abs, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("cluster dir: %w", err)
	}
	cfg.Dir = abs
	if len(filepath.Join(cfg.Dir, ".s.PGSQL.5432")) > 100 {
		return nil, fmt.Errorf("cluster dir %s is too long for a Unix socket path", cfg.Dir)
	}
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cluster dir: %w", err)
	}
	if cred != nil {
		// The postgres user must reach the directory and own it.
		if err := os.Chmod(cfg.Dir, 0o755); err != nil {
			return nil, fmt.Errorf("chmod cluster dir: %w", err)
		}
		if err := os.Chown(cfg.Dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("chown cluster dir: %w", err)
		}
	}
	if cred != nil {
		if err := checkTraversable(filepath.Dir(cfg.Dir)); err != nil {
			return nil, err
		}
	}
	data := filepath.Join(cfg.Dir, "data")
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		cfg.Logger.Info("initialising private PostgreSQL cluster", "dir", data)
		cmd := exec.CommandContext(ctx, filepath.Join(cfg.BinDir, "initdb"),
			"-D", data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Dir = cfg.Dir // the caller's working directory may be closed to the postgres user
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("initdb %s: %w: %s", data, err, strings.TrimSpace(string(out)))
		}
	}
	// A server that died with its owner may have left its pid file behind; a live one
	// (another fc-coordinator command using the same state directory) is shared.
	if pid := livePid(data); pid > 0 {
		c := &Cluster{cfg: cfg, done: make(chan struct{}), shared: true}
		if err := c.waitReady(ctx, 30*time.Second); err != nil {
			return nil, fmt.Errorf("PostgreSQL (pid %d) already runs on %s but does not answer: %w", pid, data, err)
		}
		return c, nil
	}
	_ = os.Remove(filepath.Join(data, "postmaster.pid"))

	logPath := filepath.Join(cfg.Dir, "postgres.log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open server log: %w", err)
	}
	args := append([]string{"-D", data, "-k", cfg.Dir, "-c", "listen_addresses=", "-c", "unix_socket_permissions=0770"}, cfg.ExtraArgs...)
	cmd := exec.Command(filepath.Join(cfg.BinDir, "postgres"), args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Dir = cfg.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGTERM, Setpgid: true}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	c := &Cluster{cfg: cfg, cmd: cmd, done: make(chan struct{}), logFile: lf}
	go func() {
		c.waitErr = cmd.Wait()
		close(c.done)
	}()
	if err := c.waitReady(ctx, 60*time.Second); err != nil {
		_ = c.Stop()
		tail, _ := os.ReadFile(logPath)
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return nil, fmt.Errorf("postgres did not become ready: %w\n%s", err, tail)
	}
	cfg.Logger.Info("private PostgreSQL running", "socket_dir", cfg.Dir, "pid", cmd.Process.Pid)
	return c, nil
}

// checkTraversable makes sure the postgres user can reach the cluster directory:
// every ancestor must be searchable by others (mode o+x).
func checkTraversable(dir string) error {
	for d := dir; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return fmt.Errorf("cluster dir parent %s: %w", d, err)
		}
		if st.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("the postgres user cannot reach the cluster: %s has mode %v; run chmod o+x %s or choose another state_dir", d, st.Mode().Perm(), d)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// livePid is the pid of a server running on data, or 0.
func livePid(data string) int {
	b, err := os.ReadFile(filepath.Join(data, "postmaster.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil || pid <= 0 || syscall.Kill(pid, 0) != nil {
		return 0
	}
	return pid
}

// serverCredential is the postgres user when running as root (initdb refuses root).
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, PostgreSQL must run as the postgres user, which does not exist: %s", InstallHint)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func (c *Cluster) waitReady(ctx context.Context, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, c.URL("postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case <-c.done:
			return fmt.Errorf("server exited: %v", c.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// EnsureDatabase creates database name if it does not exist.
func (c *Cluster) EnsureDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		return fmt.Errorf("connect to private PostgreSQL: %w", err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// URL is a connection string for database name over the cluster's socket.
func (c *Cluster) URL(database string) string {
	q := url.Values{"host": {c.cfg.Dir}, "user": {"postgres"}, "sslmode": {"disable"}}
	return "postgres:///" + url.PathEscape(database) + "?" + q.Encode()
}

// Dir is the cluster's directory.
func (c *Cluster) Dir() string { return c.cfg.Dir }

// Done is closed once the server this process started has exited.
func (c *Cluster) Done() <-chan struct{} { return c.done }

// Stop shuts the server down (fast shutdown: SIGINT) and waits for it. A server that
// another process started is left running.
func (c *Cluster) Stop() error {
	if c.shared {
		return nil
	}
	select {
	case <-c.done:
	default:
		_ = c.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-c.done:
		case <-time.After(30 * time.Second):
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	}
	c.logFile.Close()
	return nil
}
