// Package lease keeps the leases under which agents hold work, evaluations and build
// steps alike, for both schedulers. A lease is the work's (id, epoch, agent) in
// PostgreSQL with an expiry:
//
//   - an agent's heartbeat extends the leases of the work it says it runs and learns
//     which of that work it no longer holds (the fleet tells it to stop);
//   - work the agent stopped unfinished (released in a heartbeat) or reports as an
//     infrastructure failure (Retry) is requeued with exponential backoff, counting
//     the attempt, and ends after max_attempts;
//   - work an agent declined before starting goes back without counting (Release);
//   - a disconnected agent keeps its leases for the grace period only;
//   - expired leases are rescued like a retry (Rescue), by whichever coordinator
//     looks first.
//
// A report is fenced by its lease in the storage transaction that records it; that
// check is the one that counts. Check refuses earlier only what storage does not
// record in such a transaction (a log stream) or what is costly to read before
// storage sees it (an evaluation report's batches).
package lease

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/fc-ci/fc/coordinator/fleet"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// Store is the lease bookkeeping in PostgreSQL (storage.DB).
type Store interface {
	CheckLease(ctx context.Context, kind storage.LeaseKind, id, epoch, agentID int64) error
	ExtendLeases(ctx context.Context, agentID int64, kind storage.LeaseKind, ids, epochs []int64, ttl time.Duration) ([]int64, error)
	GraceLeases(ctx context.Context, agentID int64, grace time.Duration) error
	RetryLease(ctx context.Context, l storage.Lease, msg string, cfg storage.LeaseConfig) error
	ReleaseLease(ctx context.Context, l storage.Lease) error
	RescueExpired(ctx context.Context, kind storage.LeaseKind, cfg storage.LeaseConfig) (requeued, aborted int64, err error)
}

// Config configures the keeper.
type Config struct {
	Store Store // required
	// Settings are the [queue_runner] lease settings: TTL, grace, max_attempts, backoff.
	Settings storage.LeaseConfig
	Logger   *slog.Logger
}

// Keeper keeps the leases of both kinds of work. One keeper serves both schedulers.
type Keeper struct {
	cfg Config
	log *slog.Logger
}

// New returns a keeper. Attach it to the fleet with Hooks.
func New(cfg Config) *Keeper {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Keeper{cfg: cfg, log: cfg.Logger}
}

// TTL is how long a lease lasts unless a heartbeat extends it; a claim starts it.
func (k *Keeper) TTL() time.Duration { return k.cfg.Settings.TTL }

// Hooks are the fleet hooks of the keeper: a disconnected agent's leases, of both
// kinds, shrink to the grace period (it may reconnect and go on, or the work is
// rescued). The schedulers' own hooks call Heartbeat for their kind of work.
func (k *Keeper) Hooks() fleet.Hooks {
	return fleet.Hooks{Disconnected: k.disconnected}
}

func (k *Keeper) disconnected(agentID int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := k.cfg.Store.GraceLeases(ctx, agentID, k.cfg.Settings.Grace); err != nil {
		k.log.Warn("grace leases", "agent", agentID, "err", err)
	}
}

// Beat is what one heartbeat meant for one kind of work.
type Beat struct {
	// Running is how much work of the kind the agent says it runs.
	Running int
	// Requeued is how much of the work it released was requeued.
	Requeued int
	// Lost is the work it runs whose lease it no longer holds: it must stop it.
	Lost []protocol.WorkRef
}

// Heartbeat applies an agent's heartbeat to its work of one kind: the work it
// released is requeued, the leases of the work it runs are extended.
func (k *Keeper) Heartbeat(ctx context.Context, agentID int64, kind storage.LeaseKind, hb *protocol.Heartbeat) Beat {
	var b Beat
	wk := workKind(kind)
	// Work released by an agent shutting down was stopped on purpose: requeued like
	// a failure, but not counted against the agent's health.
	released := k.cfg.Settings
	released.Health.Uncounted = true
	for _, w := range hb.Released {
		if w.Kind != wk {
			continue
		}
		l := storage.Lease{Kind: kind, ID: w.ID, Epoch: w.Epoch, AgentID: agentID}
		msg := fmt.Sprintf("the agent stopped before the %s finished", noun(kind))
		if err := k.cfg.Store.RetryLease(ctx, l, msg, released); err != nil {
			k.log.Warn("requeue released work", "kind", kind, "id", w.ID, "agent", agentID, "err", err)
			continue
		}
		k.log.Info("agent released work it did not finish; requeued", "kind", kind, "id", w.ID, "agent", agentID)
		b.Requeued++
	}
	var ids, epochs []int64
	byID := map[int64]protocol.WorkRef{}
	for _, w := range hb.Running {
		if w.Kind == wk {
			ids, epochs = append(ids, w.ID), append(epochs, w.Epoch)
			byID[w.ID] = w
		}
	}
	b.Running = len(ids)
	lost, err := k.cfg.Store.ExtendLeases(ctx, agentID, kind, ids, epochs, k.cfg.Settings.TTL)
	if err != nil {
		k.log.Warn("extend leases", "kind", kind, "agent", agentID, "err", err)
		return b
	}
	for _, id := range lost {
		b.Lost = append(b.Lost, byID[id])
	}
	return b
}

// Check refuses, with storage.ErrStaleLease, work whose lease the agent does not hold
// now. Only for refusing early (see the package comment): recording a report checks
// the lease in its own transaction.
func (k *Keeper) Check(ctx context.Context, l storage.Lease) error {
	return k.cfg.Store.CheckLease(ctx, l.Kind, l.ID, l.Epoch, l.AgentID)
}

// Retry requeues work after an infrastructure failure, counting the attempt and
// backing off; after max_attempts the work ends. A stale lease changes nothing
// (storage.ErrStaleLease).
func (k *Keeper) Retry(ctx context.Context, l storage.Lease, msg string) error {
	return k.cfg.Store.RetryLease(ctx, l, msg, k.cfg.Settings)
}

// Release gives back work the agent declined before starting, without counting an
// attempt.
func (k *Keeper) Release(ctx context.Context, l storage.Lease) error {
	return k.cfg.Store.ReleaseLease(ctx, l)
}

// Rescue requeues the work of one kind whose lease expired (backing off, counting the
// attempt) and ends the work that used up max_attempts. It returns how much was
// requeued and ended; a failure is logged (the next rescue tries again).
func (k *Keeper) Rescue(ctx context.Context, kind storage.LeaseKind) (requeued, aborted int64) {
	requeued, aborted, err := k.cfg.Store.RescueExpired(ctx, kind, k.cfg.Settings)
	if err != nil {
		k.log.Warn("rescue expired leases", "kind", kind, "err", err)
		return 0, 0
	}
	if requeued+aborted > 0 {
		k.log.Info("rescued work with expired leases", "kind", kind, "requeued", requeued, "aborted", aborted)
	}
	return requeued, aborted
}

// workKind is the kind of work on the wire (protocol.WorkRef.Kind) held under kind.
func workKind(kind storage.LeaseKind) string {
	if kind == storage.LeaseStep {
		return protocol.WorkStep
	}
	return protocol.WorkEval
}

// noun names one piece of work of kind in messages.
func noun(kind storage.LeaseKind) string {
	if kind == storage.LeaseStep {
		return "step"
	}
	return "evaluation"
}
