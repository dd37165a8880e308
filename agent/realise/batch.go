package realise

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fc-ci/fc/agent/push"
	"github.com/fc-ci/fc/protocol"
)

// Batcher realises requests submitted concurrently (one goroutine per step) in shared
// nix-store processes, so a trivial step does not pay a Nix process start of its own:
// a batch is pending requests with the same process-wide options (substituters,
// keys, features, timeout, max-silent), gathered for a moment, realised by one
// `nix-store --realise D1 D2 … --keep-going -j N` whose internal-json log is split per
// derivation by Nix's activity ids. All batches together run at most MaxJobs builds:
// when the builds still free cover the pending requests, one batch builds them all at
// once; when there are more requests, they are shared out evenly over one batch per
// free build, each building one at a time. A batch's requests get their results when
// its nix-store exits (or earlier, see earlyFinisher). One `nix path-info --recursive`
// then gives every successful request its outputs' infos and closure.
//
// Stopping a batch stops every build in it (one builder cannot be killed alone): a
// request cancelled, or over its log limit, ends so, and each other request of its
// batch whose outputs are not valid yet ends as an infrastructure failure (the step
// is retried, with a fresh log, rather than re-run here: its live log already went
// out and cannot be taken back).
type Batcher struct {
	maxJobs int
	slots   int
	gather  time.Duration

	mu        sync.Mutex
	pending   []*job
	batches   int  // batch goroutines (gathering or running a process)
	gathering bool // a batch goroutine is gathering: it takes what arrives
	used      int  // builds the running batches may run at once (their -j), <= maxJobs
	inFlight  int  // requests taken by batches
	arrived   chan struct{}
	wg        sync.WaitGroup

	processes atomic.Int64
}

// BatcherConfig sizes a Batcher.
type BatcherConfig struct {
	// MaxJobs is how many builds the batches run at once, all together: each batch's
	// --max-jobs comes out of it (default 1).
	MaxJobs int
	// Slots is how many requests may be submitted at once (the agent's step slots);
	// a batch stops gathering early once every slot not in a batch has submitted.
	// Default MaxJobs.
	Slots int
	// Gather is how long a batch waits for more requests after its first (default
	// 3 ms).
	Gather time.Duration
}

// NewBatcher returns a Batcher; its goroutines run only while requests are in it.
func NewBatcher(cfg BatcherConfig) *Batcher {
	if cfg.MaxJobs < 1 {
		cfg.MaxJobs = 1
	}
	if cfg.Slots < 1 {
		cfg.Slots = cfg.MaxJobs
	}
	if cfg.Gather <= 0 {
		cfg.Gather = 3 * time.Millisecond
	}
	return &Batcher{maxJobs: cfg.MaxJobs, slots: cfg.Slots, gather: cfg.Gather, arrived: make(chan struct{}, 1)}
}

// Processes is how many nix-store --realise processes the Batcher has started.
func (b *Batcher) Processes() int64 { return b.processes.Load() }

// Wait waits until no batch runs.
func (b *Batcher) Wait() { b.wg.Wait() }

// Realise builds req.DrvPath in a batch, with Realise's contract (below).
func (b *Batcher) Realise(ctx context.Context, req Request) (Result, error) {
	j, err := newJob(ctx, req)
	if err != nil {
		return Result{}, err
	}
	b.mu.Lock()
	b.pending = append(b.pending, j)
	b.mu.Unlock()
	select {
	case b.arrived <- struct{}{}:
	default:
	}
	b.kick()
	select {
	case <-j.done:
		return j.res, j.err
	case <-ctx.Done():
	}
	// Still waiting for a batch: leave at once. Taken: the batch stops for us.
	b.mu.Lock()
	if i := slices.Index(b.pending, j); i >= 0 {
		b.pending = slices.Delete(b.pending, i, i+1)
		b.mu.Unlock()
		return Result{}, ctxError(ctx, req.DrvPath)
	}
	b.mu.Unlock()
	<-j.done
	return j.res, j.err
}

// Realise builds req.DrvPath in a process of its own. Build failures are a Result
// with their status and a nil error; an infrastructure failure is an error wrapping
// ErrInfrastructure (with the Result filled as far as it got); cancelling ctx stops
// Nix and its builder and returns ctx.Err().
func Realise(ctx context.Context, req Request) (Result, error) {
	j, err := newJob(ctx, req)
	if err != nil {
		return Result{}, err
	}
	runBatch([]*job{j}, 1)
	return j.res, j.err
}

func ctxError(ctx context.Context, drv string) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return ctx.Err()
	}
	return fmt.Errorf("%w: realise %s: %w", ErrInfrastructure, drv, ctx.Err())
}

// kick starts a batch goroutine if requests wait and the running batches leave room
// for a build.
func (b *Batcher) kick() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.pending) == 0 || b.used >= b.maxJobs || b.gathering {
		return
	}
	b.gathering = true
	b.used++ // the new batch's first build; it takes more when it has more
	b.batches++
	b.wg.Add(1)
	go b.run()
}

// run gathers one batch, realises it and hands out its results.
func (b *Batcher) run() {
	defer b.wg.Done()
	t := time.NewTimer(b.gather)
	defer t.Stop()
gather:
	for {
		b.mu.Lock()
		full := len(b.pending) >= b.slots-b.inFlight
		b.mu.Unlock()
		if full {
			break
		}
		select {
		case <-t.C:
			break gather
		case <-b.arrived:
		}
	}
	b.mu.Lock()
	var jobs []*job
	extra := 0
	if len(b.pending) > 0 {
		key := b.pending[0].key
		same := 0
		for _, j := range b.pending {
			if j.key == key {
				same++
			}
		}
		// The builds still free, this batch's own included. When there are more
		// requests than that, they are shared out evenly over that many batches
		// of one build at a time (-j1): a batch then spends its start and its end
		// (the Nix process starting, the outputs' path infos) while another one
		// builds, rather than all builds waiting for both. With fewer, one batch
		// builds them all at once.
		free := b.maxJobs - b.used + 1
		take := same
		if same > free {
			take = (same + free - 1) / free
		}
		rest := b.pending[:0]
		for _, j := range b.pending {
			if j.key == key && len(jobs) < take {
				jobs = append(jobs, j)
			} else {
				rest = append(rest, j)
			}
		}
		clear(b.pending[len(rest):])
		b.pending = rest
		if same <= free {
			extra = len(jobs) - 1
		}
	}
	b.gathering = false
	b.inFlight += len(jobs)
	b.used += extra
	b.mu.Unlock()
	if len(jobs) > 0 {
		b.kick() // requests with other options need a batch of their own
		b.processes.Add(1)
		runBatch(jobs, 1+extra)
	}
	b.mu.Lock()
	b.inFlight -= len(jobs)
	b.used -= 1 + extra
	b.batches--
	b.mu.Unlock()
	b.kick()
}

// job is one request in a batch.
type job struct {
	ctx  context.Context
	req  Request
	key  string
	lw   *limitWriter
	outs map[string]string
	done chan struct{}
	res  Result
	err  error

	// stopWatch ends the job's cancel watch once it finished early.
	stopWatch func() bool

	// mu guards what the log parser fills in and the early finisher reads: the log
	// writer, handed, started, errors, status, exit.
	mu sync.Mutex
	// handed: the job got its result while its batch went on; nothing more goes to
	// its log.
	handed bool

	// Filled by the log parser.
	started time.Time
	errors  []string
	status  string // StepFailed or StepTimedOut when a message said so
	exit    int
}

func newJob(ctx context.Context, req Request) (*job, error) {
	if req.DrvPath == "" {
		return nil, errors.New("realise: no derivation given")
	}
	if req.Log == nil {
		req.Log = io.Discard
	}
	key, _ := json.Marshal([]any{req.CacheURL, req.Substituters, req.TrustedKeys, req.Features, req.Timeout, req.MaxSilent})
	return &job{ctx: ctx, req: req, key: string(key), outs: req.Outputs, done: make(chan struct{})}, nil
}

func (j *job) finish(res Result, err error) {
	j.res, j.err = res, err
	close(j.done)
}

// Args is the nix-store command line realising reqs (without the program name):
// the process-wide options are the first request's.
func Args(maxJobs int, reqs ...Request) []string {
	req := reqs[0]
	subs := make([]string, 0, 1+len(req.Substituters))
	if req.CacheURL != "" {
		subs = append(subs, req.CacheURL)
	}
	subs = append(subs, req.Substituters...)
	args := []string{"--log-format", "internal-json", "--realise"}
	for _, r := range reqs {
		args = append(args, r.DrvPath)
	}
	args = append(args,
		"--option", "substituters", strings.Join(subs, " "),
		"--option", "narinfo-cache-negative-ttl", "0",
		// The agent is the builder: never hand a step to nix.conf's remote builders.
		"--option", "builders", "",
		"--max-jobs", strconv.Itoa(max(maxJobs, 1)),
		"--keep-going",
	)
	if req.NetrcFile != "" {
		args = append(args, "--option", "netrc-file", req.NetrcFile)
	}
	if len(req.TrustedKeys) > 0 {
		args = append(args, "--option", "trusted-public-keys", strings.Join(req.TrustedKeys, " "))
	}
	if len(req.Features) > 0 {
		args = append(args, "--option", "system-features", strings.Join(req.Features, " "))
	}
	if req.Timeout > 0 {
		args = append(args, "--timeout", strconv.FormatInt(int64(max(req.Timeout/time.Second, 1)), 10))
	}
	if req.MaxSilent > 0 {
		args = append(args, "--option", "max-silent-time", strconv.FormatInt(int64(max(req.MaxSilent/time.Second, 1)), 10))
	}
	return args
}

// runBatch realises jobs in one nix-store process and finishes every job.
func runBatch(jobs []*job, maxJobs int) {
	bctx := context.Background()
	jobs = prepare(bctx, jobs)
	if len(jobs) == 0 {
		return
	}
	reqs := make([]Request, len(jobs))
	for i, j := range jobs {
		reqs[i] = j.req
	}
	cmd := exec.Command("nix-store", Args(maxJobs, reqs...)...)
	cmd.Env = os.Environ()
	if home := jobs[0].req.CacheHome; home != "" {
		// The batch's Nix uses the first request's cache directory (only it is made:
		// each costs file system work, which adds up over thousands of steps).
		if err := os.MkdirAll(home, 0o700); err != nil {
			failAll(jobs, Result{}, fmt.Errorf("%w: create the Nix cache directory: %w", ErrInfrastructure, err))
			return
		}
		cmd.Env = append(cmd.Env, "XDG_CACHE_HOME="+home)
	}
	// Its own process group, so stopping it reaches every process Nix started; and
	// SIGINT if the agent dies (even by SIGKILL), so Nix stops its builders rather
	// than finishing steps nobody will report. (Pdeathsig follows the forking thread;
	// Go ends threads only behind LockOSThread, which the agent does not use.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGINT}
	// Our own pipe rather than an io.Writer: exec would wait for a copy goroutine that
	// a grandchild holding the pipe could keep open forever.
	pr, pw, err := os.Pipe()
	if err != nil {
		failAll(jobs, Result{}, fmt.Errorf("%w: create the log pipe: %w", ErrInfrastructure, err))
		return
	}
	defer pr.Close()
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		pw.Close()
		failAll(jobs, Result{}, fmt.Errorf("%w: start nix-store: %w", ErrInfrastructure, err))
		return
	}
	pw.Close()

	stop := make(chan struct{})
	var stopOnce sync.Once
	stopBatch := func() { stopOnce.Do(func() { close(stop) }) }
	for _, j := range jobs {
		j.lw = newLimitWriter(j.req.Log, j.req.MaxLogSize)
		j.lw.onStop = stopBatch
		j.stopWatch = context.AfterFunc(j.ctx, stopBatch)
		defer j.stopWatch()
	}
	d := newDemux(jobs)
	// Derivations finish one by one while the batch runs: each is handed on as soon
	// as Nix is done with it, so its step uploads and reports without waiting for the
	// slowest build of the batch.
	ef := &earlyFinisher{start: time.Now(), jobs: jobs, wake: make(chan struct{}, 1)}
	d.early = ef
	earlyDone := make(chan struct{})
	go func() { defer close(earlyDone); ef.run(bctx) }()
	parsed := make(chan []string, 1)
	go func() { parsed <- d.parse(pr) }()

	exited := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-exited:
			return
		case <-stop:
		}
		stopGroup(cmd.Process.Pid, exited)
	}()
	waitErr := cmd.Wait()
	close(exited)
	<-stopped

	var general []string
	select {
	case general = <-parsed:
	case <-time.After(drainGrace):
		_ = pr.SetReadDeadline(time.Now())
		general = <-parsed
	}
	close(ef.wake)
	<-earlyDone
	rest := jobs[:0:0]
	for _, j := range jobs {
		if !j.handed {
			rest = append(rest, j)
		}
	}
	jobs = rest
	wasStopped := false
	select {
	case <-stop:
		wasStopped = true
	default:
	}
	code := cmd.ProcessState.ExitCode()
	classify(bctx, jobs, code, wasStopped, general, waitErr)
}

// prepare creates each job's directories, learns outputs the request did not give
// and makes the GC roots; it finishes the jobs that fail and returns the others.
func prepare(ctx context.Context, jobs []*job) []*job {
	var unknown []string
	for _, j := range jobs {
		if len(j.outs) == 0 {
			unknown = append(unknown, j.req.DrvPath)
		}
	}
	outs := map[string]map[string]string{}
	if len(unknown) > 0 {
		var err error
		if outs, err = derivationOutputs(ctx, unknown...); err != nil && len(unknown) > 1 {
			// One unknown derivation fails them all: ask one at a time.
			outs = map[string]map[string]string{}
			for _, d := range unknown {
				if o, err := derivationOutputs(ctx, d); err == nil {
					outs[d] = o[d]
				}
			}
		}
	}
	kept := jobs[:0]
	for _, j := range jobs {
		if len(j.outs) == 0 {
			j.outs = outs[j.req.DrvPath]
			if len(j.outs) == 0 {
				_, err := derivationOutputs(ctx, j.req.DrvPath) // for its message
				if err == nil {
					err = fmt.Errorf("no outputs for %s", j.req.DrvPath)
				}
				j.finish(Result{}, fmt.Errorf("%w: %w", ErrInfrastructure, err))
				continue
			}
		}
		if j.req.GCRootDir != "" {
			if err := addRoots(j.req.GCRootDir, j.outs); err != nil {
				j.finish(Result{}, fmt.Errorf("%w: %w", ErrInfrastructure, err))
				continue
			}
		}
		kept = append(kept, j)
	}
	return kept
}

// addRoots makes dir/result (and dir/result-<output> for the other outputs) indirect
// GC roots of the outputs before they are built, as nix-store --add-root --indirect
// does: a symlink to the store path, and one to that symlink in Nix's gcroots/auto.
// Removing dir removes the roots (Nix drops the dangling auto link).
func addRoots(dir string, outs map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create the GC root directory: %w", err)
	}
	stateDir := os.Getenv("NIX_STATE_DIR")
	if stateDir == "" {
		stateDir = "/nix/var/nix"
	}
	auto := filepath.Join(stateDir, "gcroots", "auto")
	if err := os.MkdirAll(auto, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", auto, err)
	}
	for name, path := range outs {
		link := filepath.Join(dir, "result")
		if name != "out" {
			link += "-" + name
		}
		abs, err := filepath.Abs(link)
		if err != nil {
			return err
		}
		_ = os.Remove(abs)
		if err := os.Symlink(path, abs); err != nil {
			return fmt.Errorf("create the GC root %s: %w", abs, err)
		}
		sum := sha256.Sum256([]byte(abs))
		autoLink := filepath.Join(auto, "fc-"+hex.EncodeToString(sum[:16]))
		_ = os.Remove(autoLink)
		if err := os.Symlink(abs, autoLink); err != nil {
			return fmt.Errorf("register the GC root %s: %w", abs, err)
		}
	}
	return nil
}

func failAll(jobs []*job, res Result, err error) {
	for _, j := range jobs {
		j.finish(res, err)
	}
}

// stopGroup asks Nix to stop (SIGINT: it kills its builders, which run in sessions of
// their own that a signal to Nix's group does not reach), then kills the group if Nix
// has not exited within stopGrace.
func stopGroup(pid int, exited <-chan struct{}) {
	_ = syscall.Kill(-pid, syscall.SIGINT)
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-exited:
	case <-t.C:
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// classify gives every job its result once nix-store has exited with code.
func classify(ctx context.Context, jobs []*job, code int, wasStopped bool, general []string, waitErr error) {
	var candidates []*job // may have succeeded: no message said otherwise
	for _, j := range jobs {
		res := Result{ExitCode: code, LogSize: j.lw.n, StartedAt: j.started}
		errs := strings.Join(append(slices.Clone(j.errors), general...), "\n")
		switch {
		case j.ctx.Err() != nil:
			j.finish(res, ctxError(j.ctx, j.req.DrvPath))
		case j.lw.err != nil:
			j.finish(res, fmt.Errorf("%w: write the build log: %w", ErrInfrastructure, j.lw.err))
		case j.lw.exceeded:
			res.Status = protocol.StepLogLimitExceeded
			res.Error = fmt.Sprintf("the log exceeded the limit of %d bytes", j.req.MaxLogSize)
			j.finish(res, nil)
		case j.status != "":
			res.Status, res.ExitCode, res.Error = j.status, j.exit, errs
			j.finish(res, nil)
		default:
			candidates = append(candidates, j)
		}
	}
	if len(candidates) == 0 {
		return
	}
	var paths []string
	for _, j := range candidates {
		paths = append(paths, orderedOutputs(j.outs)...)
	}
	invalid := map[string]bool{}
	if code != 0 || wasStopped {
		var err error
		if invalid, err = invalidPaths(ctx, paths); err != nil {
			failAll(candidates, Result{ExitCode: code}, fmt.Errorf("%w: %w", ErrInfrastructure, err))
			return
		}
	}
	var built []*job
	var base []Result
	var valid []string
	for _, j := range candidates {
		outs := orderedOutputs(j.outs)
		if slices.ContainsFunc(outs, func(p string) bool { return invalid[p] }) {
			res := Result{ExitCode: code, LogSize: j.lw.n, StartedAt: j.started}
			if wasStopped {
				j.finish(res, fmt.Errorf("%w: realise %s: stopped with the other builds of its nix-store process (one was cancelled or exceeded its log limit)", ErrInfrastructure, j.req.DrvPath))
				continue
			}
			msg := strings.Join(append(slices.Clone(j.errors), general...), "\n")
			if msg == "" && waitErr != nil {
				msg = waitErr.Error()
			}
			j.finish(res, fmt.Errorf("%w: nix-store --realise %s exited with %d: %s", ErrInfrastructure, j.req.DrvPath, code, msg))
			continue
		}
		built = append(built, j)
		base = append(base, Result{LogSize: j.lw.n, StartedAt: j.started})
		valid = append(valid, outs...)
	}
	if len(built) == 0 {
		return
	}
	finishBuilt(ctx, built, base, valid)
}

// finishBuilt gives the jobs Nix built their results: base with what their outputs'
// path infos (valid: all the outputs, read in one nix process) add.
func finishBuilt(ctx context.Context, built []*job, base []Result, valid []string) {
	infos, err := pathInfosRecursive(ctx, valid)
	if err != nil {
		failAll(built, Result{}, fmt.Errorf("%w: read the outputs' path infos: %w", ErrInfrastructure, err))
		return
	}
	byPath := make(map[string]protocol.PathInfo, len(infos))
	for _, i := range infos {
		byPath[i.StorePath] = i
	}
	for i, j := range built {
		res, err := finish(j.req, j.outs, byPath, base[i])
		j.finish(res, err)
	}
}

// earlyFinisher gives derivations Nix built inside a running batch their results. A
// derivation is known built when its outputs are valid in Nix's database and Nix has
// counted as many builds done as there are such derivations: Nix registers outputs before it counts a build
// done, and prints a build's log before either, so every log handed on is whole.
// (Outputs merely existing proves nothing: without a sandbox the builder writes
// them in place.) Failures wait for the end of the batch: Nix 2.8 names a failed
// derivation only when nix-store ends, and its counters do not say which one failed.
type earlyFinisher struct {
	start   time.Time
	jobs    []*job
	wake    chan struct{} // a progress record counted more finished builds
	done    atomic.Int64  // builds Nix counted done, as far as the parser has read
	handedB int           // built jobs handed on so far
}

// progress is called by the parser with Nix's count of finished builds.
func (e *earlyFinisher) progress(done int64) {
	e.done.Store(done)
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Early finishing costs Nix processes of its own (a validity check, a path-info), so
// it starts only once a batch has run for earlyAfter (a batch of trivial steps ends
// sooner than that), and checks at most every earlyEvery.
const (
	earlyAfter = time.Second
	earlyEvery = 250 * time.Millisecond
)

func (e *earlyFinisher) run(ctx context.Context) {
	var last time.Time
	for range e.wake {
		if wait := earlyAfter - time.Since(e.start); wait > 0 {
			if !e.sleep(wait) {
				return
			}
		}
		if wait := earlyEvery - time.Since(last); wait > 0 {
			if !e.sleep(wait) {
				return
			}
		}
		last = time.Now()
		e.check(ctx)
	}
}

// sleep waits d unless the batch ends first (wake closed); wake-ups arriving
// meanwhile are folded into the check that follows.
func (e *earlyFinisher) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return true
		case _, open := <-e.wake: // folded into the check after the wait
			if !open {
				return false
			}
		}
	}
}

func (e *earlyFinisher) check(ctx context.Context) {
	var failed, maybe []*job
	for _, j := range e.jobs {
		j.mu.Lock()
		switch {
		case j.handed || j.started.IsZero() || j.lw.exceeded || j.lw.err != nil || j.ctx.Err() != nil:
		case j.status != "":
			failed = append(failed, j)
		default:
			maybe = append(maybe, j)
		}
		j.mu.Unlock()
	}
	for _, j := range failed {
		j.mu.Lock()
		j.handed = true
		res := Result{Status: j.status, ExitCode: j.exit, Error: strings.Join(j.errors, "\n"), LogSize: j.lw.n, StartedAt: j.started}
		j.mu.Unlock()
		j.stopWatch() // its step is done: a cancel now must not stop the batch
		j.finish(res, nil)
	}
	if len(maybe) == 0 {
		return
	}
	var paths []string
	for _, j := range maybe {
		paths = append(paths, orderedOutputs(j.outs)...)
	}
	invalid, err := invalidPaths(ctx, paths)
	if err != nil {
		return // the end of the batch classifies them
	}
	var built []*job
	for _, j := range maybe {
		if !slices.ContainsFunc(orderedOutputs(j.outs), func(p string) bool { return invalid[p] }) {
			built = append(built, j)
		}
	}
	if len(built) == 0 || int64(e.handedB+len(built)) > e.done.Load() {
		return // some of them are not counted yet: their logs may still be arriving
	}
	e.handedB += len(built)
	var valid []string
	base := make([]Result, len(built))
	for i, j := range built {
		j.mu.Lock()
		j.handed = true
		base[i] = Result{LogSize: j.lw.n, StartedAt: j.started}
		j.mu.Unlock()
		j.stopWatch()
		valid = append(valid, orderedOutputs(j.outs)...)
	}
	finishBuilt(ctx, built, base, valid)
}

// finish classifies a derivation Nix built and reads its outputs' metadata.
func finish(req Request, outs map[string]string, byPath map[string]protocol.PathInfo, res Result) (Result, error) {
	res.OutputPaths = outs
	paths := orderedOutputs(outs)
	res.Status = protocol.StepSucceeded
	for _, p := range paths {
		if _, err := os.Lstat(filepath.Join(p, "nix-support", "failed")); err == nil {
			res.Status = protocol.StepFailedWithOutput
			res.Error = "the builder marked its output as failed (nix-support/failed)"
			break
		}
	}
	infos := make([]protocol.PathInfo, 0, len(paths))
	for _, p := range paths {
		i, ok := byPath[p]
		if !ok {
			return res, fmt.Errorf("%w: nix path-info did not list the output %s", ErrInfrastructure, p)
		}
		infos = append(infos, i)
		res.OutputSize += i.NarSize
	}
	if req.MaxOutputSize > 0 && res.OutputSize > req.MaxOutputSize {
		res.Status = protocol.StepOutputLimitExceeded
		res.Error = fmt.Sprintf("the outputs are %d bytes, over the limit of %d", res.OutputSize, req.MaxOutputSize)
		return res, nil
	}
	res.Outputs = infos
	closure, err := closureOf(paths, byPath)
	if err != nil {
		return res, fmt.Errorf("%w: %w", ErrInfrastructure, err)
	}
	res.Closure = closure
	meta, err := ReadMetadata(paths)
	if err != nil {
		return res, fmt.Errorf("%w: %w", ErrInfrastructure, err)
	}
	res.Products, res.Metrics, res.ReleaseName = meta.Products, meta.Metrics, meta.ReleaseName
	return res, nil
}

// closureOf is the infos of roots and everything they reference, from byPath.
func closureOf(roots []string, byPath map[string]protocol.PathInfo) ([]protocol.PathInfo, error) {
	seen := map[string]bool{}
	var out []protocol.PathInfo
	stack := slices.Clone(roots)
	for len(stack) > 0 {
		p := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[p] {
			continue
		}
		seen[p] = true
		i, ok := byPath[p]
		if !ok {
			return nil, fmt.Errorf("nix path-info --recursive did not list %s", p)
		}
		out = append(out, i)
		stack = append(stack, i.References...)
	}
	return out, nil
}

// invalidPaths lists which of paths are not valid in the local store.
func invalidPaths(ctx context.Context, paths []string) (map[string]bool, error) {
	cmd := exec.CommandContext(ctx, "nix-store", append([]string{"--check-validity", "--print-invalid"}, paths...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("nix-store --check-validity: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	invalid := map[string]bool{}
	for _, p := range strings.Fields(string(out)) {
		invalid[p] = true
	}
	return invalid, nil
}

// pathInfosRecursive is `nix path-info --json --recursive` of paths: their infos and
// those of everything they reference.
func pathInfosRecursive(ctx context.Context, paths []string) ([]protocol.PathInfo, error) {
	args := append([]string{"--extra-experimental-features", "nix-command", "path-info", "--json", "--recursive",
		"--option", "substituters", ""}, paths...)
	cmd := exec.CommandContext(ctx, "nix", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	raw, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("nix path-info: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return push.ParsePathInfo(raw)
}

// Nix's activity types and results that the demultiplexer follows.
const (
	actBuilds   = 104 // all the builds of the process; its progress counts them
	actBuild    = 105 // one derivation's build
	resProgress = 105 // [done, expected, running, failed] of an activity
)

// drvInMsg finds the derivations a message names.
var drvInMsg = regexp.MustCompile(`/nix/store/[0-9a-z]{32}-[^'"\s]+\.drv`)

// demux splits a batch's internal-json log per derivation.
type demux struct {
	jobs  []*job
	byDrv map[string]*job
	byAct map[uint64]*job
	// early hands on derivations finished while the batch runs (nil: none is).
	early  *earlyFinisher
	builds uint64 // the activity counting the builds (type actBuilds)
}

func newDemux(jobs []*job) *demux {
	d := &demux{jobs: jobs, byDrv: map[string]*job{}, byAct: map[uint64]*job{}}
	for _, j := range jobs {
		d.byDrv[j.req.DrvPath] = j
	}
	return d
}

// parse reads nix's stderr until EOF or a read error and returns the error messages
// that named no derivation of the batch. It keeps draining after the logs have
// stopped taking bytes, so Nix never blocks on a full pipe.
func (d *demux) parse(r io.Reader) []string {
	var general []string
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			if msg, ok := d.line(line); ok {
				general = append(general, msg)
			}
		}
		if err != nil {
			return general
		}
	}
}

// all writes p to every job's log (not to those already handed on: their logs are
// complete).
func (d *demux) all(p []byte) {
	for _, j := range d.jobs {
		j.write(p)
	}
}

// progress passes on Nix's count of builds done ([done, expected, running, failed]).
func (d *demux) progress(fields []json.RawMessage) {
	var done int64
	if d.early == nil || len(fields) < 1 || json.Unmarshal(fields[0], &done) != nil {
		return
	}
	d.early.progress(done)
}

// write adds to one job's log unless it was already handed on.
func (j *job) write(p []byte) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.handed {
		j.lw.write(p)
	}
}

func (d *demux) line(line []byte) (general string, isGeneral bool) {
	body, ok := bytes.CutPrefix(line, []byte("@nix "))
	if !ok {
		d.all(line)
		return "", false
	}
	var rec record
	if err := json.Unmarshal(bytes.TrimSpace(body), &rec); err != nil {
		d.all(line)
		return "", false
	}
	switch {
	case rec.Action == "start" && rec.Type == actBuild && len(rec.Fields) > 0:
		var drv string
		if json.Unmarshal(rec.Fields[0], &drv) == nil {
			if j := d.byDrv[drv]; j != nil {
				d.byAct[rec.ID] = j
				j.mu.Lock()
				if j.started.IsZero() {
					j.started = time.Now().UTC()
				}
				j.mu.Unlock()
			}
		}
	case rec.Action == "start" && rec.Type == actBuilds:
		d.builds = rec.ID
	case rec.Action == "result" && rec.Type == resProgress && rec.ID == d.builds && d.builds != 0:
		d.progress(rec.Fields) // [done, expected, running, failed] of the builds
	case rec.Action == "result" && (rec.Type == resBuildLogLine || rec.Type == resPostBuildLogLine) && len(rec.Fields) > 0:
		var text string
		if json.Unmarshal(rec.Fields[0], &text) != nil {
			return "", false
		}
		j := d.byAct[rec.ID]
		if j == nil && len(d.jobs) == 1 {
			j = d.jobs[0]
		}
		if j != nil {
			j.write(append([]byte(text), '\n'))
		}
	case rec.Action == "msg" && rec.Level <= lvlError:
		text := ansi.ReplaceAllString(rec.Msg, "")
		short := strings.TrimPrefix(text, "error: ")
		var named []*job
		for _, drv := range drvInMsg.FindAllString(text, -1) {
			if j := d.byDrv[drv]; j != nil && !slices.Contains(named, j) {
				named = append(named, j)
			}
		}
		switch len(named) {
		case 0:
			d.all(append([]byte(text), '\n'))
			return short, true
		case 1:
			j := named[0]
			j.mu.Lock()
			defer j.mu.Unlock()
			if j.handed {
				return "", false
			}
			j.errors = append(j.errors, short)
			j.lw.write(append([]byte(text), '\n'))
			switch {
			case strings.Contains(short, "timed out"):
				j.status, j.exit = protocol.StepTimedOut, 101
			case strings.Contains(short, "hash mismatch in fixed-output derivation"):
				j.status, j.exit = protocol.StepFailed, 102
			case strings.Contains(short, "may not be deterministic"):
				j.status, j.exit = protocol.StepFailed, 104
			case strings.HasPrefix(short, "builder for ") && strings.Contains(short, " failed with exit code "):
				if j.status == "" {
					j.status, j.exit = protocol.StepFailed, 100
				}
			}
		default:
			// A summary naming several steps ("build of 'a', 'b' failed"): each has
			// its own message already.
		}
	}
	return "", false
}
