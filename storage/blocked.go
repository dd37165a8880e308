package storage

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// A queued step with an input not yet built is blocked: the claim reads only
// unblocked queued steps (the steps_ready index), so a claim costs the runnable
// steps it looks at, not every queued step of a deep DAG. The mark is a hint the
// claim does not trust: it still checks the inputs, so a mark cleared early costs a
// test and nothing else, while a mark left set would hold a runnable step back.
//
// An evaluation sets the mark on each step it adds with inputs; the mark is cleared
// after the commit of whatever may have built the last input: a step's success (its
// dependents: FinishStep, or FinishSteps' caller), an evaluation (its blocked steps:
// an input may have succeeded while it was being stored, invisible to both
// transactions) and, as a safety net, the build sweep (every blocked queued step).
// Each clearing runs after its commit, so of an evaluation and an input's success
// committing at once, the later one's clearing sees both. It locks with SKIP LOCKED
// and so never waits while holding a row (an evaluation locks shared steps in drv
// path order, a clearing in id order: two waits could deadlock); a step it skipped
// is cleared alone, holding nothing else.

// unblockRunnable is a blocked step s whose inputs have all succeeded.
const unblockRunnable = `s.blocked AND NOT EXISTS (SELECT 1 FROM step_edges e JOIN steps d ON d.id = e.depends_on
	WHERE e.step_id = s.id AND d.status <> 'succeeded')`

// unblockLocked clears the mark of the candidate steps (cand, a CTE of ids) that are
// runnable and not locked now, and announces on StepsChannel, at its commit, that
// steps became runnable if any did: one statement, its own transaction. It returns
// every candidate that was runnable, with whether it was cleared.
const unblockLocked = `,
	runnable AS (SELECT s.id FROM steps s WHERE s.id IN (SELECT id FROM cand) AND ` + unblockRunnable + `),
	locked AS (SELECT s.id FROM steps s WHERE s.id IN (SELECT id FROM runnable) AND s.blocked
		ORDER BY s.id FOR NO KEY UPDATE SKIP LOCKED),
	cleared AS (UPDATE steps s SET blocked = false FROM locked WHERE s.id = locked.id RETURNING s.id),
	announced AS (SELECT pg_notify('` + stepsChannel + `', '') FROM (SELECT 1 FROM cleared LIMIT 1) c)
	SELECT r.id, c.id IS NOT NULL FROM runnable r LEFT JOIN cleared c ON c.id = r.id
		CROSS JOIN (SELECT count(*) FROM announced) a`

// Where the candidates of a clearing come from.
const (
	// The dependents of the step $1 (which just succeeded). A scalar parameter, not a
	// one-element array: the statement runs once per finished step, and with a scalar
	// PostgreSQL settles on a generic plan after five runs (planning it each time cost
	// more than running it).
	unblockDependentsOf = `WITH cand AS (SELECT step_id AS id FROM step_edges WHERE depends_on = $1::bigint)` + unblockLocked
	// The dependents of the steps $1 (which just succeeded).
	unblockDependents = `WITH cand AS (SELECT DISTINCT step_id AS id FROM step_edges WHERE depends_on = ANY($1::bigint[]))` + unblockLocked
	// The steps $1 (an evaluation's blocked steps).
	unblockSteps = `WITH cand AS (SELECT unnest($1::bigint[]) AS id)` + unblockLocked
	// Every blocked queued step (the build sweep).
	unblockAll = `WITH cand AS (SELECT id FROM steps WHERE blocked AND status = 'queued')` + unblockLocked
)

// unblock runs one clearing (stmt with args) after the commit that may have made
// steps runnable. It returns how many steps it made claimable.
func (db *DB) unblock(ctx context.Context, stmt string, args ...any) (int, error) {
	rows, err := db.pool.Query(ctx, stmt, args...)
	if err != nil {
		return 0, fmt.Errorf("unblock steps: %w", err)
	}
	var skipped []int64
	cleared := 0
	for rows.Next() {
		var id int64
		var ok bool
		if err := rows.Scan(&id, &ok); err != nil {
			rows.Close()
			return 0, fmt.Errorf("unblock steps: %w", err)
		}
		if ok {
			cleared++
		} else {
			skipped = append(skipped, id)
		}
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("unblock steps: %w", err)
	}
	// A runnable step another transaction held: one at a time, waiting for the
	// holder while holding nothing else.
	for _, id := range skipped {
		n, err := db.unblockOne(ctx, id)
		if err != nil {
			return cleared, fmt.Errorf("unblock step %d: %w", id, err)
		}
		cleared += n
	}
	return cleared, nil
}

// unblockOne clears one step's mark if its inputs have all succeeded, waiting up to
// a second for a transaction holding it (an evaluation holding it longer clears it
// after its own commit; the build sweep catches anything else).
func (db *DB) unblockOne(ctx context.Context, id int64) (int, error) {
	var n int
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '1s'`); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE steps s SET blocked = false WHERE s.id = $1 AND `+unblockRunnable, id)
		if err != nil {
			return err
		}
		if n = int(tag.RowsAffected()); n == 0 {
			return nil
		}
		return notifySteps(ctx, tx)
	})
	return n, err
}

// unblockAfter clears, after a commit, the marks the commit may have made stale
// (stmt, with arg: a step id or ids). The commit stands whatever happens here: a
// failure is logged, and the build sweep clears the marks later.
func (db *DB) unblockAfter(ctx context.Context, what string, stmt string, arg any) {
	// Not the caller's context: the commit stands even when its request was cancelled.
	if _, err := db.unblock(context.WithoutCancel(ctx), stmt, arg); err != nil {
		db.log.Warn("unblock the steps now runnable; the build sweep will", "after", what, "err", err)
	}
}

// UnblockDependents makes claimable the dependents of steps that succeeded whose
// inputs have now all succeeded (after FinishSteps, which leaves that to its
// caller). It returns how many it made claimable and announces them on StepsChannel.
func (db *DB) UnblockDependents(ctx context.Context, stepIDs []int64) (int, error) {
	switch len(stepIDs) {
	case 0:
		return 0, nil
	case 1:
		return db.unblock(ctx, unblockDependentsOf, stepIDs[0])
	}
	return db.unblock(ctx, unblockDependents, stepIDs)
}

// UnblockSteps clears the mark of every blocked queued step whose inputs have all
// succeeded: the build sweep's safety net for a clearing that did not run (a
// coordinator stopped between a commit and its clearing). It returns how many steps
// it made claimable.
func (db *DB) UnblockSteps(ctx context.Context) (int, error) {
	return db.unblock(ctx, unblockAll)
}
