package work

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/fc-ci/fc/agent/push"
	"github.com/fc-ci/fc/agent/realise"
	"github.com/fc-ci/fc/internal/backoff"
	"github.com/fc-ci/fc/protocol"
)

// StepRunner builds steps on this agent: realise the derivation while its log streams to
// the coordinator, upload the outputs' closure, then report.
type StepRunner struct {
	// StateDir holds the step logs (StateDir/logs), the GC roots of outputs not yet
	// reported (StateDir/gcroots) and Nix's caches of binary cache lookups
	// (StateDir/xdg-cache): one per step, as concurrent nix-store processes sharing
	// a fresh one fail on its SQLite database ("constraint failed").
	StateDir string
	// CacheURL is the coordinator's binary cache: its base URL + "/nix-cache".
	CacheURL string
	// CurrentCacheURL, if set, replaces CacheURL: the cache of the coordinator the
	// agent is connected to now (it moves when that one goes away).
	CurrentCacheURL func() string
	// NetrcFile, if set, is the netrc file Nix presents credentials from (CacheLogin
	// keeps it): the agent's cache read token for CacheURL first.
	NetrcFile string
	// Features are the system features the agent advertises; empty: Nix's own.
	Features []string
	// CompressionLevel is the zstd level of output uploads (0: fastest).
	CompressionLevel int
	Logger           *slog.Logger
	// MaxJobs is Nix's --max-jobs and the most nix-store processes at once; Slots is
	// how many steps run at once (the agent's step slots). Steps that run together
	// share nix-store processes (realise.Batcher). Zero: 1 and MaxJobs.
	MaxJobs, Slots int
	// NixConnection is realise.ConnectionDaemon or realise.ConnectionProcess
	// (the default).
	NixConnection string

	batcherOnce sync.Once
	batcher     *realise.Batcher
	// cached is what this agent has learnt the coordinator's cache holds: uploads
	// leave it out of their offers (see push.Cached).
	cached *push.Cached
}

func (b *StepRunner) cacheURL() string {
	if b.CurrentCacheURL != nil {
		return b.CurrentCacheURL()
	}
	return b.CacheURL
}

func (b *StepRunner) batch() *realise.Batcher {
	b.batcherOnce.Do(func() {
		b.batcher = realise.NewBatcher(realise.BatcherConfig{MaxJobs: b.MaxJobs, Slots: b.Slots, Connection: b.NixConnection,
			DaemonCacheDir: filepath.Join(b.StateDir, "nix-daemon"), Logger: b.Logger})
		b.cached = push.NewCached(0)
	})
	return b.batcher
}

// Log streaming: the largest chunk, and how often an idle stream carries an empty
// chunk so a silent build does not let the coordinator's idle deadline end it.
const (
	logChunk     = 64 << 10
	logKeepalive = protocol.StreamIdleTimeout / 3
)

// Retries of streams to the coordinator (the link itself waits across reconnects).
const (
	retryMin        = 100 * time.Millisecond
	retryMax        = 10 * time.Second
	uploadAttempts  = 5
	reportRetryWarn = 3
	// storeAttempts bound the attempts while the coordinator's own storage fails
	// (push.ErrNotStored): about half a minute of backoff, what an S3 server or
	// PostgreSQL takes to restart, rather than a rebuild on another agent.
	storeAttempts = 10
)

// Run implements daemon.Executor.
func (b *StepRunner) Run(ctx context.Context, a protocol.Assign, link Link) error {
	if a.Step == nil {
		return errors.New("step assignment without a task")
	}
	t := *a.Step
	logger := b.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("step", t.StepID, "epoch", a.Work.Epoch)
	name := fmt.Sprintf("%d-%d", t.StepID, a.Work.Epoch)
	logPath := filepath.Join(b.StateDir, "logs", name+".log")
	rootDir := filepath.Join(b.StateDir, "gcroots", name)
	cacheHome := filepath.Join(b.StateDir, "xdg-cache", name)
	defer func() {
		if err := realise.RemoveRoots(rootDir); err != nil {
			logger.Warn("remove the step's GC roots", "path", rootDir, "err", err)
		}
		for _, p := range []string{logPath, cacheHome} {
			if err := os.RemoveAll(p); err != nil {
				logger.Warn("remove step files", "path", p, "err", err)
			}
		}
	}()
	lf := newLogFile(logPath) // on disk only if it grows large: a failure then fails its Write
	defer lf.Close()

	sendCtx, stopSending := context.WithCancel(ctx)
	defer stopSending()
	sent := make(chan error, 1)
	go func() { sent <- sendLog(sendCtx, link, a.Work, lf, logger) }()

	started := time.Now().UTC()
	logger.Info("building", "drv", t.DrvPath)
	batcher := b.batch() // before b.cached is read
	res, err := batcher.Realise(ctx, realise.Request{
		DrvPath: t.DrvPath, Outputs: t.Outputs,
		CacheURL: b.cacheURL(), NetrcFile: b.NetrcFile, Substituters: t.Substituters, TrustedKeys: t.TrustedKeys, Features: b.Features,
		Timeout: time.Duration(t.TimeoutSecs) * time.Second, MaxSilent: time.Duration(t.MaxSilentSecs) * time.Second,
		MaxLogSize: t.MaxLogSize, MaxOutputSize: t.MaxOutputSize,
		GCRootDir: rootDir, CacheHome: cacheHome, Log: lf, InCache: b.cached.Has,
	})
	lf.finish()
	if !res.StartedAt.IsZero() {
		started = res.StartedAt // when Nix began this derivation, not its batch
	}
	rep := protocol.StepReport{Work: a.Work, Status: res.Status, ExitCode: res.ExitCode, Error: res.Error,
		LogSize: lf.size(), StartedAt: started, FinishedAt: time.Now().UTC()}
	switch {
	case errors.Is(err, context.Canceled) || ctx.Err() != nil:
		stopSending()
		<-sent
		logger.Info("step cancelled")
		return ctx.Err()
	case err != nil:
		logger.Warn("step failed for a reason of the infrastructure; it will be retried", "err", err)
		rep.Status, rep.Retry, rep.Error = "", true, err.Error()
	case res.Status == protocol.StepSucceeded || res.Status == protocol.StepFailedWithOutput:
		if err := b.uploadOutputs(ctx, link, res.OutputPaths, res.Closure, logger); err != nil {
			if ctx.Err() != nil {
				stopSending()
				<-sent
				return ctx.Err()
			}
			logger.Warn("upload the outputs; the step will be retried", "err", err)
			rep.Status, rep.Retry, rep.Error = "", true, fmt.Sprintf("upload the outputs: %v", err)
			break
		}
		rep.Outputs, rep.Products, rep.Metrics, rep.ReleaseName = res.Outputs, res.Products, res.Metrics, res.ReleaseName
	}
	// The report comes after the coordinator holds the whole log.
	if err := <-sent; err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		logger.Warn("the step log could not be delivered in full", "err", err)
	}
	return b.report(ctx, link, rep, logger)
}

// reportInfra reports a failure before the build could start.
func (b *StepRunner) reportInfra(ctx context.Context, link Link, w protocol.WorkRef, logger *slog.Logger, err error) error {
	logger.Warn("step failed for a reason of the infrastructure; it will be retried", "err", err)
	now := time.Now().UTC()
	return b.report(ctx, link, protocol.StepReport{Work: w, Retry: true, Error: err.Error(), StartedAt: now, FinishedAt: now}, logger)
}

// uploadOutputs puts the outputs' closure in the coordinator's cache (skipping what
// it or an upstream has), retrying a broken stream a few times: rebuilding elsewhere
// costs more than waiting for the session to come back. closure is the closure's path
// infos when the build gave them (no Nix process needed then), less what b.cached
// holds; an offer that left out something the cache no longer holds is made again
// with the whole closure.
func (b *StepRunner) uploadOutputs(ctx context.Context, link Link, outputs map[string]string, closure []protocol.PathInfo, logger *slog.Logger) error {
	paths := make([]string, 0, len(outputs))
	for _, p := range outputs {
		paths = append(paths, p)
	}
	infos := closure
	if len(infos) == 0 {
		var err error
		if infos, err = push.ClosureInfos(ctx, paths); err != nil {
			return err
		}
	}
	opts := push.Options{Cached: b.cached}
	if b.CompressionLevel > 0 {
		opts.Level = zstd.EncoderLevelFromZstd(b.CompressionLevel)
	}
	whole := len(closure) == 0
	for attempt := 0; ; attempt++ {
		st, err := push.Upload(ctx, streamOpener{ctx, link}, infos, opts)
		if err == nil {
			logger.Info("outputs uploaded", "paths", st.Offered, "sent", st.Sent, "upstream", st.Upstream,
				"nar_bytes", st.NarBytes, "elapsed", st.Elapsed.Round(time.Millisecond))
			return nil
		}
		if errors.Is(err, push.ErrIncompleteOffer) && !whole {
			// The cache lost something this agent believed it held (Upload forgot
			// every belief): offer the whole closure, at once.
			logger.Info("the cache no longer holds paths the offer left out; offering the whole closure", "err", err)
			if infos, err = push.ClosureInfos(ctx, paths); err != nil {
				return err
			}
			whole = true
			attempt--
			continue
		}
		limit := uploadAttempts
		if errors.Is(err, push.ErrNotStored) {
			limit = storeAttempts
		}
		if errors.Is(err, push.ErrRejected) || errors.Is(err, push.ErrRefused) || errors.Is(err, push.ErrIncompleteOffer) ||
			attempt+1 >= limit || ctx.Err() != nil {
			return err
		}
		logger.Warn("upload the outputs; retrying", "err", err, "attempt", attempt+1)
		if !wait(ctx, retryDelay(attempt)) {
			return ctx.Err()
		}
	}
}

// report sends the step's report until the coordinator answers, across reconnects,
// until ctx ends.
func (b *StepRunner) report(ctx context.Context, link Link, rep protocol.StepReport, logger *slog.Logger) error {
	for attempt := 0; ; attempt++ {
		v, err := sendReport(ctx, link, rep)
		if err == nil {
			if !v.Accepted {
				return fmt.Errorf("coordinator refused the report of step %d (the lease was lost?): %s", rep.Work.ID, v.Error)
			}
			logger.Info("step reported", "status", rep.Status, "retry", rep.Retry, "exit_code", rep.ExitCode, "error", rep.Error)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if attempt+1 >= reportRetryWarn {
			logger.Warn("report the step; retrying", "err", err, "attempt", attempt+1)
		}
		if !wait(ctx, retryDelay(attempt)) {
			return ctx.Err()
		}
	}
}

func sendReport(ctx context.Context, link Link, rep protocol.StepReport) (protocol.StepVerdict, error) {
	st, err := link.OpenStream(ctx, protocol.StreamStepReport)
	if err != nil {
		return protocol.StepVerdict{}, err
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	if err := protocol.WriteFrame(st, rep); err != nil {
		return protocol.StepVerdict{}, err
	}
	var v protocol.StepVerdict
	if err := protocol.ReadFrame(st, &v); err != nil {
		return protocol.StepVerdict{}, fmt.Errorf("read the coordinator's verdict: %w", err)
	}
	return v, nil
}

// retryDelay is the wait before stream retry number attempt.
func retryDelay(attempt int) time.Duration { return backoff.Delay(attempt, retryMin, retryMax) }

// wait waits d or until ctx ends (false).
func wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// logFile is a step's log: the build appends to it and never waits for the network;
// the sender reads what has been written and is woken on every write. It stays in
// memory while it is small (most logs; creating a file costs more than a trivial
// build's log) and moves to a file on disk once it outgrows memLog.
type logFile struct {
	path string
	wake chan struct{} // one sender waits on it

	mu       sync.Mutex
	mem      []byte   // the log, until it outgrows memLog
	w, r     *os.File // the log, after: the file holds n-len(pend) bytes
	pend     []byte   // the bytes after the file's, written to it once logFlush are there
	n        int64
	finished bool
}

// memLog is how much of a log is kept in memory before it moves to disk; logFlush is
// how much the file's writes gather once it has (a chatty build writes lines of a few
// bytes: one write each would cost more than the build's own).
const (
	memLog   = 256 << 10
	logFlush = 64 << 10
)

// newLogFile starts an empty log that moves to path if it outgrows memLog.
func newLogFile(path string) *logFile {
	return &logFile{path: path, wake: make(chan struct{}, 1)}
}

// spill moves the log to its file; l.mu is held.
func (l *logFile) spill() error {
	if err := os.MkdirAll(filepath.Dir(l.path), 0o755); err != nil {
		return err
	}
	w, err := os.OpenFile(l.path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	if _, err := w.Write(l.mem); err != nil {
		w.Close()
		return err
	}
	r, err := os.Open(l.path)
	if err != nil {
		w.Close()
		return err
	}
	l.w, l.r, l.mem = w, r, nil
	return nil
}

// Write appends to the log.
func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.signal()
	defer l.mu.Unlock()
	if l.w == nil && len(l.mem)+len(p) <= memLog {
		l.mem = append(l.mem, p...)
		l.n += int64(len(p))
		return len(p), nil
	}
	if l.w == nil {
		if err := l.spill(); err != nil {
			return 0, fmt.Errorf("write the step log to disk: %w", err)
		}
	}
	if len(l.pend)+len(p) > logFlush {
		if err := l.flush(); err != nil {
			return 0, err
		}
	}
	if len(p) >= logFlush {
		n, err := l.w.Write(p)
		l.n += int64(n)
		if err != nil {
			return n, fmt.Errorf("write the step log to disk: %w", err)
		}
		return n, nil
	}
	l.pend = append(l.pend, p...)
	l.n += int64(len(p))
	return len(p), nil
}

// flush writes the gathered bytes to the file; l.mu is held.
func (l *logFile) flush() error {
	if len(l.pend) == 0 {
		return nil
	}
	k, err := l.w.Write(l.pend)
	l.pend = l.pend[:copy(l.pend, l.pend[k:])]
	if err != nil {
		return fmt.Errorf("write the step log to disk: %w", err)
	}
	return nil
}

// ReadAt reads the log at off (below what was written).
func (l *logFile) ReadAt(p []byte, off int64) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w == nil {
		if off >= int64(len(l.mem)) {
			return 0, io.EOF
		}
		return copy(p, l.mem[off:]), nil
	}
	// What the file holds is read from it, what follows from pend.
	inFile := l.n - int64(len(l.pend))
	if off >= inFile {
		if off >= l.n {
			return 0, io.EOF
		}
		return copy(p, l.pend[off-inFile:]), nil
	}
	want := min(int64(len(p)), inFile-off)
	k, err := l.r.ReadAt(p[:want], off)
	if int64(k) < want {
		return k, err
	}
	return k + copy(p[k:], l.pend), nil
}

func (l *logFile) signal() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// finish marks the log complete.
func (l *logFile) finish() {
	l.mu.Lock()
	l.finished = true
	l.mu.Unlock()
	l.signal()
}

func (l *logFile) size() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

func (l *logFile) state() (int64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n, l.finished
}

func (l *logFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.w == nil {
		return nil
	}
	return errors.Join(l.flush(), l.w.Close(), l.r.Close())
}

// sendLog streams the log to the coordinator until it holds all of it, reopening
// the stream after any error and resuming where the coordinator's copy ends. A
// coordinator that keeps refusing the stream (the lease is gone, its log storage
// fails) is given up on after maxLogRefusals: the report then goes without the
// complete log, and its verdict decides.
func sendLog(ctx context.Context, link Link, w protocol.WorkRef, lf *logFile, logger *slog.Logger) error {
	refusals := 0
	for attempt := 0; ; attempt++ {
		progressed, err := sendLogOnce(ctx, link, w, lf)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var refused *logRefused
		if errors.As(err, &refused) {
			if refusals++; refusals >= maxLogRefusals {
				return err
			}
		} else {
			refusals = 0
		}
		if progressed {
			attempt = 0
		}
		logger.Warn("log stream broke; resuming", "err", err)
		if !wait(ctx, retryDelay(attempt)) {
			return ctx.Err()
		}
	}
}

// maxLogRefusals is how many refusals in a row end the log's delivery.
const maxLogRefusals = 5

// logRefused is the coordinator's refusal of a log stream (LogAck.Error).
type logRefused struct{ msg string }

func (e *logRefused) Error() string { return "coordinator refused the log: " + e.msg }

// sendLogOnce runs one log stream; progressed says whether the coordinator
// took it (so the next attempt starts from the shortest delay).
func sendLogOnce(ctx context.Context, link Link, w protocol.WorkRef, lf *logFile) (progressed bool, err error) {
	st, err := link.OpenStream(ctx, protocol.StreamLog)
	if err != nil {
		return false, err
	}
	defer st.Close()
	stop := context.AfterFunc(ctx, func() { st.Close() })
	defer stop()
	if err := protocol.WriteFrame(st, protocol.LogOpen{Work: w}); err != nil {
		return false, err
	}
	var ack protocol.LogAck
	if err := protocol.ReadFrame(st, &ack); err != nil {
		return false, fmt.Errorf("read the log ack: %w", err)
	}
	if ack.Error != "" {
		return false, &logRefused{ack.Error}
	}
	off := ack.Offset
	if n := lf.size(); off < 0 || off > n {
		return false, &logRefused{fmt.Sprintf("it holds %d bytes of a %d-byte log", off, n)}
	}
	buf := make([]byte, logChunk)
	idle := time.NewTimer(logKeepalive)
	defer idle.Stop()
	for {
		n, finished := lf.state()
		if off < n {
			k, err := lf.ReadAt(buf[:min(n-off, logChunk)], off)
			if k == 0 && err != nil {
				return true, fmt.Errorf("read the step log: %w", err)
			}
			if err := protocol.WriteFrame(st, protocol.LogChunk{Offset: off, Data: buf[:k]}); err != nil {
				return true, err
			}
			off += int64(k)
			idle.Reset(logKeepalive)
			continue
		}
		if finished {
			if err := protocol.WriteFrame(st, protocol.LogChunk{Offset: off, Done: true}); err != nil {
				return true, err
			}
			if err := protocol.ReadFrame(st, &ack); err != nil {
				return true, fmt.Errorf("read the final log ack: %w", err)
			}
			if ack.Error != "" {
				return true, &logRefused{ack.Error}
			}
			if ack.Offset != n { // it kept less than it was sent (its own log limit?)
				return true, &logRefused{fmt.Sprintf("it holds %d bytes of the %d-byte log", ack.Offset, n)}
			}
			return true, nil
		}
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case <-lf.wake:
		case <-idle.C:
			// An empty chunk at the end of what the coordinator holds changes nothing
			// but keeps the stream alive through a silent build.
			if err := protocol.WriteFrame(st, protocol.LogChunk{Offset: off}); err != nil {
				return true, err
			}
			idle.Reset(logKeepalive)
		}
	}
}
