package storage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// StepOutcome is what an agent reports for a finished step.
type StepOutcome struct {
	Status      string // succeeded, failed, timed_out, failed_with_output, log_limit_exceeded, output_limit_exceeded
	Error       string
	ExitCode    int
	Products    []Product
	Metrics     []Metric
	ReleaseName string
	LogSize     int64
	StartedAt   time.Time
	FinishedAt  time.Time
}

// Product is a build product (nix-support/hydra-build-products).
type Product struct {
	Nr                                     int
	Type, Subtype, Name, Path, DefaultPath string
	FileSize                               *int64
	SHA256                                 string
}

// Metric is a build metric (nix-support/hydra-metrics).
type Metric struct {
	Name  string
	Value float64
	Unit  string
}

// FinishStep records a step's outcome under its lease, in one transaction: the step,
// its builds (with products, metrics and release name), failed outputs remembered,
// dependents marked dependency_failed, aggregates that can now finish. A stale lease
// changes nothing.
//
// A step that built its outputs (succeeded, failed_with_output) must have every
// declared output in the cache, uploaded by its builder (pending) or served already:
// sign signs the pending ones, which the cache serves from this commit on. A missing
// output is ErrOutputsMissing and changes nothing.
func (db *DB) FinishStep(ctx context.Context, l Lease, o StepOutcome, sign Signer) error {
	code, ok := StatusCodes[o.Status]
	if !ok {
		return fmt.Errorf("finish step %d: unknown status %q", l.ID, o.Status)
	}
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE steps SET status = $4, status_code = $5, error = $6, exit_code = $7, log_size = $8,
			started_at = coalesce($9, started_at), finished_at = coalesce($10, now()), lease_expires_at = NULL
			WHERE id = $1 AND lease_epoch = $2 AND agent_id = $3 AND status = 'running'`,
			l.ID, l.Epoch, l.AgentID, o.Status, code, o.Error, o.ExitCode, o.LogSize, nullTime(o.StartedAt), nullTime(o.FinishedAt))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("step %d epoch %d: %w", l.ID, l.Epoch, ErrStaleLease)
		}
		if o.Status == "succeeded" || o.Status == "failed_with_output" {
			if err := promoteOutputs(ctx, tx, l.ID, sign); err != nil {
				return err
			}
			if err := agentSucceeded(ctx, tx, l.AgentID); err != nil {
				return err
			}
		}
		if err := finishBuildsOfStep(ctx, tx, l.ID, o.Status, code, o.ReleaseName); err != nil {
			return err
		}
		if err := insertProducts(ctx, tx, l.ID, o.Products, o.Metrics); err != nil {
			return err
		}
		if o.Status != "succeeded" {
			if err := failStepTx(ctx, tx, l.ID); err != nil {
				return err
			}
		}
		if err := finishAggregates(ctx, tx, 0); err != nil {
			return err
		}
		return notifySteps(ctx, tx)
	})
	if err != nil {
		return fmt.Errorf("finish step %d: %w", l.ID, err)
	}
	return nil
}

// Signer returns the signature (name:base64) of a path the cache is about to serve.
type Signer func(n Narinfo) (string, error)

// ErrOutputsMissing is a step reported built whose outputs are not all in the cache.
var ErrOutputsMissing = errors.New("outputs missing from the cache")

// promoteOutputs signs the pending uploads of a step's outputs and makes the cache
// serve them. An output already served needs nothing; a pending row of another step
// counts only for a fixed-output path (its content was checked against the declared
// hash, so any builder's upload is the same).
func promoteOutputs(ctx context.Context, tx pgx.Tx, stepID int64, sign Signer) error {
	rows, err := tx.Query(ctx, `SELECT path, ca FROM step_outputs WHERE step_id = $1 ORDER BY path`, stepID)
	if err != nil {
		return fmt.Errorf("outputs of step %d: %w", stepID, err)
	}
	type output struct{ path, ca string }
	outs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (output, error) {
		var o output
		err := r.Scan(&o.path, &o.ca)
		return o, err
	})
	if err != nil {
		return fmt.Errorf("outputs of step %d: %w", stepID, err)
	}
	hashes := make([]string, 0, len(outs))
	for _, o := range outs {
		if len(o.path) >= 43 {
			hashes = append(hashes, o.path[11:43])
		}
	}
	rows, err = tx.Query(ctx, `SELECT hash_part, store_path, nar_hash, nar_size, refs, coalesce(pending_step, 0)
		FROM narinfos WHERE hash_part = ANY($1) ORDER BY hash_part FOR UPDATE`, hashes)
	if err != nil {
		return fmt.Errorf("outputs of step %d in the cache: %w", stepID, err)
	}
	have, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Narinfo, error) {
		var n Narinfo
		err := r.Scan(&n.HashPart, &n.StorePath, &n.NarHash, &n.NarSize, &n.References, &n.PendingStep)
		return n, err
	})
	if err != nil {
		return fmt.Errorf("outputs of step %d in the cache: %w", stepID, err)
	}
	byPath := make(map[string]Narinfo, len(have))
	for _, n := range have {
		byPath[n.StorePath] = n
	}
	var missing, promote, sigs []string
	for _, o := range outs {
		n, ok := byPath[o.path]
		switch {
		case ok && n.PendingStep == 0:
		case ok && (n.PendingStep == stepID || o.ca != ""):
			if sign == nil {
				return fmt.Errorf("step %d: no key to sign its outputs", stepID)
			}
			sig, err := sign(n)
			if err != nil {
				return fmt.Errorf("sign %s: %w", n.StorePath, err)
			}
			promote, sigs = append(promote, n.HashPart), append(sigs, sig)
		default:
			missing = append(missing, o.path)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("step %d: %w: %s", stepID, ErrOutputsMissing, strings.Join(missing, " "))
	}
	if len(promote) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, `UPDATE narinfos n SET sigs = ARRAY[x.s], pending_step = NULL, last_used_at = now()
		FROM unnest($1::text[], $2::text[]) AS x(h, s) WHERE n.hash_part = x.h`, promote, sigs); err != nil {
		return fmt.Errorf("sign the outputs of step %d: %w", stepID, err)
	}
	return nil
}

func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// finishBuildsOfStep gives the non-aggregate builds of a step its status.
func finishBuildsOfStep(ctx context.Context, tx pgx.Tx, stepID int64, status string, code int, releaseName string) error {
	_, err := tx.Exec(ctx, `UPDATE builds SET status = $2, status_code = $3, finished_at = now(),
		started_at = coalesce(started_at, now()), release_name = CASE WHEN $4 = '' THEN release_name ELSE $4 END
		WHERE step_id = $1 AND status IN ('queued', 'running') AND NOT is_aggregate`, stepID, status, code, releaseName)
	return err
}

func insertProducts(ctx context.Context, tx pgx.Tx, stepID int64, products []Product, metrics []Metric) error {
	for _, p := range products {
		if _, err := tx.Exec(ctx, `INSERT INTO build_products (build_id, nr, type, subtype, name, path, default_path, file_size, sha256)
			SELECT id, $2, $3, $4, $5, $6, $7, $8, $9 FROM builds WHERE step_id = $1 ON CONFLICT DO NOTHING`,
			stepID, p.Nr, p.Type, p.Subtype, p.Name, p.Path, p.DefaultPath, p.FileSize, p.SHA256); err != nil {
			return fmt.Errorf("products: %w", err)
		}
	}
	for _, m := range metrics {
		if _, err := tx.Exec(ctx, `INSERT INTO build_metrics (build_id, name, value, unit)
			SELECT id, $2, $3, $4 FROM builds WHERE step_id = $1 ON CONFLICT DO NOTHING`, stepID, m.Name, m.Value, m.Unit); err != nil {
			return fmt.Errorf("metrics: %w", err)
		}
	}
	return nil
}

// failStepTx remembers a failed step's outputs (when its own build failed) and marks
// every step that waits for it, and their builds, dependency_failed, pointing at the
// build that failed.
func failStepTx(ctx context.Context, tx pgx.Tx, stepID int64) error {
	if _, err := tx.Exec(ctx, `INSERT INTO failed_paths (path, step_id)
		SELECT o.path, o.step_id FROM step_outputs o JOIN steps s ON s.id = o.step_id
		WHERE o.step_id = $1 AND s.status IN `+ownFailures+` ON CONFLICT (path) DO UPDATE SET step_id = excluded.step_id`, stepID); err != nil {
		return fmt.Errorf("failed paths: %w", err)
	}
	if _, err := tx.Exec(ctx, `WITH RECURSIVE dep(id) AS (
			SELECT step_id FROM step_edges WHERE depends_on = $1
			UNION SELECT e.step_id FROM step_edges e JOIN dep ON e.depends_on = dep.id)
		UPDATE steps SET status = 'dependency_failed', status_code = 2, finished_at = now(), lease_expires_at = NULL
		WHERE id IN (SELECT id FROM dep) AND status = 'queued'`, stepID); err != nil {
		return fmt.Errorf("propagate to steps: %w", err)
	}
	if _, err := tx.Exec(ctx, `WITH RECURSIVE dep(id) AS (
			SELECT step_id FROM step_edges WHERE depends_on = $1
			UNION SELECT e.step_id FROM step_edges e JOIN dep ON e.depends_on = dep.id)
		UPDATE builds b SET status = 'dependency_failed', status_code = 2, finished_at = now(),
			propagated_from = coalesce(
				(SELECT f.id FROM builds f WHERE f.step_id = $1 AND f.evaluation_id = b.evaluation_id ORDER BY f.id LIMIT 1),
				(SELECT min(f.id) FROM builds f WHERE f.step_id = $1))
		WHERE b.step_id IN (SELECT id FROM dep) AND b.status IN ('queued', 'running') AND NOT b.is_aggregate`, stepID); err != nil {
		return fmt.Errorf("propagate to builds: %w", err)
	}
	return nil
}

// finishAggregates finishes the aggregate builds (of one evaluation, or all when
// evalID is 0) whose own step and constituents have all finished: failed when a
// constituent did not succeed (the aggregate's own derivation, which usually depends
// on the constituents, is then dependency_failed; Hydra shows the aggregate failed),
// else the status of its own step.
func finishAggregates(ctx context.Context, tx pgx.Tx, evalID int64) error {
	// An aggregate may be a constituent of another: repeat until nothing changes.
	for range 16 {
		tag, err := tx.Exec(ctx, `UPDATE builds a SET
			status = CASE WHEN EXISTS (SELECT 1 FROM aggregate_constituents ac JOIN builds c ON c.id = ac.constituent_id
					WHERE ac.aggregate_id = a.id AND c.status <> 'succeeded') THEN 'failed'
				WHEN s.id IS NOT NULL AND s.status <> 'succeeded' THEN s.status ELSE 'succeeded' END,
			status_code = CASE WHEN EXISTS (SELECT 1 FROM aggregate_constituents ac JOIN builds c ON c.id = ac.constituent_id
					WHERE ac.aggregate_id = a.id AND c.status <> 'succeeded') THEN 1
				WHEN s.id IS NOT NULL AND s.status <> 'succeeded' THEN s.status_code ELSE 0 END,
			finished_at = now(), started_at = coalesce(a.started_at, now())
			FROM (SELECT b.id, b.step_id FROM builds b WHERE b.is_aggregate AND b.status IN ('queued', 'running')
				AND ($1 = 0 OR b.id IN (SELECT build_id FROM evaluation_builds WHERE evaluation_id = $1))) t
			LEFT JOIN steps s ON s.id = t.step_id
			WHERE a.id = t.id AND (s.id IS NULL OR s.status NOT IN ('queued', 'running'))
				AND NOT EXISTS (SELECT 1 FROM aggregate_constituents ac JOIN builds c ON c.id = ac.constituent_id
					WHERE ac.aggregate_id = a.id AND c.status IN ('queued', 'running'))`, evalID)
		if err != nil {
			return fmt.Errorf("finish aggregates: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return nil
		}
	}
	return nil
}
