// A `nix-daemon --stdio` process: the worker protocol on its stdin and stdout, in a
// process group of its own so that stopping it reaches everything it started.

package nixworker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultCommand serves the worker protocol on stdin/stdout: as root on a single-
// user store it opens the store itself (a trusted connection); under a multi-user
// install it forwards to the system daemon.
var DefaultCommand = []string{"nix-daemon", "--stdio"}

// Process is a running daemon with its open connection.
type Process struct {
	Conn *Conn
	// Key is free for the user: what the connection was configured with.
	Key string

	cmd      *exec.Cmd
	stdin    io.WriteCloser
	stdout   *os.File
	cacheDir string
	stderr   *capped
	exited   chan struct{}
	waitErr  error
	stopOnce sync.Once
}

// capped keeps the first bytes of the daemon's own stderr (errors before the
// handshake, e.g. a store it cannot open).
type capped struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (c *capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := 4096 - c.b.Len(); room > 0 {
		c.b.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (c *capped) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.TrimSpace(c.b.String())
}

// Start starts command (DefaultCommand if empty) with XDG_CACHE_HOME in a fresh
// directory under cacheParent (os.TempDir() if empty; Nix's cache of binary cache
// lookups is a SQLite database that concurrent fresh users fail on) and performs the
// handshake. ctx bounds the start only.
func Start(ctx context.Context, command []string, cacheParent string) (*Process, error) {
	if len(command) == 0 {
		command = DefaultCommand
	}
	if cacheParent != "" {
		if err := os.MkdirAll(cacheParent, 0o700); err != nil {
			return nil, fmt.Errorf("create the daemons' cache directory: %w", err)
		}
	}
	cacheDir, err := os.MkdirTemp(cacheParent, "fc-nix-daemon-")
	if err != nil {
		return nil, fmt.Errorf("create the daemon's cache directory: %w", err)
	}
	p := &Process{cacheDir: cacheDir, stderr: &capped{}, exited: make(chan struct{})}
	p.cmd = exec.Command(command[0], command[1:]...)
	p.cmd.Env = append(os.Environ(), "XDG_CACHE_HOME="+cacheDir)
	// As for nix-store: its own group, and SIGINT (Nix stops its builders) if the
	// agent dies, even by SIGKILL.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGINT}
	// Pipes of our own for stdout and stderr, so exec's Wait never waits on a copy
	// goroutine that a grandchild holding the pipe keeps open.
	er, ew, err := os.Pipe()
	if err != nil {
		_ = os.RemoveAll(cacheDir)
		return nil, err
	}
	defer ew.Close()
	go func() { _, _ = io.Copy(p.stderr, er); er.Close() }()
	p.cmd.Stderr = ew
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		_ = os.RemoveAll(cacheDir)
		return nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		_ = os.RemoveAll(cacheDir)
		return nil, err
	}
	growPipe(pr)
	p.cmd.Stdout = pw
	if err := p.cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		_ = os.RemoveAll(cacheDir)
		return nil, fmt.Errorf("start %s: %w", strings.Join(command, " "), err)
	}
	pw.Close()
	p.stdout = pr
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	dialed := make(chan error, 1)
	go func() {
		c, err := Dial(struct {
			io.Reader
			io.Writer
		}{pr, p.stdin})
		p.Conn = c
		dialed <- err
	}()
	select {
	case err = <-dialed:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		p.Stop(0)
		if msg := p.stderr.String(); msg != "" {
			err = fmt.Errorf("%w: %s", err, msg)
		}
		return nil, fmt.Errorf("%s: %w", strings.Join(command, " "), err)
	}
	return p, nil
}

// Pid is the daemon's process id (and its process group's).
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Exited is closed once the daemon has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Stderr is the start of what the daemon wrote to its own stderr.
func (p *Process) Stderr() string { return p.stderr.String() }

// Stop ends the daemon and every build it runs: end of input and SIGINT (Nix kills
// its builders, which run in sessions of their own), SIGKILL to the whole group if
// it has not exited within grace. It returns once the daemon has exited.
func (p *Process) Stop(grace time.Duration) {
	p.stopOnce.Do(func() {
		_ = p.stdin.Close()
		pid := p.cmd.Process.Pid
		_ = syscall.Kill(-pid, syscall.SIGINT)
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-p.exited:
		case <-t.C:
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			<-p.exited
		}
		_ = p.stdout.Close()
		_ = os.RemoveAll(p.cacheDir)
	})
	<-p.exited
}

// ExitError says how the daemon ended, once it has (nil while it runs).
func (p *Process) ExitError() error {
	select {
	case <-p.exited:
		if p.waitErr == nil {
			return errors.New("nix-daemon exited")
		}
		return fmt.Errorf("nix-daemon: %w", p.waitErr)
	default:
		return nil
	}
}

// daemonPipe is the capacity asked for the pipe the daemon writes to (Linux allows up
// to /proc/sys/fs/pipe-max-size, 1 MiB by default, without privileges). A chatty
// build's log comes through it: with the default 64 KiB the daemon, and the builder
// behind it, wait whenever the agent is not scheduled for a few milliseconds.
const daemonPipe = 1 << 20

// growPipe asks for a larger pipe; where it cannot have one, the default serves.
func growPipe(f *os.File) {
	if sc, err := f.SyscallConn(); err == nil {
		_ = sc.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, daemonPipe) })
	}
}
