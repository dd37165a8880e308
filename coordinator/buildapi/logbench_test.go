package buildapi_test

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"

	agentcli "github.com/fc-ci/fc/agent/cli"
	agentconfig "github.com/fc-ci/fc/agent/config"
	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/coordinator/fleet"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// The live-log benchmarks (issue 7's closing note), run by scripts/bench-logs with
// -benchtime 1x: one op is one whole build. Every run uses fresh salts, so nothing is
// already built. The path measured is the whole one: the builder's stdout → nix-store
// (internal-json) → the agent's log file → the log stream over the agent's session →
// the coordinator's log file → the WebSocket viewers the hub wakes.
//
//  - BenchmarkLogLatency: the builder prints its own clock (date +%s%N) every ~20 ms;
//    one WebSocket client compares each line with its clock on receipt (same machine,
//    same clock). p50/p99, goal p99 < 100 ms. Baseline from the same run: the same
//    derivation (another salt) realised by nix-store alone, each line timed when its
//    internal-json record reaches the reader (Nix's own share).
//  - BenchmarkLogThroughput100: one build writes 50 MiB of log as fast as it can, with
//    100 WebSocket tailers from byte 0. Throughput as the build saw it (its own clock
//    around the writing) and as the tailers saw it (the build's start → a tailer's last
//    byte), and nothing lost: every tailer's bytes equal (length, sha256) the stored log
//    of GET /api/v1/builds/{id}/log, which equals what the builder printed. Baselines:
//    the same pipeline to /dev/null, and nix-store alone.
//  - BenchmarkIdleTailers1000: the coordinator as its own process (fc-coordinator serve,
//    built for the run), a build that prints one line then sleeps, 1,000 WebSocket
//    tailers connected to it; VmRSS of the coordinator before, with them (sampled every
//    second for 30 s: they wake every 3 s), and after they left, and its CPU meanwhile.
//
// In the first two the coordinator and the agents run in the benchmark's process. The
// 100 tailers stand for browsers on other machines: they run in a process of their
// own at nice 19 (FC_BENCH_LOG_TAILERS_NICE), so their own JSON decoding and hashing
// of 100 copies takes the CPU the build leaves and the figure is what serving them
// costs the build; FC_BENCH_LOG_TAILERS=inprocess runs them in this process instead.

const (
	lbLatencyLines = 500              // one every ~20 ms plus a date process: ~12 s
	lbLineWidth    = 99               // bytes before each newline of the 50 MiB log
	lbBigMB        = 50               // MiB of log (FC_BENCH_LOG_MB changes it: 524,288 lines of 99 + "\n")
	lbTailers      = 100              // BenchmarkLogThroughput100
	lbIdleTailers  = 1000             // BenchmarkIdleTailers1000
	lbDialers      = 50               // tailers dialling at once
	lbIdleSleep    = 120              // seconds the idle build sleeps (cancelled when measured)
	lbSettle       = 5 * time.Second  // before reading RSS
	lbIdleWindow   = 30 * time.Second // RSS is sampled every second this long with the tailers idle
	lbMB           = 1e6              // MB/s are 10^6 bytes per second
	lbReadTimeout  = 10 * time.Minute // a tailer that hears nothing this long gives up
	lbBuildTimeout = 20 * time.Minute // a benchmark build must finish within this
	lbStreamQuery  = "offset=0"       // every tailer starts from byte 0
	lbEvalPoll     = 5 * time.Millisecond
)

// BenchmarkLogLatency measures, per line, builder's stdout → WebSocket client.
func BenchmarkLogLatency(b *testing.B) {
	e := lbInProcess(b)
	script := fmt.Sprintf(`i=0; while [ $i -lt %d ]; do date +%%s%%N; sleep 0.02; i=$((i+1)); done; echo > $out`, lbLatencyLines)
	var all, nixAll []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s := coordtest.Salt(b)
		id := e.startBuild(b, lbJobset("fc-"+s, "ticker", script), "ticker")
		b.StartTimer()
		var lat []time.Duration
		var carry string
		bad := 0
		t := e.follow(b, id, false, func(data string, at time.Time) {
			carry += data
			for {
				nl := strings.IndexByte(carry, '\n')
				if nl < 0 {
					return
				}
				line := carry[:nl]
				carry = carry[nl+1:]
				ns, err := strconv.ParseInt(line, 10, 64)
				if err != nil {
					bad++
					continue
				}
				lat = append(lat, at.Sub(time.Unix(0, ns)))
			}
		})
		b.StopTimer()
		if t.err != nil || t.end == nil || t.end.Status != "succeeded" {
			b.Fatalf("the tailer: err %v, end %+v\n%s", t.err, t.end, coordtest.Tail(e.log.String(), 4000))
		}
		if len(lat) != lbLatencyLines || bad > 0 || t.gap != "" {
			b.Fatalf("received %d timed lines of %d (%d unreadable; %s)", len(lat), lbLatencyLines, bad, t.gap)
		}
		nixLat := lbNixLatency(b, lbJobset("nix-"+s, "ticker", script), "ticker")
		all, nixAll = append(all, lat...), append(nixAll, nixLat...)
		b.Logf("run %d: %d lines, builder's stdout → WebSocket client: p50 %s, p90 %s, p99 %s, max %s (goal p99 < 100 ms); "+
			"nix-store alone, builder's stdout → its internal-json record read (%d lines): p50 %s, p99 %s, max %s; "+
			"so FC adds (agent → session → coordinator file → hub → WebSocket) about p50 %s; %d reconnects",
			i+1, len(lat), coordtest.PctMs(lat, 50), coordtest.PctMs(lat, 90), coordtest.PctMs(lat, 99), coordtest.PctMs(lat, 100),
			len(nixLat), coordtest.PctMs(nixLat, 50), coordtest.PctMs(nixLat, 99), coordtest.PctMs(nixLat, 100),
			coordtest.Ms(coordtest.Pct(lat, 50)-coordtest.Pct(nixLat, 50)), t.reconnects)
	}
	b.StopTimer()
	b.ReportMetric(coordtest.Msf(coordtest.Pct(all, 50)), "p50-ms")
	b.ReportMetric(coordtest.Msf(coordtest.Pct(all, 99)), "p99-ms")
	b.ReportMetric(coordtest.Msf(coordtest.Pct(all, 100)), "max-ms")
	b.ReportMetric(coordtest.Msf(coordtest.Pct(nixAll, 50)), "nix-p50-ms")
	b.ReportMetric(coordtest.Msf(coordtest.Pct(nixAll, 99)), "nix-p99-ms")
}

// BenchmarkLogThroughput100: one build writes 50 MiB of log as fast as it can while
// 100 tailers follow it from byte 0.
func BenchmarkLogThroughput100(b *testing.B) {
	lbBigLines, inProcess, where := lbThroughputOptions(b)
	lbBigSize := lbBigLines * 100
	e := lbInProcess(b)
	// The builder times its own writing and keeps the times in $out.
	script := fmt.Sprintf(`s=$(date +%%s%%N); head -c %d /dev/zero | tr '\0' x | fold -w %d; echo; e=$(date +%%s%%N); echo $s $e > $out`,
		lbBigLines*lbLineWidth, lbLineWidth)
	want := sha256.Sum256(bytes.Repeat(append(bytes.Repeat([]byte{'x'}, lbLineWidth), '\n'), lbBigLines))
	var buildRates, aloneRates, medRates, minRates []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s := coordtest.Salt(b)
		id := e.startBuild(b, lbJobset("fc-"+s, "big", script), "big")
		cpuBefore := coordtest.CPUNow(b, e.c)
		b.StartTimer()
		tails := e.tailers(b, id, inProcess)
		b.StopTimer()
		status := e.waitFinished(b, id)
		cpu := coordtest.CPUNow(b, e.c).Since(cpuBefore)
		if status != "succeeded" {
			b.Fatalf("build %d ended %s\n%s", id, status, coordtest.Tail(e.log.String(), 4000))
		}
		stored := e.storedLog(b, id)
		storedSum := sha256.Sum256(stored)
		start, end := e.builderClock(b, id)
		size := float64(len(stored))

		var lost []string
		var lasts []time.Duration
		reconnects := 0
		for k, t := range tails {
			reconnects += t.reconnects
			switch {
			case t.err != nil || t.end == nil:
				lost = append(lost, fmt.Sprintf("tailer %d: %v (end %+v)", k, t.err, t.end))
			case t.gap != "":
				lost = append(lost, fmt.Sprintf("tailer %d: %s", k, t.gap))
			case t.bytes != int64(len(stored)) || !bytes.Equal(t.sum, storedSum[:]) || t.end.Next != int64(len(stored)):
				lost = append(lost, fmt.Sprintf("tailer %d: %d bytes sha256 %x (end at %d), stored %d bytes sha256 %x",
					k, t.bytes, t.sum[:8], t.end.Next, len(stored), storedSum[:8]))
			default:
				lasts = append(lasts, t.last.Sub(start))
			}
		}
		if len(stored) != lbBigSize || storedSum != want {
			lost = append(lost, fmt.Sprintf("stored log: %d bytes sha256 %x, the builder printed %d bytes sha256 %x",
				len(stored), storedSum[:8], lbBigSize, want[:8]))
		}
		if len(lost) > 0 {
			b.Fatalf("something was lost (%d problems):\n%s", len(lost), strings.Join(lost[:min(len(lost), 10)], "\n"))
		}
		sort.Slice(lasts, func(i, j int) bool { return lasts[i] < lasts[j] })
		buildTime := end.Sub(start)
		rate := func(d time.Duration) float64 { return size / lbMB / d.Seconds() }
		buildRates = append(buildRates, rate(buildTime))
		medRates = append(medRates, rate(lasts[len(lasts)/2]))
		minRates = append(minRates, rate(lasts[len(lasts)-1]))
		decodeNote := "the tailers ran in their own process (not in this process's figure)"
		if inProcess {
			decode := lbDecodeCost(b, tails[0].raw)
			decodeNote = fmt.Sprintf("the tailers' own JSON decoding and hashing: %.2fs CPU each on its own (%.1f s for %d), part of this process's figure",
				decode.Seconds(), decode.Seconds()*lbTailers, lbTailers)
		}
		pipe := lbPipeline(b, lbBigLines)
		// The same build through FC with no tailer: what the tailers cost the build.
		aloneID := e.startBuild(b, lbJobset("alone-"+s, "big", script), "big")
		if st := e.waitFinished(b, aloneID); st != "succeeded" {
			b.Fatalf("build %d (no tailer) ended %s", aloneID, st)
		}
		as, ae := e.builderClock(b, aloneID)
		alone := ae.Sub(as)
		aloneRates = append(aloneRates, rate(alone))
		nixWrite, nixWall := lbNixThroughput(b, lbJobset("nix-"+s, "big", script), "big")
		b.Logf("run %d: %d bytes (%.1f MB), %d lines; nothing lost: all %d tailers (%s) got exactly the stored bytes (sha256 %x…), "+
			"which are what the builder printed; %d reconnects\n"+
			"    the build wrote it in %.2fs: %.1f MB/s as the build saw it; the tailers had it all %.2fs (first) / %.2fs (median) / "+
			"%.2fs (last) after the build started: %.1f / %.1f / %.1f MB/s each (×%d = %.0f MB/s sent at the median)\n"+
			"    baselines: the same build through FC with no tailer wrote it in %.2fs (%.1f MB/s); the pipeline to /dev/null %.2fs (%.0f MB/s); nix-store alone (stderr drained) wrote it in %.2fs "+
			"(%.1f MB/s), nix-store ran %.2fs\n"+
			"    %s; %s",
			i+1, len(stored), size/lbMB, lbBigLines, lbTailers, where, storedSum[:8], reconnects,
			buildTime.Seconds(), rate(buildTime), lasts[0].Seconds(), lasts[len(lasts)/2].Seconds(), lasts[len(lasts)-1].Seconds(),
			rate(lasts[0]), rate(lasts[len(lasts)/2]), rate(lasts[len(lasts)-1]), lbTailers, rate(lasts[len(lasts)/2])*lbTailers,
			alone.Seconds(), rate(alone), pipe.Seconds(), size/lbMB/pipe.Seconds(), nixWrite.Seconds(), rate(nixWrite), nixWall.Seconds(),
			cpu, decodeNote)
	}
	b.StopTimer()
	b.ReportMetric(meanOf(buildRates), "build-MB/s")
	b.ReportMetric(meanOf(aloneRates), "build-no-tailer-MB/s")
	b.ReportMetric(meanOf(medRates), "tailer-median-MB/s")
	b.ReportMetric(meanOf(minRates), "tailer-slowest-MB/s")
}

// lbThroughputOptions reads BenchmarkLogThroughput100's knobs: the lines of log
// (FC_BENCH_LOG_MB MiB, default 50) and where the tailers run.
func lbThroughputOptions(b *testing.B) (lines int, inProcess bool, where string) {
	mb := lbBigMB
	if v := os.Getenv("FC_BENCH_LOG_MB"); v != "" { // smaller for scripts/bench-all --quick
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("FC_BENCH_LOG_MB=%q: want a whole number of MiB", v)
		}
		mb = n
	}
	// Viewers are browsers on other machines: by default the tailers run in a process
	// of their own at nice 19, so what they cost themselves (JSON decoding and
	// hashing 100 copies of the log) takes only CPU the build leaves, and the figure
	// is what serving them costs the build. FC_BENCH_LOG_TAILERS=inprocess runs them
	// as goroutines of this process instead (the coordinator's and agents'), the
	// harshest case, where their decoding competes with the build's agent.
	if os.Getenv("FC_BENCH_LOG_TAILERS") == "inprocess" {
		return mb << 20 / 100, true, "in this process"
	}
	return mb << 20 / 100, false, "in a process of their own at nice " + cmp.Or(os.Getenv("FC_BENCH_LOG_TAILERS_NICE"), "19")
}

// tailers follows build id with lbTailers tailers from byte 0, in this process or
// in a process of their own, and returns what each received.
func (e *lbEnv) tailers(b *testing.B, id int64, inProcess bool) []lbTail {
	if !inProcess {
		return e.tailersProcess(b, id, lbTailers)
	}
	tails := make([]lbTail, lbTailers)
	var wg sync.WaitGroup
	for k := range tails {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tails[k] = e.follow(b, id, k == 0, nil)
		}()
	}
	wg.Wait()
	return tails
}

// BenchmarkIdleTailers1000: the RSS of a coordinator process with 1,000 idle tailers.
func BenchmarkIdleTailers1000(b *testing.B) {
	e := lbSubprocess(b)
	script := fmt.Sprintf(`echo started; sleep %d; echo > $out`, lbIdleSleep)
	var per, before, after []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		s := coordtest.Salt(b)
		id := e.startBuild(b, lbJobset("fc-"+s, "idle", script), "idle")
		coordtest.Eventually(b, 2*time.Minute, "the idle build has printed its line", func() bool {
			code, body := e.get(b, fmt.Sprintf("/api/v1/builds/%d/log", id))
			return code == 200 && body == "started\n"
		})
		time.Sleep(lbSettle)
		rss0, m0 := lbRSS(b, e.pid), e.goMetrics(b)
		b.StartTimer()
		connectStart := time.Now()
		conns := make([]*websocket.Conn, lbIdleTailers)
		ready := make(chan error, lbIdleTailers)
		ended := make(chan struct{}, lbIdleTailers)
		sem := make(chan struct{}, lbDialers)
		for k := range conns {
			sem <- struct{}{}
			conn, err := e.dial(id, lbStreamQuery)
			<-sem
			if err != nil {
				b.Fatalf("tailer %d: %v", k, err)
			}
			conns[k] = conn
			go func() {
				defer func() { ended <- struct{}{} }()
				first := true
				for {
					_, raw, err := conn.ReadMessage()
					if err != nil {
						if first {
							ready <- err
						}
						return
					}
					var m logMsg
					if first {
						first = false
						if err := json.Unmarshal(raw, &m); err != nil || m.Type != "log" || m.Data != "started\n" {
							ready <- fmt.Errorf("first message %s (%v)", raw, err)
						} else {
							ready <- nil
						}
					}
				}
			}()
		}
		for k := 0; k < lbIdleTailers; k++ {
			if err := <-ready; err != nil {
				b.Fatalf("a tailer: %v", err)
			}
		}
		connected := time.Since(connectStart)
		b.StopTimer()
		// RSS every second while they idle (each wakes every 3 s to recheck the step).
		cpu0 := lbCPU(b, e.pid)
		var rss []int64
		for k := 0; k < int(lbIdleWindow/time.Second); k++ {
			time.Sleep(time.Second)
			rss = append(rss, lbRSS(b, e.pid))
		}
		m1, cpu1 := e.goMetrics(b), lbCPU(b, e.pid)
		if n := len(ended); n > 0 {
			b.Fatalf("%d tailers were disconnected while idle", n)
		}
		if st := e.buildStatus(b, id); st != "running" {
			b.Fatalf("the idle build is %s, not running, at the measurement", st)
		}
		for _, c := range conns {
			c.Close()
		}
		for k := 0; k < lbIdleTailers; k++ {
			<-ended
		}
		coordtest.Eventually(b, time.Minute, "the coordinator has let the tailers go", func() bool {
			return e.goMetrics(b)["go_goroutines"] <= m0["go_goroutines"]+5
		})
		time.Sleep(lbSettle)
		rss3, m3 := lbRSS(b, e.pid), e.goMetrics(b)
		if code := e.do(b, "POST", fmt.Sprintf("/api/v1/builds/%d/cancel", id), nil, nil); code != 200 {
			b.Fatalf("cancel the idle build: %d", code)
		}
		e.waitFinished(b, id)

		rssAfter := slices.Max(rss)
		perTailer := float64(rssAfter-rss0) / lbIdleTailers
		idleCPU := cpu1 - cpu0
		live0, live1 := m0["go_memstats_next_gc_bytes"]/2, m1["go_memstats_next_gc_bytes"]/2 // GOGC=100: the heap target is twice the live heap
		per, before, after = append(per, perTailer), append(before, float64(rss0)/1024), append(after, float64(rssAfter)/1024)
		b.Logf("run %d: coordinator VmRSS %.1f MB before (build running, no tailer); with %d idle tailers %.1f MB 5 s after all "+
			"were connected, %.1f MB at most and %.1f MB at the end of %s (connecting took %.2fs, %d at a time): %.1f KB per tailer "+
			"(at most); %.1f MB %s after they left\n"+
			"    Go runtime (/metrics): goroutines %.0f → %.0f (%.1f per tailer) → %.0f; heap in use %.1f → %.1f MB; live heap at the "+
			"last GC (next_gc/2) %.1f → %.1f MB (%.1f KB per tailer); stacks %.1f → %.1f MB (%.1f KB per tailer); "+
			"memory from the OS %.1f → %.1f MB\n"+
			"    coordinator CPU while the %d tailers idled: %.2fs in %s (%.1f%% of one core)",
			i+1, float64(rss0)/1024, lbIdleTailers, float64(rss[4])/1024, float64(rssAfter)/1024, float64(rss[len(rss)-1])/1024,
			lbIdleWindow, connected.Seconds(), lbDialers, perTailer, float64(rss3)/1024, lbSettle,
			m0["go_goroutines"], m1["go_goroutines"], (m1["go_goroutines"]-m0["go_goroutines"])/lbIdleTailers, m3["go_goroutines"],
			m0["go_memstats_heap_inuse_bytes"]/1e6, m1["go_memstats_heap_inuse_bytes"]/1e6,
			live0/1e6, live1/1e6, (live1-live0)/1e3/lbIdleTailers,
			m0["go_memstats_stack_inuse_bytes"]/1e6, m1["go_memstats_stack_inuse_bytes"]/1e6,
			(m1["go_memstats_stack_inuse_bytes"]-m0["go_memstats_stack_inuse_bytes"])/1e3/lbIdleTailers,
			m0["go_memstats_sys_bytes"]/1e6, m1["go_memstats_sys_bytes"]/1e6,
			lbIdleTailers, idleCPU.Seconds(), lbIdleWindow, 100*idleCPU.Seconds()/lbIdleWindow.Seconds())
	}
	b.StopTimer()
	b.ReportMetric(meanOf(before), "rss-before-MB")
	b.ReportMetric(meanOf(after), "rss-1000-MB")
	b.ReportMetric(meanOf(per), "KB/tailer")
}

// The environment: a coordinator (in this process or not), an eval agent and a build
// agent in this process, one jobset.

type lbEnv struct {
	url, addr, admin string
	db               *storage.DB
	log              *coordtest.LogBuffer
	c                *coordtest.Coordinator // in-process only
	pid              int                    // subprocess only
	repo             *coordtest.Repo
	js               int64
}

func lbNeedNix(b *testing.B) {
	for _, bin := range []string{"nix", "nix-instantiate", "nix-store", "git"} {
		if _, err := exec.LookPath(bin); err != nil {
			b.Skipf("%s not on PATH", bin)
		}
	}
}

// lbInProcess is coordtest's coordinator with its default configuration ([logs]
// max_log_size 64 MiB, compress) and two in-process agents.
func lbInProcess(b *testing.B) *lbEnv {
	b.Helper()
	lbNeedNix(b)
	c := coordtest.Start(b, coordtest.Options{})
	e := &lbEnv{url: c.URL, addr: c.Addr, admin: c.Admin, db: c.DB, log: c.Log, c: c}
	coordtest.StartAgent(b, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(b, c, coordtest.AgentOptions{Name: "builder"})
	e.setup(b)
	return e
}

var (
	lbListening  = regexp.MustCompile(`msg="coordinator listening" addr=(\S+)`)
	lbBinaryOnce sync.Once
	lbBinary     string
	lbBinaryErr  error
)

// lbSubprocess runs fc-coordinator serve (built once per test binary) on a fresh test
// database, with in-process agents dialling it.
func lbSubprocess(b *testing.B) *lbEnv {
	b.Helper()
	lbNeedNix(b)
	lbBinaryOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		dir, err := os.MkdirTemp("", "fc-coordinator-bin-")
		if err != nil {
			lbBinaryErr = err
			return
		}
		lbBinary = filepath.Join(dir, "fc-coordinator")
		cmd := exec.Command("go", "build", "-o", lbBinary, "./coordinator/cmd/fc-coordinator")
		cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..")
		if out, err := cmd.CombinedOutput(); err != nil {
			lbBinaryErr = fmt.Errorf("go build fc-coordinator: %v\n%s", err, out)
		}
	})
	if lbBinaryErr != nil {
		b.Fatal(lbBinaryErr)
	}
	dbURL := storagetest.URL(b) // dropped after the coordinator has stopped (cleanups run last first)
	db, err := storage.Open(context.Background(), storage.Config{URL: dbURL, MaxConnections: 4}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(db.Close)
	_, admin, err := auth.CreateKey(context.Background(), db, "bench-admin", storage.RoleAdmin)
	if err != nil {
		b.Fatal(err)
	}
	e := &lbEnv{admin: admin, db: db, log: &coordtest.LogBuffer{}}
	cmd := exec.Command(lbBinary, "serve")
	cmd.Dir = b.TempDir() // no ./coordinator.toml
	cmd.Env = append(os.Environ(),
		"FC_DATABASE__URL="+dbURL,
		"FC_STATE_DIR="+b.TempDir(),
		"FC_SERVER__HOST=127.0.0.1",
		"FC_SERVER__PORT=0",
		"FC_SERVER__AGENT_HEARTBEAT=1",
		"FC_QUEUE_RUNNER__RETRY_BACKOFF=0",
		"FC_LOG_LEVEL=info",
	)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); pw.Close(); close(exited) }()
	b.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			_, _ = e.log.Write([]byte("coordinator: " + sc.Text() + "\n"))
			if m := lbListening.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	select {
	case e.addr = <-found:
	case <-exited:
		b.Fatalf("fc-coordinator exited before listening:\n%s", e.log)
	case <-time.After(2 * time.Minute):
		b.Fatalf("fc-coordinator did not listen within 2 minutes:\n%s", e.log)
	}
	e.url, e.pid = "http://"+e.addr, cmd.Process.Pid
	b.Cleanup(func() {
		if b.Failed() {
			b.Logf("coordinator and agent log, last 8000 bytes:\n%s", coordtest.Tail(e.log.String(), 8000))
		}
	})
	e.startAgent(b, "evaluator", []string{"eval"})
	e.startAgent(b, "builder", []string{"build"})
	e.setup(b)
	return e
}

// startAgent runs an agent in this process against e's coordinator (as coordtest's).
func (e *lbEnv) startAgent(b *testing.B, name string, roles []string) {
	b.Helper()
	_, token, err := fleet.CreateToken(context.Background(), e.db, "bench-"+name, 1, time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	cfg := agentconfig.Defaults()
	cfg.Coordinator.URL = e.url
	cfg.Coordinator.EnrollmentToken = token
	cfg.Agent.Name = name
	cfg.Agent.StateDir = b.TempDir()
	cfg.Agent.Roles = roles
	cfg.Agent.MaxJobs = 1
	d, err := agentcli.NewDaemon(cfg, slog.New(slog.NewTextHandler(e.log, nil)).With("side", "agent-"+name), 0)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
		}
	})
}

// setup makes the repository and the project's jobset and waits for the agents.
func (e *lbEnv) setup(b *testing.B) {
	b.Helper()
	e.repo = coordtest.NewRepo(b)
	e.repo.Commit(map[string]string{"release.nix": "{ }\n"})
	var p, j struct{ ID int64 }
	if code := e.do(b, "POST", "/api/v1/projects", map[string]any{"name": "bench", "repository_url": e.repo.Dir,
		"webhook_secret": "a-very-secret-webhook-key"}, &p); code != 201 {
		b.Fatalf("create project: %d", code)
	}
	if code := e.do(b, "POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", p.ID), map[string]any{"name": "main", "branch": "main",
		"flake_mode": false, "nix_expression": "release.nix", "check_interval": 0}, &j); code != 201 {
		b.Fatalf("create jobset: %d", code)
	}
	e.js = j.ID
	coordtest.Eventually(b, time.Minute, "both agents are connected", func() bool {
		var n int
		if err := e.db.Pool().QueryRow(context.Background(), `SELECT count(*) FROM agents WHERE connected`).Scan(&n); err != nil {
			b.Fatal(err)
		}
		return n == 2
	})
}

// do sends an API request with the admin key and decodes a JSON answer into out.
func (e *lbEnv) do(b *testing.B, method, path string, body, out any) int {
	b.Helper()
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, e.url+path, rd)
	req.Header.Set("Authorization", "Bearer "+e.admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 && resp.StatusCode < 300 {
		if err := json.Unmarshal(raw, out); err != nil {
			b.Fatalf("%s %s: decode %q: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode
}

func (e *lbEnv) get(b *testing.B, path string) (int, string) {
	b.Helper()
	resp, err := http.Get(e.url + path)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	return resp.StatusCode, string(raw)
}

// lbJobset is one job whose builder runs script (with PATH=/bin:/usr/bin).
func lbJobset(salt, job, script string) string {
	return fmt.Sprintf("let\n  %s\nin {\n  %s = mk %q { args = sh %q; };\n}\n", coordtest.MkLet(salt), job, job, script)
}

// startBuild commits expr, triggers the jobset, waits for the evaluation and returns
// the id of job's build (queued or already running).
func (e *lbEnv) startBuild(b *testing.B, expr, job string) int64 {
	b.Helper()
	ctx := context.Background()
	commit := e.repo.Commit(map[string]string{"release.nix": expr})
	if code := e.do(b, "POST", "/api/v1/evaluations/trigger", map[string]any{"jobset_id": e.js, "force": false}, nil); code != 202 {
		b.Fatalf("trigger: %d", code)
	}
	deadline := time.Now().Add(5 * time.Minute)
	var evalID int64
	for {
		var status, msg string
		err := e.db.Pool().QueryRow(ctx, `SELECT id, status, error FROM evaluations WHERE jobset_id = $1 AND commit = $2
			ORDER BY id DESC LIMIT 1`, e.js, commit).Scan(&evalID, &status, &msg)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			b.Fatal(err)
		}
		if status == "succeeded" {
			break
		}
		if status == "failed" {
			b.Fatalf("evaluation %d failed: %s\n%s", evalID, msg, coordtest.Tail(e.log.String(), 4000))
		}
		if time.Now().After(deadline) {
			b.Fatalf("evaluation of %s not stored (status %q)\n%s", commit, status, coordtest.Tail(e.log.String(), 4000))
		}
		time.Sleep(lbEvalPoll)
	}
	var id int64
	if err := e.db.Pool().QueryRow(ctx, `SELECT id FROM builds WHERE evaluation_id = $1 AND job = $2`, evalID, job).Scan(&id); err != nil {
		b.Fatalf("the build of %s in evaluation %d: %v", job, evalID, err)
	}
	return id
}

func (e *lbEnv) buildStatus(b *testing.B, id int64) string {
	b.Helper()
	var status string
	if err := e.db.Pool().QueryRow(context.Background(), `SELECT status FROM builds WHERE id = $1`, id).Scan(&status); err != nil {
		b.Fatal(err)
	}
	return status
}

func (e *lbEnv) waitFinished(b *testing.B, id int64) string {
	b.Helper()
	deadline := time.Now().Add(lbBuildTimeout)
	for {
		st := e.buildStatus(b, id)
		if st != "queued" && st != "running" {
			return st
		}
		if time.Now().After(deadline) {
			b.Fatalf("build %d still %s after %v\n%s", id, st, lbBuildTimeout, coordtest.Tail(e.log.String(), 4000))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// storedLog is GET /api/v1/builds/{id}/log.
func (e *lbEnv) storedLog(b *testing.B, id int64) []byte {
	b.Helper()
	resp, err := http.Get(fmt.Sprintf("%s/api/v1/builds/%d/log", e.url, id))
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		b.Fatalf("GET the log of build %d: %d %v", id, resp.StatusCode, err)
	}
	return raw
}

// builderClock reads the start and end the builder wrote into $out (the store is shared).
func (e *lbEnv) builderClock(b *testing.B, id int64) (start, end time.Time) {
	b.Helper()
	var bd struct {
		Outputs map[string]string `json:"outputs"`
	}
	if code := e.do(b, "GET", fmt.Sprintf("/api/v1/builds/%d", id), nil, &bd); code != 200 {
		b.Fatalf("get build %d: %d", id, code)
	}
	return lbReadClock(b, bd.Outputs["out"])
}

func lbReadClock(b *testing.B, out string) (start, end time.Time) {
	b.Helper()
	raw, err := os.ReadFile(out)
	if err != nil {
		b.Fatalf("read the builder's times: %v", err)
	}
	f := strings.Fields(string(raw))
	if len(f) != 2 {
		b.Fatalf("%s holds %q, want two times", out, raw)
	}
	s, err1 := strconv.ParseInt(f[0], 10, 64)
	t, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("%s holds %q", out, raw)
	}
	return time.Unix(0, s), time.Unix(0, t)
}

func (e *lbEnv) dial(id int64, query string) (*websocket.Conn, error) {
	d := websocket.Dialer{HandshakeTimeout: time.Minute}
	conn, _, err := d.Dial(fmt.Sprintf("ws://%s/api/v1/builds/%d/log/stream?%s", e.addr, id, query), nil)
	return conn, err
}

// lbTail is what one tailer received.
type lbTail struct {
	bytes       int64 // the offset it reached
	sum         []byte
	first, last time.Time // first and last log bytes received
	end         *logMsg
	gap         string // the first gap, duplicate or restart seen
	err         error
	reconnects  int
	raw         [][]byte // every message, when kept
}

// follow tails build id from byte 0 until the step ends, reconnecting from its
// offset if the connection drops (as the dashboard does); onLog sees every chunk.
func (e *lbEnv) follow(b *testing.B, id int64, keepRaw bool, onLog func(data string, at time.Time)) (t lbTail) {
	h := sha256.New()
	defer func() { t.sum = h.Sum(nil) }()
	conn, err := e.dial(id, lbStreamQuery)
	fails := 0 // in a row: a tailer the server dropped (it took nothing for 10 s) comes back
	for {
		if err != nil {
			t.reconnects++
			if fails++; fails > 5 {
				t.err = err
				return t
			}
			time.Sleep(100 * time.Millisecond)
			conn, err = e.dial(id, fmt.Sprintf("offset=%d", t.bytes))
			continue
		}
		_ = conn.SetReadDeadline(time.Now().Add(lbReadTimeout))
		var raw []byte
		_, raw, err = conn.ReadMessage()
		at := time.Now()
		if err != nil {
			conn.Close()
			continue
		}
		fails = 0
		if keepRaw {
			t.raw = append(t.raw, raw)
		}
		var m logMsg
		if err := json.Unmarshal(raw, &m); err != nil {
			t.err = err
			conn.Close()
			return t
		}
		switch m.Type {
		case "log":
			if m.Offset != t.bytes && t.gap == "" {
				t.gap = fmt.Sprintf("a chunk at offset %d, expected %d", m.Offset, t.bytes)
			}
			_, _ = io.WriteString(h, m.Data)
			t.bytes = m.Next
			if t.first.IsZero() {
				t.first = at
			}
			t.last = at
			if onLog != nil {
				onLog(m.Data, at)
			}
		case "attempt":
			if t.gap == "" {
				t.gap = "a new attempt restarted the log"
			}
		case "end":
			t.end = &m
			conn.Close()
			return t
		}
	}
}

// lbTailersEnv makes this test binary a tailers process (see TestMain): its value is
// "<coordinator addr> <build id> <tailers>".
const lbTailersEnv = "FC_BENCH_TAILERS_CHILD"

// lbTailResult is an lbTail as the tailers process reports it, one JSON line each.
type lbTailResult struct {
	Bytes      int64   `json:"bytes"`
	Sum        []byte  `json:"sum"`
	First      int64   `json:"first_ns"`
	Last       int64   `json:"last_ns"`
	End        *logMsg `json:"end,omitempty"`
	Gap        string  `json:"gap,omitempty"`
	Err        string  `json:"err,omitempty"`
	Reconnects int     `json:"reconnects"`
}

// lbTailersMain is the tailers process: it follows the build with n tailers and
// prints what each received.
func lbTailersMain() int {
	var addr string
	var id int64
	var n int
	if _, err := fmt.Sscan(os.Getenv(lbTailersEnv), &addr, &id, &n); err != nil {
		fmt.Fprintln(os.Stderr, "tailers:", err)
		return 2
	}
	e := &lbEnv{addr: addr}
	tails := make([]lbTail, n)
	var wg sync.WaitGroup
	for k := range tails {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tails[k] = e.follow(nil, id, false, nil)
		}()
	}
	wg.Wait()
	enc := json.NewEncoder(os.Stdout)
	for _, t := range tails {
		r := lbTailResult{Bytes: t.bytes, Sum: t.sum, First: t.first.UnixNano(), Last: t.last.UnixNano(), End: t.end, Gap: t.gap, Reconnects: t.reconnects}
		if t.err != nil {
			r.Err = t.err.Error()
		}
		if err := enc.Encode(r); err != nil {
			return 1
		}
	}
	return 0
}

// tailersProcess runs n tailers of build id in a process of their own at nice 19
// (FC_BENCH_LOG_TAILERS_NICE sets another) and returns what they received; the
// process is this test binary again.
func (e *lbEnv) tailersProcess(b *testing.B, id int64, n int) []lbTail {
	b.Helper()
	cmd := exec.Command("nice", "-n", cmp.Or(os.Getenv("FC_BENCH_LOG_TAILERS_NICE"), "19"), os.Args[0])
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d", lbTailersEnv, e.addr, id, n))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its own group: reniced as one below
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		b.Fatalf("tailers process: %v", err)
	}
	// Once the build has ended (what is measured is over), the tailers get their
	// share of the CPU back: at nice 19 on a busy machine they would take hours to
	// catch up. PRIO_PGRP sets every thread of the group's processes.
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			var status string
			err := e.db.Pool().QueryRow(context.Background(), `SELECT status FROM builds WHERE id = $1`, id).Scan(&status)
			if err == nil && status != "queued" && status != "running" {
				_ = syscall.Setpriority(syscall.PRIO_PGRP, cmd.Process.Pid, 0)
				return
			}
			select {
			case <-done:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	if err := cmd.Wait(); err != nil {
		b.Fatalf("tailers process: %v\n%s", err, stderr.String())
	}
	out := stdout.Bytes()
	var tails []lbTail
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var r lbTailResult
		if err := dec.Decode(&r); err != nil {
			b.Fatalf("tailers process said %q: %v", out, err)
		}
		t := lbTail{bytes: r.Bytes, sum: r.Sum, first: time.Unix(0, r.First), last: time.Unix(0, r.Last), end: r.End, gap: r.Gap, reconnects: r.Reconnects}
		if r.Err != "" {
			t.err = errors.New(r.Err)
		}
		tails = append(tails, t)
	}
	if len(tails) != n {
		b.Fatalf("tailers process reported %d tailers of %d\n%s", len(tails), n, stderr.String())
	}
	return tails
}

// lbDecodeCost is the CPU one tailer spends decoding and hashing its messages, timed
// on their own after the run.
func lbDecodeCost(b *testing.B, raw [][]byte) time.Duration {
	b.Helper()
	start := time.Now()
	h := sha256.New()
	for _, r := range raw {
		var m logMsg
		if err := json.Unmarshal(r, &m); err != nil {
			b.Fatal(err)
		}
		_, _ = io.WriteString(h, m.Data)
	}
	return time.Since(start)
}

// lbPipeline times the builder's pipeline outside Nix, to /dev/null.
func lbPipeline(b *testing.B, lbBigLines int) time.Duration {
	b.Helper()
	start := time.Now()
	cmd := exec.Command("/bin/sh", "-c", fmt.Sprintf(`export PATH=/bin:/usr/bin; { head -c %d /dev/zero | tr '\0' x | fold -w %d; echo; } > /dev/null`,
		lbBigLines*lbLineWidth, lbLineWidth))
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("pipeline: %v %s", err, out)
	}
	return time.Since(start)
}

// lbNixRealise realises job of expr with nix-store alone (the agent's log format),
// calling onLine with each build log line as its record is read, and returns the output.
func lbNixRealise(b *testing.B, expr, job string, onLine func(line string, at time.Time)) string {
	b.Helper()
	file := filepath.Join(b.TempDir(), "release.nix")
	if err := os.WriteFile(file, []byte(expr), 0o644); err != nil {
		b.Fatal(err)
	}
	drv, err := exec.Command("nix-instantiate", file, "-A", job).Output()
	if err != nil {
		b.Fatalf("nix-instantiate: %v %s", err, coordtest.StderrOf(err))
	}
	var out bytes.Buffer
	cmd := exec.Command("nix-store", "--log-format", "internal-json", "--realise", strings.TrimSpace(string(drv)),
		"--option", "substituters", "", "--option", "builders", "")
	cmd.Stdout = &out
	logs, err := cmd.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	r := bufio.NewReaderSize(logs, 64<<10)
	for {
		line, err := r.ReadSlice('\n')
		if len(line) > 0 && onLine != nil {
			at := time.Now()
			var rec struct {
				Action string            `json:"action"`
				Type   int               `json:"type"`
				Fields []json.RawMessage `json:"fields"`
			}
			if rest, ok := bytes.CutPrefix(line, []byte("@nix ")); ok && json.Unmarshal(rest, &rec) == nil &&
				rec.Action == "result" && rec.Type == 101 && len(rec.Fields) > 0 {
				var s string
				if json.Unmarshal(rec.Fields[0], &s) == nil {
					onLine(s, at)
				}
			}
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil {
			break
		}
	}
	if err := cmd.Wait(); err != nil {
		b.Fatalf("nix-store --realise: %v", err)
	}
	return strings.TrimSpace(out.String())
}

// lbNixLatency: builder's stdout → its internal-json record read, nix-store alone.
func lbNixLatency(b *testing.B, expr, job string) []time.Duration {
	b.Helper()
	var lat []time.Duration
	lbNixRealise(b, expr, job, func(line string, at time.Time) {
		if ns, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64); err == nil {
			lat = append(lat, at.Sub(time.Unix(0, ns)))
		}
	})
	return lat
}

// lbNixThroughput: how long the builder took to write, and nix-store ran, alone.
func lbNixThroughput(b *testing.B, expr, job string) (write, wall time.Duration) {
	b.Helper()
	start := time.Now()
	out := lbNixRealise(b, expr, job, nil)
	wall = time.Since(start)
	s, e := lbReadClock(b, out)
	return e.Sub(s), wall
}

// lbRSS is a process's VmRSS in KiB.
func lbRSS(b *testing.B, pid int) int64 {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatalf("no VmRSS for %d", pid)
	return 0
}

// lbCPU is a process's user + system CPU time.
func lbCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	d, ok := coordtest.ProcessCPU(pid)
	if !ok {
		b.Fatalf("no /proc/%d/stat", pid)
	}
	return d
}

// goMetrics reads the Go runtime's gauges from the coordinator's /metrics.
func (e *lbEnv) goMetrics(b *testing.B) map[string]float64 {
	b.Helper()
	code, body := e.get(b, "/metrics")
	if code != 200 {
		b.Fatalf("/metrics: %d", code)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && strings.HasPrefix(f[0], "go_") {
			if v, err := strconv.ParseFloat(f[1], 64); err == nil {
				out[f[0]] = v
			}
		}
	}
	return out
}

func meanOf(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}
