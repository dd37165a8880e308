// The early finisher: derivations Nix has built are handed on while their batch
// still runs.

package realise

import (
	"context"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// earlyFinisher gives derivations Nix built inside a running batch their results. A
// derivation is known built when its outputs are valid in Nix's database and Nix has
// counted as many builds done as there are such derivations: Nix registers outputs before it counts a build
// done, and prints a build's log before either, so every log handed on is whole.
// (Outputs merely existing proves nothing: without a sandbox the builder writes
// them in place.) Failures wait for the end of the batch: Nix 2.8 names a failed
// derivation only when nix-store ends, and its counters do not say which one failed.
type earlyFinisher struct {
	earlyQueries
	start   time.Time
	jobs    []*job
	wake    chan struct{} // a progress record counted more finished builds
	done    atomic.Int64  // builds Nix counted done, as far as the parser has read
	handedB int           // built jobs handed on so far
}

// earlyQueries are how an earlyFinisher asks Nix, and how often.
type earlyQueries struct {
	// after is how long a batch runs before the first check; every the least time
	// between checks.
	after, every time.Duration
	invalid      func(ctx context.Context, paths []string) (map[string]bool, error)
	infos        pathInfosFunc
}

// Early finishing on the process path costs Nix processes of its own (a validity
// check, a path-info), so it starts only once a batch has run for a second (a batch
// of trivial steps ends sooner than that) and checks at most four times a second.
func processQueries() earlyQueries {
	return earlyQueries{after: time.Second, every: 250 * time.Millisecond, invalid: invalidPaths, infos: pathInfosRecursive}
}

// daemonQueries asks on the Batcher's side connection: a query there costs about a
// millisecond, so a derivation leaves as soon as Nix counts it built (every bounds
// the checks while builds finish in quick succession).
func daemonQueries(side *sideConn) earlyQueries {
	return earlyQueries{every: 5 * time.Millisecond, invalid: side.invalidPaths, infos: side.pathInfos}
}

// startEarly starts an earlyFinisher for the batch of jobs whose log d parses; the
// function it returns stops it once Nix is done and waits for it.
func startEarly(ctx context.Context, jobs []*job, d *demux, q earlyQueries) (stop func()) {
	ef := &earlyFinisher{earlyQueries: q, start: time.Now(), jobs: jobs, wake: make(chan struct{}, 1)}
	d.early = ef
	done := make(chan struct{})
	go func() { defer close(done); ef.run(ctx) }()
	return func() { close(ef.wake); <-done }
}

// closed says whether ch is closed (a batch's stop signal), without waiting.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// progress is called by the parser with Nix's count of finished builds.
func (e *earlyFinisher) progress(done int64) {
	e.done.Store(done)
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (e *earlyFinisher) run(ctx context.Context) {
	var last time.Time
	for range e.wake {
		if wait := e.after - time.Since(e.start); wait > 0 {
			if !e.sleep(wait) {
				return
			}
		}
		if wait := e.every - time.Since(last); wait > 0 {
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
	invalid, err := e.invalid(ctx, paths)
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
	finishBuilt(ctx, built, base, valid, e.infos)
}
