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
	data := filepath.Join(cfg.Dir, "data")
	if _, err := os.Stat(filepath.Join(data, "PG_VERSION")); errors.Is(err, os.ErrNotExist) {
		cfg.Logger.Info("initialising private PostgreSQL cluster", "dir", data)
		cmd := exec.CommandContext(ctx, filepath.Join(cfg.BinDir, "initdb"),
			"-D", data, "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("initdb %s: %w: %s", data, err, strings.TrimSpace(string(out)))
		}
	}
	// A server that died with this process may have left its pid file behind.
	removeStalePid(data)

	logPath := filepath.Join(cfg.Dir, "postgres.log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open server log: %w", err)
	}
	args := append([]string{"-D", data, "-k", cfg.Dir, "-c", "listen_addresses=", "-c", "unix_socket_permissions=0770"}, cfg.ExtraArgs...)
	cmd := exec.Command(filepath.Join(cfg.BinDir, "postgres"), args...)
	cmd.Stdout, cmd.Stderr = lf, lf
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

func removeStalePid(data string) {
	b, err := os.ReadFile(filepath.Join(data, "postmaster.pid"))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil || pid <= 0 {
		return
	}
	if syscall.Kill(pid, 0) == nil {
		return // still alive: postgres itself will refuse to start, with a clear message
	}
	_ = os.Remove(filepath.Join(data, "postmaster.pid"))
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

// URL is a connection string for database name over the cluster's socket.
func (c *Cluster) URL(database string) string {
	q := url.Values{"host": {c.cfg.Dir}, "user": {"postgres"}, "sslmode": {"disable"}}
	return "postgres:///" + url.PathEscape(database) + "?" + q.Encode()
}

// Dir is the cluster's directory.
func (c *Cluster) Dir() string { return c.cfg.Dir }

// Pid is the server's process id.
func (c *Cluster) Pid() int { return c.cmd.Process.Pid }

// Done is closed once the server has exited.
func (c *Cluster) Done() <-chan struct{} { return c.done }

// Stop shuts the server down (fast shutdown: SIGINT) and waits for it.
func (c *Cluster) Stop() error {
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
