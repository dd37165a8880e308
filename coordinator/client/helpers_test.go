package client_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/client"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

// result is what one fc command did.
type result struct {
	Code           int
	Stdout, Stderr string
}

// fcEnv runs fc commands with its own environment (FC_URL, FC_API_KEY,
// XDG_CONFIG_HOME, HOME): nothing of the test process's leaks in.
type fcEnv struct {
	t   *testing.T
	env map[string]string
}

func newEnv(t *testing.T, env map[string]string) fcEnv {
	t.Helper()
	e := fcEnv{t: t, env: map[string]string{"HOME": t.TempDir()}}
	for k, v := range env {
		e.env[k] = v
	}
	return e
}

func (e fcEnv) with(k, v string) fcEnv {
	m := map[string]string{}
	for k, v := range e.env {
		m[k] = v
	}
	m[k] = v
	return fcEnv{t: e.t, env: m}
}

func (e fcEnv) run(args ...string) result { return e.runIn("", args...) }

func (e fcEnv) runIn(stdin string, args ...string) result {
	e.t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	code := client.Main(ctx, client.Env{Args: args, Getenv: func(k string) string { return e.env[k] },
		Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb})
	return result{Code: code, Stdout: out.String(), Stderr: errb.String()}
}

// start runs a command in the background until ctx ends; its stderr tells of every write.
func (e fcEnv) start(ctx context.Context, args ...string) (*lines, <-chan result) {
	stdout, stderr := newLines(), newLines()
	done := make(chan result, 1)
	go func() {
		code := client.Main(ctx, client.Env{Args: args, Getenv: func(k string) string { return e.env[k] },
			Stdin: strings.NewReader(""), Stdout: stdout, Stderr: stderr})
		done <- result{Code: code, Stdout: stdout.String(), Stderr: stderr.String()}
	}()
	return stderr, done
}

// waitFor waits until l holds want.
func (l *lines) waitFor(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(time.Minute)
	for !strings.Contains(l.String(), want) {
		select {
		case <-l.changed:
		case <-deadline:
			t.Fatalf("timed out waiting for %q in %q", want, l.String())
		}
	}
}

// ok runs a command that must succeed and returns its output.
func (e fcEnv) ok(args ...string) string {
	e.t.Helper()
	r := e.run(args...)
	if r.Code != 0 {
		e.t.Fatalf("fc %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	}
	if r.Stderr != "" {
		e.t.Errorf("fc %s wrote to stderr: %s", strings.Join(args, " "), r.Stderr)
	}
	return r.Stdout
}

// fails runs a command that must end with code and say want on stderr.
func (e fcEnv) fails(code int, want string, args ...string) result {
	e.t.Helper()
	r := e.run(args...)
	if r.Code != code || !strings.Contains(r.Stderr, want) {
		e.t.Errorf("fc %s: exit %d, stderr %q; want exit %d saying %q", strings.Join(args, " "), r.Code, r.Stderr, code, want)
	}
	return r
}

// okJSON runs a command with --json and decodes its output.
func (e fcEnv) okJSON(out any, args ...string) {
	e.t.Helper()
	s := e.ok(append(args, "--json")...)
	if err := json.Unmarshal([]byte(s), out); err != nil {
		e.t.Fatalf("fc %s --json: %v\n%s", strings.Join(args, " "), err, s)
	}
}

// table splits a table into rows of cells (runs of two or more spaces separate them).
func table(t *testing.T, s string) [][]string {
	t.Helper()
	var rows [][]string
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		var cells []string
		for _, c := range strings.Split(line, "  ") {
			if c = strings.TrimSpace(c); c != "" {
				cells = append(cells, c)
			}
		}
		rows = append(rows, cells)
	}
	return rows
}

// aligned checks that every row of a table starts its columns where the header does.
func aligned(t *testing.T, s string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	header := lines[0]
	var starts []int // where the header's columns begin: after two spaces
	for i := 2; i < len(header); i++ {
		if header[i] != ' ' && header[i-1] == ' ' && header[i-2] == ' ' {
			starts = append(starts, i)
		}
	}
	if len(lines) < 2 || len(starts) == 0 {
		t.Errorf("not a table with rows: %q", s)
	}
	for _, l := range lines[1:] {
		for _, st := range starts {
			if len(l) <= st || l[st-1] != ' ' || l[st] == ' ' {
				t.Errorf("row %q does not start a column at %d, as the header %q does", l, st, header)
				break
			}
		}
	}
}

// show reads "key: value" lines up to the first blank line.
func show(s string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if line == "" {
			break
		}
		k, v, _ := strings.Cut(line, ":")
		m[k] = strings.TrimSpace(v)
	}
	return m
}

// lines is a writer that tells its reader of every write.
type lines struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{}
}

func newLines() *lines { return &lines{changed: make(chan struct{}, 1)} }

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case l.changed <- struct{}{}:
	default:
	}
	return l.b.Write(p)
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// proxy forwards TCP connections to a coordinator and can drop them all, as a
// network that fails does.
type proxy struct {
	ln       net.Listener
	target   string
	mu       sync.Mutex
	conns    []net.Conn
	accepted int
	requests []string // the first line of each connection's request
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.drop() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.accepted++
			p.mu.Unlock()
			go func() {
				br := bufio.NewReader(c)
				line, err := br.ReadString('\n')
				p.mu.Lock()
				p.requests = append(p.requests, strings.TrimSpace(line))
				p.mu.Unlock()
				if err == nil {
					if _, err := io.WriteString(up, line); err == nil {
						_, _ = io.Copy(up, br)
					}
				}
				up.Close()
			}()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
	return p
}

func (p *proxy) URL() string { return "http://" + p.ln.Addr().String() }

// drop closes every connection through the proxy.
func (p *proxy) drop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) requestLines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.requests...)
}

func (p *proxy) connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}
