// Package coordtest runs a real coordinator inside a test: a real, migrated
// PostgreSQL database, the same server assembly as fc-coordinator serve, a real
// listener on loopback, and restart on the same address.
package coordtest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/app"
	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/cache"
	"github.com/fc-ci/fc/coordinator/cluster"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/evalqueue"
	"github.com/fc-ci/fc/coordinator/fleet"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// Coordinator is a running coordinator.
type Coordinator struct {
	t     testing.TB
	Cfg   config.Config
	DB    *storage.DB
	URL   string // http://127.0.0.1:PORT
	Addr  string
	Admin string // an admin API key
	Log   *LogBuffer

	mu    sync.Mutex
	Fleet *fleet.Fleet
	Cache *cache.Cache
	Evals *evalqueue.Evals
	// Cluster is the membership ([cluster] enabled), nil otherwise.
	Cluster *cluster.Cluster
	app     *app.App
	cancel  context.CancelFunc
	done    chan error
	ln      *trackingListener
	client  *http.Client // Remote's; nil: http.DefaultClient
}

// Options tweak the configuration before start.
type Options struct {
	Config func(*config.Config)
	DB     *storage.DB // share a database with another coordinator
}

// Start runs a coordinator until the test ends.
func Start(t testing.TB, opts Options) *Coordinator {
	t.Helper()
	cfg := config.Defaults()
	cfg.Server.AgentHeartbeat = 1
	cfg.LogLevel = "debug"
	cfg.StateDir = t.TempDir()
	cfg.Queue.RetryBackoff = 0 // tests wait for rescues; backoff is tested in storage
	// Agents are not backed off after infrastructure failures unless a test asks: tests
	// that kill agents or their work would otherwise wait out a backoff.
	cfg.Queue.AgentFailureThreshold = 0
	if opts.Config != nil {
		opts.Config(&cfg)
	}
	db := opts.DB
	if db == nil {
		db = storagetest.New(t)
	}
	c := &Coordinator{t: t, Cfg: cfg, DB: db, Log: &LogBuffer{}}
	_, key, err := auth.CreateKey(context.Background(), db, "test-admin", storage.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	c.Admin = key
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.Addr = ln.Addr().String()
	c.URL = "http://" + c.Addr
	c.serve(ln)
	t.Cleanup(c.Stop)
	t.Cleanup(func() {
		if t.Failed() {
			// Without the access log: a test polling the API would fill the tail.
			var lines []string
			for _, l := range strings.Split(c.Log.String(), "\n") {
				if !strings.Contains(l, `msg="http request"`) {
					lines = append(lines, l)
				}
			}
			t.Logf("coordinator and agent log without HTTP requests, last 150 lines:\n%s", strings.Join(lines[max(len(lines)-150, 0):], "\n"))
		}
	})
	return c
}

// Remote is a coordinator this test does not run in its own process (a real
// fc-coordinator, in another network namespace): Do, and the helpers built on it,
// reach it at url through client; db is its database, for Token and the SQL
// helpers; log is where its output goes (failing helpers print it). Stop and Kill
// do nothing on it; the test stops its process.
func Remote(t testing.TB, url, admin string, db *storage.DB, log *LogBuffer, client *http.Client) *Coordinator {
	return &Coordinator{t: t, DB: db, URL: url, Addr: strings.TrimPrefix(url, "http://"), Admin: admin, Log: log, client: client}
}

func (c *Coordinator) serve(inner net.Listener) {
	ln := &trackingListener{Listener: inner, conns: map[net.Conn]struct{}{}}
	log := slog.New(slog.NewTextHandler(c.Log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, err := app.New(app.Config{Settings: c.Cfg, DB: c.DB, Logger: log, Addr: c.Addr})
	if err != nil {
		c.t.Fatalf("assemble coordinator: %v", err)
	}
	if err := a.ApplyDeclarations(context.Background(), c.Cfg.Declarations); err != nil {
		c.t.Fatalf("apply declarations: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	loopsDone := make(chan struct{})
	go func() { defer close(loopsDone); a.RunLoops(ctx) }()
	go func() {
		err := a.Server.Serve(ctx, ln, 10*time.Second)
		<-loopsDone
		done <- err
	}()
	c.mu.Lock()
	c.Fleet, c.Cache, c.Evals, c.Cluster, c.app, c.cancel, c.done, c.ln = a.Fleet, a.Cache, a.Evals, a.Cluster, a, cancel, done, ln
	c.mu.Unlock()
}

// Stop shuts the coordinator down gracefully (agents are told to go away).
func (c *Coordinator) Stop() {
	c.mu.Lock()
	cancel, done := c.cancel, c.done
	c.cancel, c.done = nil, nil
	c.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		c.t.Errorf("coordinator did not stop within 30 s")
	}
}

// Kill stops the coordinator as a crash would: its listener and every connection
// (agents' sessions, log streams, uploads) close at once, without the goodbye a
// graceful stop sends, so agents see the connection drop or refused. Then its
// goroutines are stopped; what they still write to the database on the way out is
// guarded by the coordinator's id (another coordinator an agent moved to is not
// overwritten) or is a lease's grace, which the agent's next heartbeat renews.
func (c *Coordinator) Kill() {
	c.mu.Lock()
	ln := c.ln
	c.mu.Unlock()
	if ln != nil {
		ln.kill()
	}
	c.Stop()
}

// trackingListener remembers the connections it accepted, so Kill can cut them.
type trackingListener struct {
	net.Listener
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	killed bool
}

func (l *trackingListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.killed {
		conn.Close()
		return nil, net.ErrClosed
	}
	l.conns[conn] = struct{}{}
	return &trackedConn{Conn: conn, l: l}, nil
}

func (l *trackingListener) kill() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.killed = true
	l.Listener.Close()
	for conn := range l.conns {
		conn.Close()
	}
	l.conns = map[net.Conn]struct{}{}
}

// trackedConn forgets itself when closed.
type trackedConn struct {
	net.Conn
	l *trackingListener
}

func (c *trackedConn) Close() error {
	c.l.mu.Lock()
	delete(c.l.conns, c.Conn)
	c.l.mu.Unlock()
	return c.Conn.Close()
}

// Restart stops the coordinator and starts a new one on the same address and database.
func (c *Coordinator) Restart() {
	c.t.Helper()
	c.Stop()
	var ln net.Listener
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		ln, err = net.Listen("tcp", c.Addr)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // the port may linger briefly; bounded by the deadline
	}
	if err != nil {
		c.t.Fatalf("listen again on %s: %v", c.Addr, err)
	}
	c.serve(ln)
}

// ApplyDeclarations applies d as the running coordinator does on SIGHUP (the
// signal itself is tested on the real process, in coordinator/cli).
func (c *Coordinator) ApplyDeclarations(d config.Declarations) error {
	c.mu.Lock()
	a := c.app
	c.mu.Unlock()
	return a.ApplyDeclarations(context.Background(), d)
}

// CurrentFleet is the fleet of the running server.
func (c *Coordinator) CurrentFleet() *fleet.Fleet {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Fleet
}

// Token creates an enrollment token.
func (c *Coordinator) Token(uses int, ttl time.Duration) string {
	c.t.Helper()
	_, tok, err := fleet.CreateToken(context.Background(), c.DB, "test", uses, ttl)
	if err != nil {
		c.t.Fatal(err)
	}
	return tok
}

// Do sends a request with key (may be "") and decodes a JSON answer into out (may be nil).
func (c *Coordinator) Do(method, path, key string, body any, out any) int {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, c.URL+path, rd)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	hc := http.DefaultClient
	if c.client != nil {
		hc = c.client
	}
	resp, err := hc.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: decode %q: %v", method, path, b, err)
		}
	}
	return resp.StatusCode
}

// Metric is the value of series (a name, with its labels if it has any, as
// /metrics writes them).
func (c *Coordinator) Metric(t testing.TB, series string) float64 {
	t.Helper()
	resp, err := http.Get(c.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", series, err)
			}
			return f
		}
	}
	t.Fatalf("no series %s in /metrics", series)
	return 0
}

// Eventually polls cond until it holds or the deadline passes: for states nothing
// signals (a row in the database, an HTTP answer). A log line is a signal: wait for
// it with LogBuffer.WaitFor.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for: %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// LogBuffer collects log output for assertions.
type LogBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	changed chan struct{} // made by a waiter, closed by the next write
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.changed != nil {
		close(l.changed)
		l.changed = nil
	}
	return l.b.Write(p)
}

// WaitFor waits until a line contains every part, failing the test after within.
// Every write wakes it: a test waits for the log line itself, not a polling interval.
func (l *LogBuffer) WaitFor(t testing.TB, within time.Duration, parts ...string) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		changed := l.changed
		l.mu.Unlock()
		if l.Contains(parts...) {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for a log line with %q", within, parts)
		}
	}
}

// WaitForMore waits until more than before lines contain every part (before: a
// Count taken earlier), so a line logged again after an event is awaited, not an
// older one; it fails the test after within.
func (l *LogBuffer) WaitForMore(t testing.TB, within time.Duration, before int, parts ...string) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		if l.changed == nil {
			l.changed = make(chan struct{})
		}
		changed := l.changed
		l.mu.Unlock()
		if l.Count(parts...) > before {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for a new log line with %q", within, parts)
		}
	}
}

// Count is how many lines contain every part.
func (l *LogBuffer) Count(parts ...string) int {
	n := 0
	for _, line := range strings.Split(l.String(), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			n++
		}
	}
	return n
}

// String is everything logged so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Contains reports whether a line contains every part.
func (l *LogBuffer) Contains(parts ...string) bool {
	for _, line := range strings.Split(l.String(), "\n") {
		all := true
		for _, p := range parts {
			if !strings.Contains(line, p) {
				all = false
				break
			}
		}
		if all {
			return true
		}
	}
	return false
}

// String helps error messages.
func (c *Coordinator) String() string { return fmt.Sprintf("coordinator at %s", c.URL) }
