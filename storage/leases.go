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

// LeaseKind names a leased table: evaluations or steps.
type LeaseKind string

// Leased kinds.
const (
	LeaseEval LeaseKind = "evaluations"
	LeaseStep LeaseKind = "steps"
)

// Each kind of lease has its own statements: a table name is never spliced into SQL.
type leaseStatements struct {
	check, extend, grace string
}

func (k LeaseKind) statements() (leaseStatements, error) {
	switch k {
	case LeaseEval:
		return leaseStatements{check: checkEvalLease, extend: extendEvalLeases, grace: graceEvalLeases}, nil
	case LeaseStep:
		return leaseStatements{check: checkStepLease, extend: extendStepLeases, grace: graceStepLeases}, nil
	}
	return leaseStatements{}, fmt.Errorf("unknown lease kind %q", k)
}

const (
	checkEvalLease = `SELECT EXISTS (SELECT 1 FROM evaluations WHERE id = $1 AND lease_epoch = $2
		AND agent_id = $3 AND status = 'running')`
	checkStepLease = `SELECT EXISTS (SELECT 1 FROM steps WHERE id = $1 AND lease_epoch = $2
		AND agent_id = $3 AND status = 'running')`

	// A lease is written only when less than 90% of the TTL is left: agents send a
	// heartbeat whenever work ends, several a second on a busy builder, and each
	// rewrote every running step's row. Every lease held is still returned, so lost
	// ones are still found on each heartbeat.
	extendEvalLeases = `WITH held AS (
			SELECT t.id, t.lease_epoch, t.lease_expires_at FROM evaluations t
			JOIN unnest($2::bigint[], $3::bigint[]) AS r(id, epoch) ON t.id = r.id AND t.lease_epoch = r.epoch
			WHERE t.agent_id = $1 AND t.status = 'running'),
		extended AS (
			UPDATE evaluations t SET lease_expires_at = now() + make_interval(secs => $4)
			FROM held h
			WHERE t.id = h.id AND (h.lease_expires_at IS NULL OR h.lease_expires_at < now() + make_interval(secs => $4::float8 * 0.9))
				AND t.lease_epoch = h.lease_epoch AND t.agent_id = $1 AND t.status = 'running')
		SELECT id FROM held`
	extendStepLeases = `WITH held AS (
			SELECT t.id, t.lease_epoch, t.lease_expires_at FROM steps t
			JOIN unnest($2::bigint[], $3::bigint[]) AS r(id, epoch) ON t.id = r.id AND t.lease_epoch = r.epoch
			WHERE t.agent_id = $1 AND t.status = 'running'),
		extended AS (
			UPDATE steps t SET lease_expires_at = now() + make_interval(secs => $4)
			FROM held h
			WHERE t.id = h.id AND (h.lease_expires_at IS NULL OR h.lease_expires_at < now() + make_interval(secs => $4::float8 * 0.9))
				AND t.lease_epoch = h.lease_epoch AND t.agent_id = $1 AND t.status = 'running')
		SELECT id FROM held`

	graceEvalLeases = `UPDATE evaluations SET lease_expires_at = least(lease_expires_at, now() + make_interval(secs => $2))
		WHERE agent_id = $1 AND status = 'running'`
	graceStepLeases = `UPDATE steps SET lease_expires_at = least(lease_expires_at, now() + make_interval(secs => $2))
		WHERE agent_id = $1 AND status = 'running'`
)

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
	// Health backs off agents whose steps fail for reasons of theirs (steps only).
	Health AgentHealth
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

// CheckLease verifies a report's (id, epoch) against the current lease. It is for
// refusing early what is not recorded in PostgreSQL (a log stream) or is costly to
// read (an evaluation report's batches); every statement that records a report checks
// the lease again in its own transaction, and that check is the one that counts.
func (db *DB) CheckLease(ctx context.Context, kind LeaseKind, id, epoch, agentID int64) error {
	st, err := kind.statements()
	if err != nil {
		return err
	}
	var ok bool
	if err := db.pool.QueryRow(ctx, st.check, id, epoch, agentID).Scan(&ok); err != nil {
		return fmt.Errorf("check lease %s %d: %w", kind, id, err)
	}
	if !ok {
		return fmt.Errorf("%s %d epoch %d: %w", kind, id, epoch, ErrStaleLease)
	}
	return nil
}

// ReleaseLease gives claimed work back without counting an attempt (the agent
// declined it before starting); a step's builds are queued again with it.
func (db *DB) ReleaseLease(ctx context.Context, l Lease) error {
	switch l.Kind {
	case LeaseStep:
		return db.ReleaseStep(ctx, l)
	case LeaseEval:
		_, err := db.pool.Exec(ctx, `UPDATE evaluations SET status = 'queued', agent_id = NULL, lease_expires_at = NULL,
			attempts = greatest(attempts - 1, 0) WHERE id = $1 AND lease_epoch = $2 AND status = 'running'`, l.ID, l.Epoch)
		if err != nil {
			return fmt.Errorf("release %s %d: %w", l.Kind, l.ID, err)
		}
		return nil
	}
	return fmt.Errorf("unknown lease kind %q", l.Kind)
}

// RetryLease requeues work after an infrastructure failure (RetryStep,
// RetryEvaluation): the attempt counts, the requeue backs off, and at max_attempts
// the work ends. A stale lease changes nothing (ErrStaleLease).
func (db *DB) RetryLease(ctx context.Context, l Lease, msg string, cfg LeaseConfig) error {
	switch l.Kind {
	case LeaseStep:
		return db.RetryStep(ctx, l, msg, cfg)
	case LeaseEval:
		return db.RetryEvaluation(ctx, l, msg, cfg)
	}
	return fmt.Errorf("unknown lease kind %q", l.Kind)
}

// ExtendLeases renews the leases an agent reports as still running; it returns the
// refs whose lease is no longer theirs (the agent should stop that work).
func (db *DB) ExtendLeases(ctx context.Context, agentID int64, kind LeaseKind, ids, epochs []int64, ttl time.Duration) ([]int64, error) {
	st, err := kind.statements()
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, nil
	}
	rows, err := db.pool.Query(ctx, st.extend, agentID, ids, epochs, ttl.Seconds())
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

// GraceLeases shortens a disconnected agent's leases, of every kind, to the grace
// period: it may reconnect and reconcile within it, or the work is rescued.
func (db *DB) GraceLeases(ctx context.Context, agentID int64, grace time.Duration) error {
	for _, k := range []LeaseKind{LeaseEval, LeaseStep} {
		st, err := k.statements()
		if err != nil {
			return err
		}
		if _, err := db.pool.Exec(ctx, st.grace, agentID, grace.Seconds()); err != nil {
			return fmt.Errorf("grace leases of agent %d: %w", agentID, err)
		}
	}
	return nil
}

// RescueExpired requeues work whose lease expired (with exponential backoff and the
// attempt counted) and aborts work that used up its attempts (RescueSteps for steps,
// which brings their builds in line). It returns how many rows were requeued and
// aborted.
func (db *DB) RescueExpired(ctx context.Context, kind LeaseKind, cfg LeaseConfig) (requeued, aborted int64, err error) {
	switch kind {
	case LeaseStep:
		r, a, err := db.RescueSteps(ctx, cfg)
		return int64(r), int64(a), err
	case LeaseEval:
		return db.rescueEvaluations(ctx, cfg)
	}
	return 0, 0, fmt.Errorf("unknown lease kind %q", kind)
}

// rescueEvaluations requeues evaluations whose lease expired and fails those that
// used up their attempts.
func (db *DB) rescueEvaluations(ctx context.Context, cfg LeaseConfig) (requeued, aborted int64, err error) {
	tag, err := db.pool.Exec(ctx, `UPDATE evaluations SET status = 'failed', agent_id = NULL, lease_expires_at = NULL,
		finished_at = now(), error = 'aborted: the agent was lost ' || attempts || ' times (max_attempts)'
		WHERE status = 'running' AND lease_expires_at < now() AND attempts >= $1`, cfg.MaxAttempts)
	if err != nil {
		return 0, 0, fmt.Errorf("abort %s: %w", LeaseEval, err)
	}
	aborted = tag.RowsAffected()
	tag, err = db.pool.Exec(ctx, `UPDATE evaluations SET status = 'queued', agent_id = NULL, lease_expires_at = NULL,
		not_before = now() + make_interval(secs => $1 * power(2, greatest(attempts - 1, 0)))
		WHERE status = 'running' AND lease_expires_at < now()`, cfg.Backoff.Seconds())
	if err != nil {
		return 0, aborted, fmt.Errorf("requeue %s: %w", LeaseEval, err)
	}
	return tag.RowsAffected(), aborted, nil
}
