// The Batcher: concurrent requests gathered into batches that share one nix-store
// process, and sized so that all batches together run at most MaxJobs builds.

package realise

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fc-ci/fc/agent/nixworker"
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

	processes  atomic.Int64
	batchesRun atomic.Int64

	// pool holds warm nix-daemon connections (nil: the process path).
	pool      *nixworker.Pool
	buildHook string    // for daemon connections; see declineHook
	side      *sideConn // for daemon connections: the early finishers' queries
	// http fetches the .drv files of derivations sent whole (see basicFor).
	http        *http.Client
	known       knownOutputs
	basicBuilds atomic.Int64
	logger      *slog.Logger
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
	// Connection is ConnectionDaemon (batches on warm nix-daemon --stdio
	// connections, falling back to processes with a log line when no daemon starts)
	// or ConnectionProcess (the default: a nix-store process per batch).
	Connection string
	// DaemonCommand replaces nixworker.DefaultCommand; DaemonCacheDir holds the
	// daemons' XDG_CACHE_HOMEs (default os.TempDir()).
	DaemonCommand  []string
	DaemonCacheDir string
	Logger         *slog.Logger
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
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	b := &Batcher{maxJobs: cfg.MaxJobs, slots: cfg.Slots, gather: cfg.Gather, arrived: make(chan struct{}, 1),
		logger: cfg.Logger}
	if cfg.Connection == ConnectionDaemon {
		pool, hook, err := newDaemonPool(cfg, cfg.Logger)
		if err != nil {
			cfg.Logger.Warn("cannot build on a nix-daemon connection; building with nix-store processes", "err", err)
		}
		b.pool, b.buildHook = pool, hook
		if pool != nil {
			b.side = &sideConn{command: cfg.DaemonCommand, cacheDir: cfg.DaemonCacheDir}
			b.http = &http.Client{Timeout: drvFetchTimeout}
		}
	}
	return b
}

// Connection is how the Batcher reaches Nix: ConnectionDaemon or ConnectionProcess.
func (b *Batcher) Connection() string {
	if b.pool != nil {
		return ConnectionDaemon
	}
	return ConnectionProcess
}

// Daemons is how many nix-daemon processes the Batcher has started.
func (b *Batcher) Daemons() int64 {
	if b.pool == nil {
		return 0
	}
	return b.pool.Started()
}

// Close waits until no batch runs and stops the idle daemons.
func (b *Batcher) Close() {
	b.wg.Wait()
	if b.pool != nil {
		b.pool.Close()
		b.side.close()
	}
}

// QueryDaemons is how many nix-daemon processes the Batcher has started for the
// queries of its early finishers (daemon connections only).
func (b *Batcher) QueryDaemons() int {
	if b.side == nil {
		return 0
	}
	return b.side.Started()
}

// BasicBuilds is how many derivations the Batcher has sent whole, with
// wopBuildDerivation rather than BuildPaths (daemon connections only, see basicFor).
func (b *Batcher) BasicBuilds() int64 { return b.basicBuilds.Load() }

// Batches is how many batches the Batcher has run, on either connection.
func (b *Batcher) Batches() int64 { return b.batchesRun.Load() }

// Processes is how many nix-store --realise processes the Batcher has started.
func (b *Batcher) Processes() int64 { return b.processes.Load() }

// Wait waits until no batch runs.
func (b *Batcher) Wait() { b.wg.Wait() }

// Realise builds req.DrvPath in a batch, with the contract of the function Realise.
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
	b.await()
	jobs, extra := b.take()
	if len(jobs) > 0 {
		b.kick() // requests with other options need a batch of their own
		b.batchesRun.Add(1)
		// system-features is a store setting in Nix 2.8: a daemon's store keeps the
		// one it opened with, so steps that need features go to nix-store, which
		// takes them on its command line.
		if b.pool != nil && len(jobs[0].req.Features) == 0 {
			b.runDaemon(jobs, 1+extra)
		} else {
			b.processes.Add(1)
			runBatch(jobs, 1+extra)
		}
	}
	b.mu.Lock()
	b.inFlight -= len(jobs)
	b.used -= 1 + extra
	b.batches--
	b.mu.Unlock()
	b.kick()
}

// await gathers: it returns once every slot not in a batch has submitted, or after
// the gather time.
func (b *Batcher) await() {
	t := time.NewTimer(b.gather)
	defer t.Stop()
	for {
		b.mu.Lock()
		full := len(b.pending) >= b.slots-b.inFlight
		b.mu.Unlock()
		if full {
			return
		}
		select {
		case <-t.C:
			return
		case <-b.arrived:
		}
	}
}

// take ends the gathering: it takes this batch's requests out of pending (those
// with the first one's options, shared out as the comment inside says) and returns them with the
// builds the batch runs at once beyond its first (extra), which it counts as used.
func (b *Batcher) take() (jobs []*job, extra int) {
	b.mu.Lock()
	defer b.mu.Unlock()
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
	return jobs, extra
}
