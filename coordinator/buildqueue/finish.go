package buildqueue

import (
	"context"
	"errors"

	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// Step reports are recorded in batches while the scheduler runs: each finisher takes
// the reports waiting and records them in one transaction (storage.FinishSteps), so
// a busy queue of quick steps costs a few statements per batch rather than a dozen
// per step. There is no waiting to fill a batch: a report that arrives while the
// finishers are idle is recorded at once, alone.
const (
	finishers     = 2
	maxFinishes   = 256
	finishBacklog = 4096
)

// finishReq is one report waiting for a finisher.
type finishReq struct {
	f    storage.Finished
	res  storage.FinishedResult
	done chan struct{}
}

var errStopping = errors.New("the coordinator is stopping; report again")

// runFinishers records the queued reports until ctx ends, then fails those left.
func (b *Builds) runFinishers(ctx context.Context) {
	b.finishing.Store(true)
	done := make(chan struct{}, finishers)
	for range finishers {
		go func() {
			defer func() { done <- struct{}{} }()
			for {
				select {
				case <-ctx.Done():
					return
				case r := <-b.finishQ:
					b.finishBatch(ctx, r)
				}
			}
		}()
	}
	<-ctx.Done()
	for range finishers {
		<-done
	}
	b.finishing.Store(false)
	for {
		select {
		case r := <-b.finishQ:
			r.res.Err = errStopping
			close(r.done)
		default:
			close(b.finishersGone)
			return
		}
	}
}

// finishBatch records first and the reports queued behind it.
func (b *Builds) finishBatch(ctx context.Context, first *finishReq) {
	batch := []*finishReq{first}
	for len(batch) < maxFinishes {
		select {
		case r := <-b.finishQ:
			batch = append(batch, r)
			continue
		default:
		}
		break
	}
	fs := make([]storage.Finished, len(batch))
	for i, r := range batch {
		fs[i] = r.f
	}
	res := b.db.FinishSteps(ctx, fs, b.cfg.Sign)
	var succeeded []int64
	for i, r := range batch {
		r.res = res[i]
		close(r.done)
		if res[i].Err == nil && res[i].Dependents && r.f.Outcome.Status == protocol.StepSucceeded {
			succeeded = append(succeeded, r.f.Lease.ID)
		}
	}
	// Once the reports are answered (the agents' slots are free sooner): the
	// dependents whose last input this batch built become claimable.
	if n, err := b.db.UnblockDependents(ctx, succeeded); err != nil {
		b.log.Warn("unblock the dependents of finished steps; the sweep will", "err", err)
	} else if n > 0 {
		b.Wake()
	}
}

// finishStep records a step report: through the finishers while they run, else at
// once. It returns the step's system when the batch learnt it.
func (b *Builds) finishStep(ctx context.Context, l storage.Lease, o storage.StepOutcome) (string, error) {
	if !b.finishing.Load() {
		return "", b.db.FinishStep(ctx, l, o, b.cfg.Sign)
	}
	r := &finishReq{f: storage.Finished{Lease: l, Outcome: o}, done: make(chan struct{})}
	select {
	case b.finishQ <- r:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	select {
	case <-r.done:
		return r.res.System, r.res.Err
	case <-b.finishersGone:
		select {
		case <-r.done:
			return r.res.System, r.res.Err
		default:
			return "", errStopping
		}
	}
}
