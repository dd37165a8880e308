package storage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrStaleLease is a report for a lease that is no longer the current one (its epoch
// was superseded, or the work was rescued and given to someone else).
var ErrStaleLease = errors.New("stale lease: the work was reassigned")

// LeaseKind names a leased table: evaluations now, steps with the builds issue.
type LeaseKind string

// Leased kinds.
const (
	LeaseEval LeaseKind = "evaluations"
	LeaseStep LeaseKind = "steps"
)

func (k LeaseKind) table() (string, error) {
	switch k {
	case LeaseEval, LeaseStep:
		return string(k), nil
	}
	return "", fmt.Errorf("unknown lease kind %q", k)
}

// Lease is work held by an agent: the epoch fences every report.
type Lease struct {
	Kind    LeaseKind
	ID      int64
	Epoch   int64
	AgentID int64
	Attempt int
}

// LeaseConfig are the [queue_runner] lease settings.
type LeaseConfig struct {
	TTL         time.Duration // a lease not extended for this long expires
	Grace       time.Duration // a disconnected agent keeps its leases this long
	MaxAttempts int           // infrastructure failures before the work is aborted
	Backoff     time.Duration // base of the exponential requeue delay
}

// ClaimEvaluation leases the oldest due queued evaluation to agent, atomically: two
// coordinators never claim the same row (FOR UPDATE SKIP LOCKED).
func (db *DB) ClaimEvaluation(ctx context.Context, agentID int64, ttl time.Duration) (Lease, bool, error) {
	l := Lease{Kind: LeaseEval, AgentID: agentID}
	err := db.pool.QueryRow(ctx, `UPDATE evaluations SET status = 'running', agent_id = $1,
		lease_epoch = lease_epoch + 1, lease_expires_at = now() + make_interval(secs => $2),
		attempts = attempts + 1, started_at = coalesce(started_at, now())
		WHERE id = (SELECT id FROM evaluations WHERE status = 'queued' AND (not_before IS NULL OR not_before <= now())
		            ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
		RETURNING id, lease_epoch, attempts`, agentID, ttl.Seconds()).Scan(&l.ID, &l.Epoch, &l.Attempt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Lease{}, false, nil
	}
	if err != nil {
		return Lease{}, false, fmt.Errorf("claim evaluation: %w", err)
	}
	return l, true, nil
}

// CheckLease verifies a report's (id, epoch) against the current lease.
func (db *DB) CheckLease(ctx context.Context, kind LeaseKind, id, epoch, agentID int64) error {
	table, err := kind.table()
	if err != nil {
		return err
	}
	var ok bool
	err = db.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+table+` WHERE id = $1 AND lease_epoch = $2
		AND agent_id = $3 AND status = 'running')`, id, epoch, agentID).Scan(&ok)
	if err != nil {
		return fmt.Errorf("check lease %s %d: %w", kind, id, err)
	}
	if !ok {
		return fmt.Errorf("%s %d epoch %d: %w", kind, id, epoch, ErrStaleLease)
	}
	return nil
}

// ReleaseLease gives claimed work back without counting an attempt (the agent
// declined it before starting).
func (db *DB) ReleaseLease(ctx context.Context, l Lease) error {
	table, err := l.Kind.table()
	if err != nil {
		return err
	}
	_, err = db.pool.Exec(ctx, `UPDATE `+table+` SET status = 'queued', agent_id = NULL, lease_expires_at = NULL,
		attempts = greatest(attempts - 1, 0) WHERE id = $1 AND lease_epoch = $2 AND status = 'running'`, l.ID, l.Epoch)
	if err != nil {
		return fmt.Errorf("release %s %d: %w", l.Kind, l.ID, err)
	}
	return nil
}

// ExtendLeases renews the leases an agent reports as still running; it returns the
// refs whose lease is no longer theirs (the agent should stop that work).
func (db *DB) ExtendLeases(ctx context.Context, agentID int64, kind LeaseKind, ids, epochs []int64, ttl time.Duration) ([]int64, error) {
	table, err := kind.table()
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, nil
	}
	rows, err := db.pool.Query(ctx, `UPDATE `+table+` t SET lease_expires_at = now() + make_interval(secs => $4)
		FROM unnest($2::bigint[], $3::bigint[]) AS r(id, epoch)
		WHERE t.id = r.id AND t.lease_epoch = r.epoch AND t.agent_id = $1 AND t.status = 'running'
		RETURNING t.id`, agentID, ids, epochs, ttl.Seconds())
	if err != nil {
		return nil, fmt.Errorf("extend leases: %w", err)
	}
	kept, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("extend leases: %w", err)
	}
	held := make(map[int64]bool, len(kept))
	for _, id := range kept {
		held[id] = true
	}
	var lost []int64
	for _, id := range ids {
		if !held[id] {
			lost = append(lost, id)
		}
	}
	return lost, nil
}

// GraceLeases shortens a disconnected agent's leases to the grace period: it may
// reconnect and reconcile within it, or the work is rescued.
func (db *DB) GraceLeases(ctx context.Context, agentID int64, grace time.Duration) error {
	for _, k := range []LeaseKind{LeaseEval, LeaseStep} {
		table, _ := k.table()
		_, err := db.pool.Exec(ctx, `UPDATE `+table+` SET lease_expires_at = least(lease_expires_at, now() + make_interval(secs => $2))
			WHERE agent_id = $1 AND status = 'running'`, agentID, grace.Seconds())
		if err != nil {
			return fmt.Errorf("grace leases of agent %d: %w", agentID, err)
		}
	}
	return nil
}

// RescueExpired requeues work whose lease expired (with exponential backoff and the
// attempt counted) and aborts work that used up its attempts. It returns how many
// rows were requeued and aborted.
func (db *DB) RescueExpired(ctx context.Context, kind LeaseKind, cfg LeaseConfig) (requeued, aborted int64, err error) {
	table, err := kind.table()
	if err != nil {
		return 0, 0, err
	}
	// An evaluation that cannot be completed fails; a step ends aborted (Hydra's 3).
	abort := `status = 'failed'`
	if kind == LeaseStep {
		abort = `status = 'aborted', status_code = 3`
	}
	tag, err := db.pool.Exec(ctx, `UPDATE `+table+` SET `+abort+`, agent_id = NULL, lease_expires_at = NULL,
		finished_at = now(), error = 'aborted: the agent was lost ' || attempts || ' times (max_attempts)'
		WHERE status = 'running' AND lease_expires_at < now() AND attempts >= $1`, cfg.MaxAttempts)
	if err != nil {
		return 0, 0, fmt.Errorf("abort %s: %w", kind, err)
	}
	aborted = tag.RowsAffected()
	tag, err = db.pool.Exec(ctx, `UPDATE `+table+` SET status = 'queued', agent_id = NULL, lease_expires_at = NULL,
		not_before = now() + make_interval(secs => $1 * power(2, greatest(attempts - 1, 0)))
		WHERE status = 'running' AND lease_expires_at < now()`, cfg.Backoff.Seconds())
	if err != nil {
		return 0, aborted, fmt.Errorf("requeue %s: %w", kind, err)
	}
	return tag.RowsAffected(), aborted, nil
}
