package fleet_test

// Benchmarks for issue #3: round trips over an agent's session (a command the
// coordinator pushes, a heartbeat the agent sends), and 200 agents connecting to one
// coordinator (time to connect them all, and the coordinator's resident memory).
// Every figure is printed beside a baseline measured in the same run. Run them with
// scripts/bench, or:
//
//	go test -run '^$' -bench . -benchtime 1x ./coordinator/fleet/
//
// BenchmarkConnect200Agents does one whole measurement per call whatever b.N is
// (keys and tokens are used up): run it with -benchtime 1x.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fc-ci/fc/agent/identity"
	"github.com/fc-ci/fc/agent/session"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

const (
	benchWarmup     = 200   // round trips before measuring
	benchRoundTrips = 2_000 // measured round trips per run
	benchAgents     = 200   // agents connecting at once
	benchAlone      = 10    // agents connecting one at a time first: the connect-time baseline
	// benchHeartbeat (seconds) keeps the coordinator from dropping sessions that send no
	// heartbeat while the benchmark holds them (it drops a session silent for three).
	benchHeartbeat = 20
)

func benchState() session.State {
	return session.State{Capabilities: protocol.Capabilities{Systems: []string{"x86_64-linux"}, MaxJobs: 1, Roles: []string{"build"}}}
}

func benchCancel() protocol.Message {
	return protocol.Message{Type: protocol.TypeCancel, Cancel: &protocol.Cancel{}}
}

func benchDial(ctx context.Context, url string, id identity.Identity, name, token string) (*session.Conn, error) {
	return session.Dial(ctx, session.Config{URL: url, Identity: id, Name: name, AgentVersion: "bench",
		EnrollmentToken: token}, benchState())
}

// benchKeys generates n agent keys (before anything is timed).
func benchKeys(b *testing.B, n int) []identity.Identity {
	b.Helper()
	dir := b.TempDir()
	ids := make([]identity.Identity, n)
	for i := range ids {
		id, err := identity.Generate(filepath.Join(dir, fmt.Sprintf("agent_key_%d", i)), "bench")
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = id
	}
	return ids
}

// BenchmarkSessionRoundTrip connects one agent (the protocol client of fc-agent) to an
// in-process coordinator and times, sequentially, a command the coordinator sends over
// the agent's session (fleet.Command: a new yamux stream, the command, the agent's ack)
// beside the same frames over a bare loopback TCP connection, and the agent's heartbeat
// beside the two SQL statements the coordinator runs for each heartbeat.
func BenchmarkSessionRoundTrip(b *testing.B) {
	ctx := context.Background()
	c := coordtest.Start(b, coordtest.Options{Config: func(cfg *config.Config) { cfg.Server.AgentHeartbeat = benchHeartbeat }})
	conn, err := benchDial(ctx, c.URL, benchKeys(b, 1)[0], "bench-round-trip", c.Token(1, time.Hour))
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan error, 1)
	go func() {
		served <- conn.Serve(ctx, func(context.Context, protocol.Message) protocol.Message {
			return protocol.Message{Type: protocol.TypeAck}
		})
	}()
	b.Cleanup(func() { conn.Close(); <-served })
	agentID := conn.Welcome.AgentID

	b.Run("command", func(b *testing.B) {
		fl := c.CurrentFleet()
		command := func() error {
			reply, err := fl.Command(ctx, agentID, benchCancel())
			if err == nil && reply.Type != protocol.TypeAck {
				err = fmt.Errorf("command answered with %q", reply.Type)
			}
			return err
		}
		tcp := benchTCPEcho(b)
		cmdLat, tcpLat := benchPaired(b, command, tcp)
		c50, c99 := benchPercentiles(cmdLat)
		t50, t99 := benchPercentiles(tcpLat)
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(benchUS(c50), "p50-us")
		b.ReportMetric(benchUS(c99), "p99-us")
		b.ReportMetric(benchUS(t50), "tcp-p50-us")
		b.ReportMetric(benchUS(t99), "tcp-p99-us")
		b.Logf("fleet.Command(cancel) -> ack over the agent's WebSocket+yamux session, %d sequential after %d warm-up: p50 %.0f µs, p99 %.0f µs; "+
			"baseline, the same frames over a bare loopback TCP connection: p50 %.0f µs, p99 %.0f µs",
			len(cmdLat), benchWarmup, benchUS(c50), benchUS(c99), benchUS(t50), benchUS(t99))
	})

	b.Run("heartbeat", func(b *testing.B) {
		st := benchState()
		heartbeat := func() error { return conn.Heartbeat(ctx, st) }
		coordinator := conn.Welcome.Coordinator
		sql := func() error { // what the coordinator runs for one heartbeat
			_, err := c.DB.AgentHeartbeat(ctx, agentID, coordinator, st.Load1, st.FreeDiskBytes, st.Draining)
			return err
		}
		hbLat, sqlLat := benchPaired(b, heartbeat, sql)
		h50, h99 := benchPercentiles(hbLat)
		s50, s99 := benchPercentiles(sqlLat)
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(benchUS(h50), "p50-us")
		b.ReportMetric(benchUS(h99), "p99-us")
		b.ReportMetric(benchUS(s50), "sql-p50-us")
		b.ReportMetric(benchUS(s99), "sql-p99-us")
		b.Logf("conn.Heartbeat -> heartbeat ack on the control stream, %d sequential after %d warm-up: p50 %.0f µs, p99 %.0f µs; "+
			"baseline, the coordinator's SQL for one heartbeat (AgentHeartbeat + GetAgent) on its pool: p50 %.0f µs, p99 %.0f µs",
			len(hbLat), benchWarmup, benchUS(h50), benchUS(h99), benchUS(s50), benchUS(s99))
	})
}

// benchPaired warms f and g up, then times them alternately, benchRoundTrips each per
// op, so both see the machine in the same state.
func benchPaired(b *testing.B, f, g func() error) (fLat, gLat []time.Duration) {
	b.Helper()
	for range benchWarmup {
		if err := errors.Join(f(), g()); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		for range benchRoundTrips {
			t0 := time.Now()
			if err := f(); err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			if err := g(); err != nil {
				b.Fatal(err)
			}
			fLat = append(fLat, t1.Sub(t0))
			gLat = append(gLat, time.Since(t1))
		}
	}
	return fLat, gLat
}

// benchTCPEcho is the baseline for a command: the same frames (stream header, command,
// ack) over one plain loopback TCP connection, without WebSocket or yamux.
func benchTCPEcho(b *testing.B) func() error {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		for {
			var hdr protocol.StreamHeader
			var m protocol.Message
			if protocol.ReadFrame(conn, &hdr) != nil || protocol.ReadFrame(conn, &m) != nil ||
				protocol.WriteFrame(conn, protocol.Message{Type: protocol.TypeAck}) != nil {
				return
			}
		}
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		ln.Close()
		<-done
		b.Fatal(err)
	}
	b.Cleanup(func() { client.Close(); ln.Close(); <-done })
	return func() error {
		if err := protocol.WriteFrame(client, protocol.StreamHeader{Kind: protocol.StreamCommand}); err != nil {
			return err
		}
		if err := protocol.WriteFrame(client, benchCancel()); err != nil {
			return err
		}
		var reply protocol.Message
		if err := protocol.ReadFrame(client, &reply); err != nil {
			return err
		}
		if reply.Type != protocol.TypeAck {
			return fmt.Errorf("tcp echo answered %q", reply.Type)
		}
		return nil
	}
}

// BenchmarkConnect200Agents connects 200 protocol clients (each its own key, all
// enrolling with one token of 200 uses) to one coordinator, all at once, and reads the
// coordinator's resident memory before and after. "process" runs fc-coordinator serve
// as its own process (built with go build), so its RSS is the coordinator's alone;
// "in-process" runs it inside the benchmark, where RSS and heap include the 200
// clients too.
func BenchmarkConnect200Agents(b *testing.B) {
	b.Run("process", func(b *testing.B) {
		p := benchStartProcess(b)
		benchConnect(b, p.target(b))
	})
	b.Run("in-process", func(b *testing.B) {
		c := coordtest.Start(b, coordtest.Options{Config: func(cfg *config.Config) { cfg.Server.AgentHeartbeat = benchHeartbeat }})
		benchConnect(b, benchTarget{
			url:   c.URL,
			db:    c.DB,
			token: func(_ string, uses int) string { return c.Token(uses, time.Hour) },
			mem: func() benchMem {
				m := benchProcStatus(b, os.Getpid())
				runtime.GC()
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				m.heapBytes, m.goroutines = int64(ms.HeapInuse), int64(runtime.NumGoroutine())
				return m
			},
		})
	})
}

// benchTarget is a coordinator the agents connect to.
type benchTarget struct {
	url   string
	db    *storage.DB // the coordinator's database, where it records sessions
	token func(name string, uses int) string
	mem   func() benchMem // memory of the process the coordinator runs in
}

type benchMem struct {
	rssKB, hwmKB, threads int64 // from /proc/PID/status
	heapBytes, goroutines int64 // from the Go runtime
}

func (m benchMem) String() string {
	return fmt.Sprintf("RSS %.1f MB (peak %.1f MB), %d threads, Go heap in use %.1f MB, %d goroutines",
		float64(m.rssKB)/1024, float64(m.hwmKB)/1024, m.threads, float64(m.heapBytes)/(1<<20), m.goroutines)
}

func benchConnect(b *testing.B, t benchTarget) {
	ctx := context.Background()
	idle := t.mem()

	// Baseline: agents connecting one at a time, nobody else connecting. This also
	// warms the coordinator up (first connection, statement caches), so the memory
	// read afterwards, with no session left, is the "before" of the 200.
	var alone []time.Duration
	aloneToken := t.token("bench-alone", benchAlone)
	for i, id := range benchKeys(b, benchAlone) {
		t0 := time.Now()
		conn, err := benchDial(ctx, t.url, id, fmt.Sprintf("bench-alone-%02d", i), aloneToken)
		if err != nil {
			b.Fatalf("agent %d alone: %v", i, err)
		}
		alone = append(alone, time.Since(t0))
		conn.Close()
		benchWaitSessions(b, t.db, 0)
	}

	ids := benchKeys(b, benchAgents)
	token := t.token("bench", benchAgents)
	before := t.mem()

	// All at once: every client is ready, then one signal releases them together.
	conns := make([]*session.Conn, len(ids))
	lat := make([]time.Duration, len(ids))
	errs := make([]error, len(ids))
	release := make(chan struct{})
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-release
			t0 := time.Now()
			conns[i], errs[i] = benchDial(ctx, t.url, id, fmt.Sprintf("bench-%03d", i), token)
			lat[i] = time.Since(t0)
		}()
	}
	start := time.Now()
	close(release)
	wg.Wait()
	wall := time.Since(start)
	closeAll := func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		closeAll()
		b.Fatalf("connect %d agents: %v", benchAgents, err)
	}
	benchWaitSessions(b, t.db, benchAgents) // asks PostgreSQL, not the coordinator
	after := t.mem()

	closeAll()
	benchWaitSessions(b, t.db, 0)
	closed := t.mem()

	a50, _ := benchPercentiles(alone)
	d50, d99 := benchPercentiles(lat)
	delta := after.rssKB - before.rssKB
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(benchMS(wall), "connect-all-ms")
	b.ReportMetric(benchMS(d50), "dial-p50-ms")
	b.ReportMetric(benchMS(d99), "dial-p99-ms")
	b.ReportMetric(benchMS(a50), "alone-p50-ms")
	b.ReportMetric(float64(before.rssKB)/1024, "rss-before-MB")
	b.ReportMetric(float64(after.rssKB)/1024, "rss-after-MB")
	b.ReportMetric(float64(delta)/benchAgents, "rss-KB/agent")
	b.ReportMetric(float64(after.heapBytes-before.heapBytes)/benchAgents/1024, "heap-KB/agent")
	b.Logf("%d agents released at once (each its own key, one token of %d uses): all connected in %.0f ms; per dial p50 %.1f ms, p99 %.1f ms; "+
		"baseline, %d agents connecting one at a time: p50 %.1f ms each",
		benchAgents, benchAgents, benchMS(wall), benchMS(d50), benchMS(d99), benchAlone, benchMS(a50))
	b.Logf("memory idle (no agent yet):        %v", idle)
	b.Logf("memory before (warmed, 0 agents):  %v", before)
	b.Logf("memory with %d agents connected:  %v", benchAgents, after)
	b.Logf("memory after closing them:         %v", closed)
	b.Logf("delta for %d agents: RSS %+.1f MB (%.0f KB per agent), Go heap %+.1f MB (%.0f KB per agent), %+d goroutines",
		benchAgents, float64(delta)/1024, float64(delta)/benchAgents,
		float64(after.heapBytes-before.heapBytes)/(1<<20), float64(after.heapBytes-before.heapBytes)/benchAgents/1024,
		after.goroutines-before.goroutines)
}

// benchWaitSessions waits until the coordinator has recorded n agents connected.
func benchWaitSessions(b *testing.B, db *storage.DB, n int64) {
	b.Helper()
	coordtest.Eventually(b, 60*time.Second, fmt.Sprintf("%d agents recorded connected", n), func() bool {
		var got int64
		err := db.Pool().QueryRow(context.Background(), `SELECT count(*) FROM agents WHERE connected`).Scan(&got)
		return err == nil && got == n
	})
}

// benchProcess is fc-coordinator serve running as its own process.
type benchProcess struct {
	cmd   *exec.Cmd
	bin   string
	dir   string
	env   []string
	dbURL string
	url   string
	log   *coordtest.LogBuffer
}

var benchListenRE = regexp.MustCompile(`msg="coordinator listening" addr=(\S+)`)

// benchStartProcess builds fc-coordinator and runs serve on a fresh database until the
// benchmark ends.
func benchStartProcess(b *testing.B) *benchProcess {
	b.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	p := &benchProcess{dir: b.TempDir(), dbURL: storagetest.URL(b), log: &coordtest.LogBuffer{}}
	p.bin = filepath.Join(p.dir, "fc-coordinator")
	if out, err := exec.Command(gobin, "build", "-o", p.bin, "github.com/fc-ci/fc/coordinator/cmd/fc-coordinator").CombinedOutput(); err != nil {
		b.Fatalf("go build fc-coordinator: %v\n%s", err, out)
	}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FC_") {
			p.env = append(p.env, kv)
		}
	}
	p.env = append(p.env, "FC_DATABASE__URL="+p.dbURL, "FC_STATE_DIR="+p.dir, "FC_LOG_LEVEL=info",
		"FC_SERVER__HOST=127.0.0.1", "FC_SERVER__PORT=0", "FC_SERVER__AGENT_HEARTBEAT="+strconv.Itoa(benchHeartbeat))

	p.cmd = exec.Command(p.bin, "serve")
	p.cmd.Dir, p.cmd.Env = p.dir, p.env // no ./coordinator.toml in dir
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	addr := make(chan string, 1)
	exited := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			_, _ = p.log.Write([]byte(line + "\n"))
			if m := benchListenRE.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
		_ = p.cmd.Wait() // after the last read from the pipe
		close(exited)
	}()
	b.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			if !p.cmd.ProcessState.Success() {
				b.Errorf("fc-coordinator serve: %v; its log:\n%s", p.cmd.ProcessState, p.log)
			}
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-exited
			b.Errorf("fc-coordinator serve did not stop within 30 s of SIGTERM")
		}
	})
	select {
	case a := <-addr:
		p.url = "http://" + a
	case <-exited:
		b.Fatalf("fc-coordinator serve exited: %v; its log:\n%s", p.cmd.ProcessState, p.log)
	case <-time.After(60 * time.Second):
		b.Fatalf("fc-coordinator serve did not listen within 60 s; its log:\n%s", p.log)
	}
	return p
}

func (p *benchProcess) target(b *testing.B) benchTarget {
	db, err := storage.Open(context.Background(), storage.Config{URL: p.dbURL, MaxConnections: 2}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(db.Close)
	return benchTarget{
		url: p.url,
		db:  db,
		token: func(name string, uses int) string {
			cmd := exec.Command(p.bin, "admin", "create-agent-token", "--name", name, "--uses", strconv.Itoa(uses))
			cmd.Dir, cmd.Env = p.dir, p.env
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				b.Fatalf("fc-coordinator admin create-agent-token: %v\n%s", err, stderr.String())
			}
			return strings.TrimSpace(string(out))
		},
		mem: func() benchMem {
			m := benchProcStatus(b, p.cmd.Process.Pid)
			// After /proc: the scrape itself allocates in the coordinator.
			m.heapBytes, m.goroutines = benchScrape(b, p.url)
			return m
		},
	}
}

// benchProcStatus reads VmRSS, VmHWM and Threads from /proc/PID/status.
func benchProcStatus(b *testing.B, pid int) benchMem {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	var m benchMem
	for _, line := range strings.Split(string(data), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		switch key {
		case "VmRSS":
			m.rssKB = n
		case "VmHWM":
			m.hwmKB = n
		case "Threads":
			m.threads = n
		}
	}
	if m.rssKB == 0 {
		b.Fatalf("no VmRSS in /proc/%d/status", pid)
	}
	return m
}

// benchScrape reads the Go heap in use and the goroutines from the coordinator's /metrics.
func benchScrape(b *testing.B, url string) (heapBytes, goroutines int64) {
	b.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(val, 64)
		if err != nil {
			continue
		}
		switch name {
		case "go_memstats_heap_inuse_bytes":
			heapBytes = int64(f)
		case "go_goroutines":
			goroutines = int64(f)
		}
	}
	if err := sc.Err(); err != nil {
		b.Fatal(err)
	}
	return heapBytes, goroutines
}

// benchPercentiles returns the 50th and 99th percentiles (nearest rank).
func benchPercentiles(d []time.Duration) (p50, p99 time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	rank := func(p float64) time.Duration {
		i := int(math.Ceil(p/100*float64(len(s)))) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return rank(50), rank(99)
}

func benchMS(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func benchUS(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
