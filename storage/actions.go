package storage

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// ErrNothingToDo is an action that found nothing in a state it applies to (a restart of
// a build that has not failed, a cancel of a finished build).
var ErrNothingToDo = errors.New("nothing to do")

// buildChoice is what an action applies to: one build, or the builds of one
// evaluation. The other is nil (NULL in SQL), so one constant statement serves both
// and each is answered from an index.
type buildChoice struct{ build, evaluation *int64 }

func oneBuild(buildID int64) buildChoice       { return buildChoice{build: &buildID} }
func allOfEvaluation(evalID int64) buildChoice { return buildChoice{evaluation: &evalID} }

// chosenBuilds is a buildChoice passed as $1 (build) and $2 (evaluation).
const chosenBuilds = `(b.id = $1 OR b.id IN (SELECT build_id FROM evaluation_builds WHERE evaluation_id = $2))`

// cancelBuilds cancels the unfinished builds chosen (see chosenBuilds): their steps
// (queued or running) and every step waiting for those end cancelled, with all their
// builds. It returns the leases that were running, so the agents holding them can be
// told to stop (their reports would be refused anyway).
func (db *DB) cancelBuilds(ctx context.Context, chosen buildChoice) (int, []Lease, error) {
	var n int
	var running []Lease
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `WITH RECURSIVE chosen AS (
				SELECT b.step_id AS id FROM builds b WHERE `+chosenBuilds+` AND b.status IN ('queued', 'running') AND b.step_id IS NOT NULL),
			dep(id) AS (SELECT id FROM chosen UNION SELECT e.step_id FROM step_edges e JOIN dep ON e.depends_on = dep.id)
			SELECT s.id, s.status, s.lease_epoch, coalesce(s.agent_id, 0) FROM steps s
			WHERE s.id IN (SELECT id FROM dep) AND s.status IN ('queued', 'running') FOR UPDATE`, chosen.build, chosen.evaluation)
		if err != nil {
			return err
		}
		var ids []int64
		for rows.Next() {
			var l Lease
			var status string
			if err := rows.Scan(&l.ID, &status, &l.Epoch, &l.AgentID); err != nil {
				return err
			}
			l.Kind = LeaseStep
			ids = append(ids, l.ID)
			if status == "running" {
				running = append(running, l)
			}
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE steps SET status = 'cancelled', status_code = 4, finished_at = now(),
			lease_expires_at = NULL, error = 'cancelled' WHERE id = ANY($1)`, ids); err != nil {
			return err
		}
		// Builds of cancelled steps, and the chosen builds themselves (an aggregate or a
		// build whose step another build still needs is cancelled on its own).
		tag, err := tx.Exec(ctx, `UPDATE builds b SET status = 'cancelled', status_code = 4, finished_at = now()
			WHERE b.status IN ('queued', 'running') AND (b.step_id = ANY($3) OR `+chosenBuilds+`)`, chosen.build, chosen.evaluation, ids)
		if err != nil {
			return err
		}
		n = int(tag.RowsAffected())
		if err := finishAggregates(ctx, tx, 0); err != nil {
			return err
		}
		return notifySteps(ctx, tx)
	})
	if err != nil {
		return 0, nil, fmt.Errorf("cancel builds: %w", err)
	}
	return n, running, nil
}

// CancelBuild cancels one build (see cancelBuilds).
func (db *DB) CancelBuild(ctx context.Context, buildID int64) ([]Lease, error) {
	if _, err := db.buildStatus(ctx, buildID); err != nil {
		return nil, err
	}
	n, running, err := db.cancelBuilds(ctx, oneBuild(buildID))
	if err == nil && n == 0 {
		return nil, fmt.Errorf("build %d has finished: %w", buildID, ErrNothingToDo)
	}
	return running, err
}

// CancelEvaluation cancels every queued and running build of an evaluation.
func (db *DB) CancelEvaluation(ctx context.Context, evalID int64) (int, []Lease, error) {
	if _, err := db.GetEvaluation(ctx, evalID); err != nil {
		return 0, nil, err
	}
	return db.cancelBuilds(ctx, allOfEvaluation(evalID))
}

func (db *DB) buildStatus(ctx context.Context, buildID int64) (string, error) {
	var status string
	err := db.pool.QueryRow(ctx, `SELECT status FROM builds WHERE id = $1`, buildID).Scan(&status)
	if err != nil {
		return "", fmt.Errorf("build %d: %w", buildID, mapErr(err))
	}
	return status, nil
}

// restartSteps queues again the failed steps in the dependency closure of the steps
// of the builds chosen (the build, whatever its status, or the failed builds of the
// evaluation), and the steps that failed because of them; failed outputs are
// forgotten and the builds of all those steps are queued again.
func (db *DB) restartSteps(ctx context.Context, chosen buildChoice) (int, error) {
	var n int
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `WITH RECURSIVE down(id) AS (
				SELECT b.step_id FROM builds b WHERE (b.id = $1 OR (b.id IN (SELECT build_id FROM evaluation_builds WHERE evaluation_id = $2)
					AND b.status IN `+restartable+`))
					AND b.step_id IS NOT NULL
				UNION SELECT e.depends_on FROM step_edges e JOIN down ON e.step_id = down.id),
			failed AS (SELECT id FROM steps WHERE id IN (SELECT id FROM down) AND status IN `+restartable+`),
			up(id) AS (SELECT id FROM failed
				UNION SELECT e.step_id FROM step_edges e JOIN up ON e.depends_on = up.id
				JOIN steps s ON s.id = e.step_id AND s.status IN ('dependency_failed', 'cancelled', 'cached_failure', 'aborted'))
			SELECT id FROM up`, chosen.build, chosen.evaluation)
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil || len(ids) == 0 {
			return err
		}
		n = len(ids)
		if _, err := tx.Exec(ctx, `DELETE FROM failed_paths WHERE path IN (SELECT path FROM step_outputs WHERE step_id = ANY($1))`, ids); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE steps SET status = 'queued', status_code = NULL, error = '', exit_code = NULL,
			attempts = 0, not_before = NULL, agent_id = NULL, lease_expires_at = NULL, started_at = NULL, finished_at = NULL,
			created_at = now() WHERE id = ANY($1)`, ids); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM build_products WHERE build_id IN (SELECT id FROM builds WHERE step_id = ANY($1))`, ids); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM build_metrics WHERE build_id IN (SELECT id FROM builds WHERE step_id = ANY($1))`, ids); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE builds SET status = 'queued', status_code = NULL, propagated_from = NULL,
			started_at = NULL, finished_at = NULL WHERE step_id = ANY($1)`, ids); err != nil {
			return err
		}
		// Aggregates over restarted builds wait for them again.
		if _, err := tx.Exec(ctx, `UPDATE builds a SET status = 'queued', status_code = NULL, finished_at = NULL
			WHERE a.is_aggregate AND a.status NOT IN ('queued', 'running') AND EXISTS (
				SELECT 1 FROM aggregate_constituents ac JOIN builds c ON c.id = ac.constituent_id
				WHERE ac.aggregate_id = a.id AND c.status = 'queued')`); err != nil {
			return err
		}
		return notifySteps(ctx, tx)
	})
	if err != nil {
		return 0, fmt.Errorf("restart: %w", err)
	}
	return n, nil
}

// RestartBuild queues a failed build again, with the failed steps it needs and the
// builds that failed because of them. It returns how many steps were queued.
func (db *DB) RestartBuild(ctx context.Context, buildID int64) (int, error) {
	if _, err := db.buildStatus(ctx, buildID); err != nil {
		return 0, err
	}
	n, err := db.restartSteps(ctx, oneBuild(buildID))
	if err == nil && n == 0 {
		return 0, fmt.Errorf("build %d has no failed step: %w", buildID, ErrNothingToDo)
	}
	return n, err
}

// RestartFailed restarts every failed build of an evaluation.
func (db *DB) RestartFailed(ctx context.Context, evalID int64) (int, error) {
	if _, err := db.GetEvaluation(ctx, evalID); err != nil {
		return 0, err
	}
	return db.restartSteps(ctx, allOfEvaluation(evalID))
}

// BumpBuild moves a build's unfinished steps (its own and those it waits for) to the
// front of the queue: above every priority given so far.
func (db *DB) BumpBuild(ctx context.Context, buildID int64) (int, error) {
	if _, err := db.buildStatus(ctx, buildID); err != nil {
		return 0, err
	}
	var n int
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `WITH RECURSIVE down(id) AS (
				SELECT step_id FROM builds WHERE id = $1 AND step_id IS NOT NULL
				UNION SELECT e.depends_on FROM step_edges e JOIN down ON e.step_id = down.id)
			UPDATE steps SET global_priority = (SELECT coalesce(max(global_priority), 0) + 1 FROM steps)
			WHERE id IN (SELECT id FROM down) AND status IN ('queued', 'running')`, buildID)
		if err != nil {
			return err
		}
		n = int(tag.RowsAffected())
		return notifySteps(ctx, tx)
	})
	if err != nil {
		return 0, fmt.Errorf("bump build %d: %w", buildID, err)
	}
	if n == 0 {
		return 0, fmt.Errorf("build %d has nothing queued: %w", buildID, ErrNothingToDo)
	}
	return n, nil
}
