package work

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/fc-ci/fc/protocol"
)

// pipeLink is a Link over in-process pipes: every OpenStream starts serve on
// the other end, which plays the coordinator's side of the protocol.
type pipeLink struct {
	serve func(kind string, st net.Conn)
	wg    sync.WaitGroup

	mu     sync.Mutex
	opened []string
}

func newPipeLink(t *testing.T, serve func(kind string, st net.Conn)) *pipeLink {
	l := &pipeLink{serve: serve}
	t.Cleanup(l.wg.Wait)
	return l
}

func (l *pipeLink) OpenStream(ctx context.Context, kind string) (io.ReadWriteCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	client, server := net.Pipe()
	l.mu.Lock()
	l.opened = append(l.opened, kind)
	l.mu.Unlock()
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer server.Close()
		l.serve(kind, server)
	}()
	return client, nil
}

func (l *pipeLink) count(kind string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, k := range l.opened {
		if k == kind {
			n++
		}
	}
	return n
}

// logPeer is the coordinator's end of log streams: it keeps what it was sent and
// records any gap or duplicate, which the sender must never cause.
type logPeer struct {
	// refuseOpens: the first streams are closed before the ack.
	refuseOpens int
	// breakAfter: the first acked stream is cut when its breakAfter-th data chunk
	// arrives, and that chunk is dropped (lost in flight).
	breakAfter int
	// block: the first acked stream reads nothing more until block is closed.
	block chan struct{}

	mu       sync.Mutex
	held     []byte
	opens    int
	streams  int // acked streams
	chunks   int
	done     bool
	problems []string
	changed  chan struct{} // closed and replaced on every change
}

func newLogPeer() *logPeer { return &logPeer{changed: make(chan struct{})} }

func (p *logPeer) notify() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *logPeer) serve(st net.Conn) {
	var open protocol.LogOpen
	if protocol.ReadFrame(st, &open) != nil {
		return
	}
	p.mu.Lock()
	p.opens++
	p.notify()
	if p.opens <= p.refuseOpens {
		p.mu.Unlock()
		return
	}
	p.streams++
	stream := p.streams
	offset := int64(len(p.held))
	p.notify()
	p.mu.Unlock()
	if protocol.WriteFrame(st, protocol.LogAck{Offset: offset}) != nil {
		return
	}
	if stream == 1 && p.block != nil {
		<-p.block
	}
	dataChunks := 0
	for {
		var c protocol.LogChunk
		if protocol.ReadFrame(st, &c) != nil {
			return
		}
		p.mu.Lock()
		held := int64(len(p.held))
		switch {
		case c.Offset > held:
			p.problems = append(p.problems, fmt.Sprintf("gap: chunk at %d, holding %d", c.Offset, held))
			p.mu.Unlock()
			return
		case c.Offset < held && len(c.Data) > 0:
			p.problems = append(p.problems, fmt.Sprintf("duplicate: chunk at %d, holding %d", c.Offset, held))
		case len(c.Data) > 0:
			dataChunks++
			if stream == 1 && dataChunks == p.breakAfter {
				p.mu.Unlock()
				return // the chunk is lost with the stream
			}
			p.held = append(p.held, c.Data...)
			p.chunks++
		}
		if len(c.Data) > logChunk {
			p.problems = append(p.problems, fmt.Sprintf("chunk of %d bytes", len(c.Data)))
		}
		if c.Done {
			p.done = true
		}
		n := int64(len(p.held))
		p.notify()
		p.mu.Unlock()
		if c.Done {
			_ = protocol.WriteFrame(st, protocol.LogAck{Offset: n})
			return
		}
	}
}

// waitFor waits until cond holds over the peer's state.
func (p *logPeer) waitFor(t *testing.T, what string, within time.Duration, cond func(p *logPeer) bool) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		ok, changed := cond(p), p.changed
		p.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func newTestLog(t *testing.T) *logFile {
	lf := newLogFile(filepath.Join(t.TempDir(), "logs", "1-1.log"))
	t.Cleanup(func() { lf.Close() })
	return lf
}

// line returns a log line of exactly n bytes that says which it is.
func line(i, n int) []byte {
	s := fmt.Sprintf("line %06d ", i)
	return []byte(s + strings.Repeat("x", n-len(s)-1) + "\n")
}

func TestSendLog_ResumesAtTheAckedOffsetWithoutGapsOrDuplicates(t *testing.T) {
	peer := newLogPeer()
	peer.refuseOpens = 2 // two streams die before the coordinator answers
	peer.breakAfter = 3  // then one dies mid-log, losing a chunk in flight
	link := newPipeLink(t, func(kind string, st net.Conn) {
		if kind != protocol.StreamLog {
			t.Errorf("unexpected stream %q", kind)
			return
		}
		peer.serve(st)
	})
	lf := newTestLog(t)
	var want bytes.Buffer
	write := func(from, to int) {
		for i := from; i < to; i++ {
			l := line(i, 1000)
			want.Write(l)
			if _, err := lf.Write(l); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(0, 300) // 300 kB before the sender starts: several chunks at once
	sent := make(chan error, 1)
	go func() {
		sent <- sendLog(context.Background(), link, protocol.WorkRef{Kind: protocol.WorkStep, ID: 1, Epoch: 1}, lf, testLogger(t))
	}()
	peer.waitFor(t, "the resumed stream", 30*time.Second, func(p *logPeer) bool { return p.streams >= 2 })
	write(300, 600) // more while it streams
	lf.finish()
	select {
	case err := <-sent:
		if err != nil {
			t.Fatalf("sendLog: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("sendLog did not finish")
	}
	peer.mu.Lock()
	defer peer.mu.Unlock()
	if len(peer.problems) > 0 {
		t.Errorf("protocol problems: %q", peer.problems)
	}
	if !peer.done || !bytes.Equal(peer.held, want.Bytes()) {
		t.Errorf("the coordinator holds %d bytes (done %v), want the %d written", len(peer.held), peer.done, want.Len())
	}
	if peer.opens != 4 || peer.streams != 2 {
		t.Errorf("%d opens, %d acked streams; want 4 and 2", peer.opens, peer.streams)
	}
}

func TestSendLog_SlowCoordinatorNeverBlocksTheBuild(t *testing.T) {
	peer := newLogPeer()
	peer.block = make(chan struct{})
	release := sync.OnceFunc(func() { close(peer.block) })
	link := newPipeLink(t, func(_ string, st net.Conn) { peer.serve(st) })
	t.Cleanup(release) // before the link's cleanup waits for the peer
	lf := newTestLog(t)
	sent := make(chan error, 1)
	go func() {
		sent <- sendLog(context.Background(), link, protocol.WorkRef{Kind: protocol.WorkStep, ID: 2, Epoch: 1}, lf, testLogger(t))
	}()
	peer.waitFor(t, "the stream", 30*time.Second, func(p *logPeer) bool { return p.streams == 1 })

	// The coordinator reads nothing (a synchronous pipe: the sender is stuck in its
	// first write) until the whole 8 MB of log is written: were the build's writes
	// held up by the sender, they would never end.
	var want bytes.Buffer
	start := time.Now()
	written := make(chan error, 1)
	go func() {
		for i := range 8000 {
			l := line(i, 1000)
			want.Write(l)
			if _, err := lf.Write(l); err != nil {
				written <- err
				return
			}
		}
		lf.finish()
		written <- nil
	}()
	select {
	case err := <-written:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the build's log writes are blocked by a coordinator that does not read")
	}
	took := time.Since(start)
	peer.mu.Lock()
	if len(peer.held) != 0 {
		t.Errorf("the blocked coordinator holds %d bytes", len(peer.held))
	}
	peer.mu.Unlock()
	t.Logf("8 MB written in %v with the coordinator not reading", took.Round(time.Millisecond))

	release()
	if err := <-sent; err != nil {
		t.Fatalf("sendLog: %v", err)
	}
	peer.mu.Lock()
	defer peer.mu.Unlock()
	if len(peer.problems) > 0 || !peer.done || !bytes.Equal(peer.held, want.Bytes()) {
		t.Errorf("problems %q, done %v, %d of %d bytes", peer.problems, peer.done, len(peer.held), want.Len())
	}
}

func TestSendLog_CancelEndsABlockedStream(t *testing.T) {
	peer := newLogPeer()
	peer.block = make(chan struct{})
	link := newPipeLink(t, func(_ string, st net.Conn) { peer.serve(st) })
	t.Cleanup(func() { close(peer.block) })
	lf := newTestLog(t)
	if _, err := lf.Write(line(0, 1000)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sent := make(chan error, 1)
	go func() {
		sent <- sendLog(ctx, link, protocol.WorkRef{Kind: protocol.WorkStep, ID: 3, Epoch: 1}, lf, testLogger(t))
	}()
	peer.waitFor(t, "the stream", 30*time.Second, func(p *logPeer) bool { return p.streams == 1 })
	cancel()
	select {
	case err := <-sent:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("sendLog after cancel: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("sendLog stuck in a write after the cancel")
	}
}

func TestSendLog_GivesUpOnACoordinatorThatKeepsRefusing(t *testing.T) {
	var opens int
	var mu sync.Mutex
	link := newPipeLink(t, func(_ string, st net.Conn) {
		var open protocol.LogOpen
		if protocol.ReadFrame(st, &open) != nil {
			return
		}
		mu.Lock()
		opens++
		mu.Unlock()
		_ = protocol.WriteFrame(st, protocol.LogAck{Error: "no lease for step 4 epoch 1"})
	})
	lf := newTestLog(t)
	lf.finish()
	err := sendLog(context.Background(), link, protocol.WorkRef{Kind: protocol.WorkStep, ID: 4, Epoch: 1}, lf, testLogger(t))
	var refused *logRefused
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), "no lease for step 4") {
		t.Fatalf("sendLog: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if opens != maxLogRefusals {
		t.Errorf("%d attempts, want %d", opens, maxLogRefusals)
	}
}

// coordPeer plays the coordinator for a whole step: log, upload and report streams.
type coordPeer struct {
	t   *testing.T
	log *logPeer
	// breakReports: the first report streams are cut before the verdict.
	breakReports int
	// crashInUpload, if set, is called when the first NAR of an upload has begun to
	// arrive; the stream is then cut, as the coordinator's crash would.
	crashInUpload func()
	verdict       protocol.StepVerdict

	mu          sync.Mutex
	events      []string
	offered     []string        // paths offered for upload
	received    map[string]bool // paths whose NAR arrived with the announced hash
	reports     []protocol.StepReport
	logAtReport []byte
}

func newCoordPeer(t *testing.T) *coordPeer {
	return &coordPeer{t: t, log: newLogPeer(), verdict: protocol.StepVerdict{Accepted: true}, received: map[string]bool{}}
}

func (c *coordPeer) event(e string) {
	c.mu.Lock()
	c.events = append(c.events, e)
	c.mu.Unlock()
}

func (c *coordPeer) serve(kind string, st net.Conn) {
	switch kind {
	case protocol.StreamLog:
		c.log.serve(st)
		c.log.mu.Lock()
		done := c.log.done
		c.log.mu.Unlock()
		if done {
			c.event("log done")
		}
	case protocol.StreamUpload:
		c.event("upload")
		c.upload(st)
	case protocol.StreamStepReport:
		var rep protocol.StepReport
		if err := protocol.ReadFrame(st, &rep); err != nil {
			c.t.Errorf("read report: %v", err)
			return
		}
		c.log.mu.Lock()
		held := slices.Clone(c.log.held)
		c.log.mu.Unlock()
		c.mu.Lock()
		c.reports = append(c.reports, rep)
		c.logAtReport = held
		cut := len(c.reports) <= c.breakReports
		c.events = append(c.events, "report")
		c.mu.Unlock()
		if cut {
			return
		}
		_ = protocol.WriteFrame(st, c.verdict)
	default:
		c.t.Errorf("unexpected stream %q", kind)
	}
}

// upload asks for every offered path and checks each NAR against its hash.
func (c *coordPeer) upload(st net.Conn) {
	var req protocol.UploadRequest
	if err := protocol.ReadFrame(st, &req); err != nil {
		c.t.Errorf("read upload request: %v", err)
		return
	}
	hashes := map[string]string{}
	var missing []string
	for _, p := range req.Paths {
		hashes[p.StorePath] = p.NarHash
		missing = append(missing, p.StorePath)
	}
	c.mu.Lock()
	c.offered = append(c.offered, missing...)
	c.mu.Unlock()
	if err := protocol.WriteFrame(st, protocol.UploadPlan{Missing: missing}); err != nil {
		return
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		c.t.Error(err)
		return
	}
	defer dec.Close()
	for _, p := range missing {
		cr := protocol.NewChunkReader(st)
		if c.crashInUpload != nil {
			if _, err := io.CopyN(io.Discard, cr, 1); err != nil {
				c.t.Errorf("read the start of the NAR of %s: %v", p, err)
			}
			c.crashInUpload()
			return
		}
		if err := dec.Reset(cr); err != nil {
			c.t.Error(err)
			return
		}
		h := sha256.New()
		if _, err := io.Copy(h, dec); err != nil {
			c.t.Errorf("read the NAR of %s: %v", p, err)
			return
		}
		_ = cr.Drain()
		want, err := nixhash.ParseAny(hashes[p], nil)
		ok := err == nil && bytes.Equal(want.Digest(), h.Sum(nil))
		c.mu.Lock()
		c.received[p] = ok
		c.mu.Unlock()
		if err := protocol.WriteFrame(st, protocol.UploadResult{StorePath: p, OK: ok}); err != nil {
			return
		}
	}
}

// instantiate writes a derivation running script with /bin/sh; its name carries the
// test's name and a random salt.
func instantiate(t *testing.T, script, extra string) string {
	t.Helper()
	if _, err := exec.LookPath("nix-instantiate"); err != nil {
		t.Skip("nix-instantiate not found")
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	salt := strings.ToLower(regexp.MustCompile(`[^a-zA-Z0-9]+`).ReplaceAllString(t.Name(), "-")) + "-" + hex.EncodeToString(b)
	expr := fmt.Sprintf("derivation {\n  name = \"fc-step-%s\";\n  system = builtins.currentSystem;\n  builder = \"/bin/sh\";\n"+
		"  args = [ \"-c\" ''\n    export PATH=/bin:/usr/bin\n    %s\n  '' ];\n  %s\n}\n", salt, script, extra)
	file := filepath.Join(t.TempDir(), "step.nix")
	if err := os.WriteFile(file, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nix-instantiate", "--option", "substituters", "", file)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix-instantiate: %v: %s", err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

func emptyCache(t *testing.T) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nix-cache-info"), []byte("StoreDir: /nix/store\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return "file://" + dir
}

func stepAssign(drv string, id int64) protocol.Assign {
	return protocol.Assign{Work: protocol.WorkRef{Kind: protocol.WorkStep, ID: id, Epoch: 2},
		Step: &protocol.StepTask{StepID: id, DrvPath: drv}}
}

func newBuild(t *testing.T) *StepRunner {
	return &StepRunner{StateDir: t.TempDir(), CacheURL: emptyCache(t), Logger: testLogger(t)}
}

// assertCleanedUp checks the step's log file and GC roots are gone.
func assertCleanedUp(t *testing.T, b *StepRunner) {
	t.Helper()
	for _, pattern := range []string{"logs/*", "gcroots/*", "xdg-cache/*"} {
		if left, _ := filepath.Glob(filepath.Join(b.StateDir, pattern)); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	}
}

func TestBuild_SuccessStreamsTheLogUploadsOutputsThenReports(t *testing.T) {
	t.Parallel()
	drv := instantiate(t, `
    echo "compiling"
    mkdir -p $out/nix-support
    echo "the manual" > $out/manual.txt
    echo "doc manual $out/manual.txt" > $out/nix-support/hydra-build-products
    echo "tests 42" > $out/nix-support/hydra-metrics
    echo "done"`, "")
	peer := newCoordPeer(t)
	peer.breakReports = 1 // the first report is lost with its stream
	link := newPipeLink(t, peer.serve)
	b := newBuild(t)
	if err := b.Run(context.Background(), stepAssign(drv, 10), link); err != nil {
		t.Fatalf("Run: %v", err)
	}
	peer.mu.Lock()
	defer peer.mu.Unlock()
	if len(peer.reports) != 2 || !reflectEqualReports(peer.reports[0], peer.reports[1]) {
		t.Fatalf("want the report sent twice, the same both times: %+v", peer.reports)
	}
	rep := peer.reports[1]
	if rep.Status != protocol.StepSucceeded || rep.Retry || rep.ExitCode != 0 || rep.Work != stepAssign(drv, 10).Work {
		t.Fatalf("report %+v", rep)
	}
	if len(rep.Outputs) != 1 || !peer.received[rep.Outputs[0].StorePath] || rep.Outputs[0].Deriver != drv {
		t.Errorf("outputs %+v; received %v", rep.Outputs, peer.received)
	}
	if len(rep.Products) != 1 || rep.Products[0].Name != "manual.txt" || rep.Products[0].FileSize != 11 ||
		len(rep.Metrics) != 1 || rep.Metrics[0].Value != 42 {
		t.Errorf("products %+v metrics %+v", rep.Products, rep.Metrics)
	}
	if !strings.Contains(string(peer.logAtReport), "compiling\n") || !strings.HasSuffix(string(peer.logAtReport), "done\n") ||
		rep.LogSize != int64(len(peer.logAtReport)) {
		t.Errorf("log at report time (%d bytes, report says %d):\n%s", len(peer.logAtReport), rep.LogSize, peer.logAtReport)
	}
	if rep.StartedAt.IsZero() || rep.FinishedAt.Before(rep.StartedAt) {
		t.Errorf("times %v %v", rep.StartedAt, rep.FinishedAt)
	}
	// The upload and the whole log come before the report.
	if want := []string{"upload", "log done", "report", "report"}; !slices.Equal(sortedFirstTwo(peer.events), want) {
		t.Errorf("events %v, want %v (upload and log in either order)", peer.events, want)
	}
	assertCleanedUp(t, b)
}

func reflectEqualReports(a, b protocol.StepReport) bool {
	return fmt.Sprintf("%+v", a) == fmt.Sprintf("%+v", b)
}

// sortedFirstTwo sorts the first two events: the log and the upload run side by side.
func sortedFirstTwo(ev []string) []string {
	ev = slices.Clone(ev)
	if len(ev) >= 2 {
		slices.SortFunc(ev[:2], func(a, b string) int { return -strings.Compare(a, b) })
	}
	return ev
}

func TestBuild_FailureReportsWithoutUploading(t *testing.T) {
	t.Parallel()
	drv := instantiate(t, `echo "tests failed"; exit 1`, "")
	peer := newCoordPeer(t)
	link := newPipeLink(t, peer.serve)
	b := newBuild(t)
	if err := b.Run(context.Background(), stepAssign(drv, 11), link); err != nil {
		t.Fatalf("Run: %v", err)
	}
	peer.mu.Lock()
	defer peer.mu.Unlock()
	if len(peer.reports) != 1 {
		t.Fatalf("reports %+v", peer.reports)
	}
	rep := peer.reports[0]
	if rep.Status != protocol.StepFailed || rep.Retry || rep.ExitCode != 100 || len(rep.Outputs) != 0 ||
		!strings.Contains(rep.Error, "failed with exit code 1") {
		t.Errorf("report %+v", rep)
	}
	if link.count(protocol.StreamUpload) != 0 {
		t.Error("a failed step uploaded something")
	}
	if !strings.Contains(string(peer.logAtReport), "tests failed\n") {
		t.Errorf("log %q", peer.logAtReport)
	}
	assertCleanedUp(t, b)
}

func TestBuild_InfrastructureFailureAsksForARetry(t *testing.T) {
	t.Parallel()
	drv := instantiate(t, `echo ok > $out`, `requiredSystemFeatures = [ "fc-test-absent-feature" ];`)
	peer := newCoordPeer(t)
	link := newPipeLink(t, peer.serve)
	b := newBuild(t)
	b.Features = []string{"big-parallel"}
	if err := b.Run(context.Background(), stepAssign(drv, 12), link); err != nil {
		t.Fatalf("Run: %v", err)
	}
	peer.mu.Lock()
	defer peer.mu.Unlock()
	if len(peer.reports) != 1 {
		t.Fatalf("reports %+v", peer.reports)
	}
	if rep := peer.reports[0]; rep.Status != "" || !rep.Retry || !strings.Contains(rep.Error, "fc-test-absent-feature") {
		t.Errorf("report %+v", rep)
	}
	assertCleanedUp(t, b)
}

func TestBuild_CancelStopsTheBuildAndReportsNothing(t *testing.T) {
	t.Parallel()
	drv := instantiate(t, `echo "started"; sleep 300; echo ok > $out`, "")
	peer := newCoordPeer(t)
	link := newPipeLink(t, peer.serve)
	b := newBuild(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- b.Run(ctx, stepAssign(drv, 13), link) }()
	peer.log.waitFor(t, "the builder's first line", time.Minute, func(p *logPeer) bool {
		return bytes.Contains(p.held, []byte("started\n"))
	})
	cancel()
	select {
	case err := <-ran:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run after cancel: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the cancel")
	}
	if n := link.count(protocol.StreamStepReport); n != 0 {
		t.Errorf("%d reports for a cancelled step", n)
	}
	assertCleanedUp(t, b)
}

func TestBuild_RefusedVerdictEndsTheWork(t *testing.T) {
	t.Parallel()
	drv := instantiate(t, `echo ok > $out`, "")
	peer := newCoordPeer(t)
	peer.verdict = protocol.StepVerdict{Accepted: false, Error: "lease epoch 2 is stale"}
	link := newPipeLink(t, peer.serve)
	b := newBuild(t)
	err := b.Run(context.Background(), stepAssign(drv, 14), link)
	if err == nil || !strings.Contains(err.Error(), "lease epoch 2 is stale") {
		t.Fatalf("Run: %v", err)
	}
	if n := link.count(protocol.StreamStepReport); n != 1 {
		t.Errorf("a refused report must not be retried: %d reports", n)
	}
	assertCleanedUp(t, b)
}

// A small log never touches the disk; one that outgrows memLog moves there, its
// writes gathered logFlush at a time, and reads at any offset (in the file, across its
// end, in what is not written yet) give what was written. Close writes the rest.
func TestLogFile_SmallStaysInMemoryLargeMovesToDisk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "logs", "1-1.log")
	lf := newLogFile(path)
	defer lf.Close()
	var want bytes.Buffer
	for i := range 10 {
		l := line(i, 100)
		want.Write(l)
		if _, err := lf.Write(l); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("a 1 kB log is on disk (%v)", err)
	}
	for i := 10; want.Len() <= memLog+5*logFlush+5000; i++ {
		l := line(i, 1000)
		if i == 300 {
			l = line(i, 2*logFlush) // a write larger than what is gathered
		}
		want.Write(l)
		if _, err := lf.Write(l); err != nil {
			t.Fatal(err)
		}
	}
	onDisk, err := os.ReadFile(path)
	if err != nil || len(onDisk) < want.Len()-logFlush || !bytes.Equal(onDisk, want.Bytes()[:len(onDisk)]) {
		t.Fatalf("the log on disk has %d bytes (err %v) of the %d written, not its start or more than %d behind",
			len(onDisk), err, want.Len(), logFlush)
	}
	if lf.size() != int64(want.Len()) {
		t.Fatalf("size %d, want %d", lf.size(), want.Len())
	}
	inFile := int64(len(onDisk))
	if inFile == int64(want.Len()) {
		t.Fatal("nothing is gathered: the reads below would not cross the file's end")
	}
	for _, off := range []int64{0, 999, memLog - 10, memLog + 10, inFile - 150, inFile - 1, inFile, int64(want.Len()) - 1} {
		buf := make([]byte, 100)
		if off == inFile-150 {
			buf = make([]byte, 300) // across the file's end
		}
		n, err := lf.ReadAt(buf, off)
		if (err != nil && err != io.EOF) || n != min(len(buf), want.Len()-int(off)) || !bytes.Equal(buf[:n], want.Bytes()[off:off+int64(n)]) {
			t.Errorf("ReadAt(%d): %d bytes %q, %v", off, n, buf[:n], err)
		}
	}
	if n, err := lf.ReadAt(make([]byte, 10), int64(want.Len())); n != 0 || err != io.EOF {
		t.Errorf("ReadAt(end): %d, %v; want 0, EOF", n, err)
	}
	if err := lf.Close(); err != nil {
		t.Fatal(err)
	}
	if onDisk, err := os.ReadFile(path); err != nil || !bytes.Equal(onDisk, want.Bytes()) {
		t.Fatalf("after Close the log on disk has %d bytes (err %v), %d were written", len(onDisk), err, want.Len())
	}
}

// TestBuild_UploadCutByACoordinatorCrashGoesToTheNextOne: the coordinator the
// agent is connected to dies as the outputs' NAR is on its way; the link's next
// streams reach the coordinator the agent moved to (agent/daemon), and the upload
// starts over there: the outputs arrive whole, then the report, both on the new one.
// The log is whole where it was finished (coordinators share their log storage;
// TestSendLog_* covers a log stream cut midway).
func TestBuild_UploadCutByACoordinatorCrashGoesToTheNextOne(t *testing.T) {
	t.Parallel()
	drv := instantiate(t, `echo "building"; seq 1 300000 > $out; echo "done"`, "")
	first, next := newCoordPeer(t), newCoordPeer(t)
	var crashed atomic.Bool
	first.crashInUpload = func() { crashed.Store(true) }
	link := newPipeLink(t, func(kind string, st net.Conn) {
		if crashed.Load() {
			next.serve(kind, st)
			return
		}
		first.serve(kind, st)
	})
	b := newBuild(t)
	if err := b.Run(context.Background(), stepAssign(drv, 14), link); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !crashed.Load() {
		t.Fatal("the first coordinator saw no upload")
	}
	first.mu.Lock()
	defer first.mu.Unlock()
	next.mu.Lock()
	defer next.mu.Unlock()
	if len(first.reports) != 0 || len(first.received) != 0 {
		t.Errorf("the crashed coordinator got reports %+v, NARs %v", first.reports, first.received)
	}
	if len(next.reports) != 1 || next.reports[0].Status != protocol.StepSucceeded {
		t.Fatalf("reports on the next coordinator: %+v", next.reports)
	}
	rep := next.reports[0]
	if len(rep.Outputs) != 1 || !next.received[rep.Outputs[0].StorePath] {
		t.Errorf("outputs %+v; received whole on the next coordinator: %v", rep.Outputs, next.received)
	}
	// The log usually ended on the first before the upload began; if not, its stream
	// went on there (only the upload was cut) or started over on the next.
	logged := first.log
	if first.log.mu.Lock(); !first.log.done {
		logged = next.log
	}
	first.log.mu.Unlock()
	logged.mu.Lock()
	defer logged.mu.Unlock()
	if got := string(logged.held); got != "building\ndone\n" || !logged.done || rep.LogSize != int64(len(got)) ||
		len(logged.problems) > 0 {
		t.Errorf("log: %q, finished %v, problems %v (report says %d bytes)", got, logged.done, logged.problems, rep.LogSize)
	}
	assertCleanedUp(t, b)
}
