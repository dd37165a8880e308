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
//
// After the commit, the dependents a success made runnable become claimable
// (UnblockDependents).
func (db *DB) FinishStep(ctx context.Context, l Lease, o StepOutcome, sign Signer) error {
	if err := db.recordStep(ctx, l, o, sign); err != nil {
		return err
	}
	if o.Status == "succeeded" {
		db.unblockAfter(ctx, "step", unblockDependentsOf, l.ID)
	}
	return nil
}

// recordStep is FinishStep without making the dependents claimable.
func (db *DB) recordStep(ctx context.Context, l Lease, o StepOutcome, sign Signer) error {
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
	missing, err := promoteOutputsOf(ctx, tx, []int64{stepID}, sign)
	if err != nil {
		return err
	}
	if m := missing[stepID]; len(m) > 0 {
		return fmt.Errorf("step %d: %w: %s", stepID, ErrOutputsMissing, strings.Join(m, " "))
	}
	return nil
}

// promoteOutputsOf is promoteOutputs for several steps at once (three statements
// however many). It returns the outputs missing from the cache by step; when any is
// missing, nothing is promoted.
func promoteOutputsOf(ctx context.Context, tx pgx.Tx, stepIDs []int64, sign Signer) (map[int64][]string, error) {
	rows, err := tx.Query(ctx, `SELECT step_id, path, ca FROM step_outputs WHERE step_id = ANY($1) ORDER BY step_id, path`, stepIDs)
	if err != nil {
		return nil, fmt.Errorf("outputs of steps %v: %w", stepIDs, err)
	}
	type output struct {
		step     int64
		path, ca string
	}
	outs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (output, error) {
		var o output
		err := r.Scan(&o.step, &o.path, &o.ca)
		return o, err
	})
	if err != nil {
		return nil, fmt.Errorf("outputs of steps %v: %w", stepIDs, err)
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
		return nil, fmt.Errorf("outputs of steps %v in the cache: %w", stepIDs, err)
	}
	have, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Narinfo, error) {
		var n Narinfo
		err := r.Scan(&n.HashPart, &n.StorePath, &n.NarHash, &n.NarSize, &n.References, &n.PendingStep)
		return n, err
	})
	if err != nil {
		return nil, fmt.Errorf("outputs of steps %v in the cache: %w", stepIDs, err)
	}
	byPath := make(map[string]Narinfo, len(have))
	for _, n := range have {
		byPath[n.StorePath] = n
	}
	missing := map[int64][]string{}
	var promote, sigs []string
	for _, o := range outs {
		n, ok := byPath[o.path]
		switch {
		case ok && n.PendingStep == 0:
		case ok && (n.PendingStep == o.step || o.ca != ""):
			if sign == nil {
				return nil, fmt.Errorf("step %d: no key to sign its outputs", o.step)
			}
			sig, err := sign(n)
			if err != nil {
				return nil, fmt.Errorf("sign %s: %w", n.StorePath, err)
			}
			promote, sigs = append(promote, n.HashPart), append(sigs, sig)
		default:
			missing[o.step] = append(missing[o.step], o.path)
		}
	}
	if len(missing) > 0 || len(promote) == 0 {
		return missing, nil
	}
	if _, err := tx.Exec(ctx, `UPDATE narinfos n SET sigs = ARRAY[x.s], pending_step = NULL, last_used_at = now()
		FROM unnest($1::text[], $2::text[]) AS x(h, s) WHERE n.hash_part = x.h`, promote, sigs); err != nil {
		return nil, fmt.Errorf("sign the outputs of steps %v: %w", stepIDs, err)
	}
	return missing, nil
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

// insertProducts adds a step's products and metrics to every build of the step.
func insertProducts(ctx context.Context, tx pgx.Tx, stepID int64, products []Product, metrics []Metric) error {
	var pr batchProducts
	var me batchMetrics
	pr.add(stepID, products)
	me.add(stepID, metrics)
	if err := pr.insert(ctx, tx, []int64{stepID}); err != nil {
		return err
	}
	return me.insert(ctx, tx, []int64{stepID})
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

// Finished is one step report for FinishSteps: the lease it came under and what the
// agent reported.
type Finished struct {
	Lease   Lease
	Outcome StepOutcome
}

// FinishedResult is what FinishSteps made of one report: its error (as FinishStep's)
// and, once recorded, the step's system ("" when recorded one at a time) and whether
// any step depends on it (true when recorded one at a time: not looked up), so the
// caller clears the marks of dependents only where there are some.
type FinishedResult struct {
	System     string
	Dependents bool
	Err        error
}

// errBatchMissing is a batch in which a step's outputs are missing: it is recorded
// one report at a time, so that only that report fails.
var errBatchMissing = errors.New("a step of the batch has outputs missing")

// FinishSteps records several step reports. Those of steps that succeeded (the many
// quick steps of a busy queue; each has a product at least, its output) are recorded
// together in one transaction, with the same effects and checks as FinishStep, a
// handful of statements and one notification for all; the others, and every report
// of a batch that fails (a missing output, a conflict), one at a time as FinishStep
// records them.
//
// Unlike FinishStep, it leaves the dependents of the steps that succeeded blocked:
// the caller answers the reports first, then calls UnblockDependents with those
// steps (the build sweep clears what it misses, later).
func (db *DB) FinishSteps(ctx context.Context, fs []Finished, sign Signer) []FinishedResult {
	res := make([]FinishedResult, len(fs))
	var batch []int
	seen := map[int64]bool{}
	for i, f := range fs {
		if f.Outcome.Status == "succeeded" && !seen[f.Lease.ID] {
			seen[f.Lease.ID] = true
			batch = append(batch, i)
			continue
		}
		res[i] = FinishedResult{Dependents: true, Err: db.recordStep(ctx, f.Lease, f.Outcome, sign)}
	}
	if len(batch) == 0 {
		return res
	}
	if err := db.finishBatch(ctx, fs, batch, sign, res); err != nil {
		for _, i := range batch {
			res[i] = FinishedResult{Dependents: true, Err: db.recordStep(ctx, fs[i].Lease, fs[i].Outcome, sign)}
		}
	}
	return res
}

// finishBatch records the succeeded steps fs[batch] in one transaction, filling in
// res; an error rolls it all back.
func (db *DB) finishBatch(ctx context.Context, fs []Finished, batch []int, sign Signer, res []FinishedResult) error {
	n := len(batch)
	ids, epochs, agents := make([]int64, n), make([]int64, n), make([]int64, n)
	msgs, releases := make([]string, n), make([]string, n)
	exits, logSizes := make([]int32, n), make([]int64, n)
	started, finished := make([]*time.Time, n), make([]*time.Time, n)
	for k, i := range batch {
		f := fs[i]
		ids[k], epochs[k], agents[k] = f.Lease.ID, f.Lease.Epoch, f.Lease.AgentID
		msgs[k], releases[k], exits[k], logSizes[k] = f.Outcome.Error, f.Outcome.ReleaseName, int32(f.Outcome.ExitCode), f.Outcome.LogSize
		started[k], finished[k] = nullTime(f.Outcome.StartedAt), nullTime(f.Outcome.FinishedAt)
	}
	var pr batchProducts
	var me batchMetrics
	for _, i := range batch {
		pr.add(fs[i].Lease.ID, fs[i].Outcome.Products)
		me.add(fs[i].Lease.ID, fs[i].Outcome.Metrics)
	}
	systems, dependents := map[int64]string{}, map[int64]bool{}
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		// In step order, so two batches lock rows alike. The lease is checked on the
		// locked rows' columns (the row as it is once locked), not on s: with a
		// condition on s.status the planner, whose statistics may predate every
		// running step, drove the update from steps_running and compared each running
		// step with each report (0.5 s a batch of 256 with 2,000 steps running).
		rows, err := tx.Query(ctx, `UPDATE steps s SET status = 'succeeded', status_code = 0, error = x.error, exit_code = x.exit_code,
				log_size = x.log_size, started_at = coalesce(x.started_at, s.started_at), finished_at = coalesce(x.finished_at, now()),
				lease_expires_at = NULL
			FROM (SELECT x.*, l.lease_epoch AS held_epoch, l.agent_id AS held_agent, l.status AS held_status
				FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::int[], $6::bigint[],
					$7::timestamptz[], $8::timestamptz[]) x(id, epoch, agent_id, error, exit_code, log_size, started_at, finished_at)
				JOIN steps l ON l.id = x.id ORDER BY x.id FOR UPDATE OF l) x
			WHERE s.id = x.id AND x.held_epoch = x.epoch AND x.held_agent = x.agent_id AND x.held_status = 'running'
			RETURNING s.id, s.system, EXISTS (SELECT 1 FROM step_edges e WHERE e.depends_on = s.id)`,
			ids, epochs, agents, msgs, exits, logSizes, started, finished)
		if err != nil {
			return err
		}
		var done []int64
		for rows.Next() {
			var id int64
			var system string
			var deps bool
			if err := rows.Scan(&id, &system, &deps); err != nil {
				rows.Close()
				return err
			}
			done, systems[id], dependents[id] = append(done, id), system, deps
		}
		if err := rows.Err(); err != nil || len(done) == 0 {
			return err
		}
		missing, err := promoteOutputsOf(ctx, tx, done, sign)
		if err != nil {
			return err
		}
		if len(missing) > 0 {
			return errBatchMissing
		}
		// Only the reports whose lease held count from here on.
		var doneIDs, doneAgents []int64
		var doneReleases []string
		for k := range ids {
			if _, ok := systems[ids[k]]; ok {
				doneIDs, doneAgents, doneReleases = append(doneIDs, ids[k]), append(doneAgents, agents[k]), append(doneReleases, releases[k])
			}
		}
		if _, err := tx.Exec(ctx, `UPDATE agents SET consecutive_failures = 0, disabled_until = NULL
			WHERE id = ANY($1) AND (consecutive_failures <> 0 OR disabled_until IS NOT NULL)`, doneAgents); err != nil {
			return fmt.Errorf("reset the failures of agents: %w", err)
		}
		if _, err := tx.Exec(ctx, `UPDATE builds b SET status = 'succeeded', status_code = 0, finished_at = now(),
				started_at = coalesce(b.started_at, now()), release_name = CASE WHEN x.release = '' THEN b.release_name ELSE x.release END
			FROM unnest($1::bigint[], $2::text[]) x(step_id, release)
			WHERE b.step_id = x.step_id AND b.status IN ('queued', 'running') AND NOT b.is_aggregate`, doneIDs, doneReleases); err != nil {
			return err
		}
		if err := pr.insert(ctx, tx, doneIDs); err != nil {
			return err
		}
		if err := me.insert(ctx, tx, doneIDs); err != nil {
			return err
		}
		if err := finishAggregates(ctx, tx, 0); err != nil {
			return err
		}
		return notifySteps(ctx, tx)
	})
	if err != nil {
		return fmt.Errorf("finish %d steps: %w", n, err)
	}
	for k, i := range batch {
		if sys, ok := systems[ids[k]]; ok {
			res[i] = FinishedResult{System: sys, Dependents: dependents[ids[k]]}
		} else {
			res[i] = FinishedResult{Err: fmt.Errorf("finish step %d: step %d epoch %d: %w", ids[k], ids[k], epochs[k], ErrStaleLease)}
		}
	}
	return nil
}

// batchProducts are the products of one or more reports, column by column, so that
// one statement inserts them all.
type batchProducts struct {
	steps                                       []int64
	nrs                                         []int32
	types, subtypes, names, paths, defs, hashes []string
	sizes                                       []*int64
}

func (b *batchProducts) add(stepID int64, ps []Product) {
	for _, p := range ps {
		b.steps, b.nrs = append(b.steps, stepID), append(b.nrs, int32(p.Nr))
		b.types, b.subtypes, b.names = append(b.types, p.Type), append(b.subtypes, p.Subtype), append(b.names, p.Name)
		b.paths, b.defs, b.hashes = append(b.paths, p.Path), append(b.defs, p.DefaultPath), append(b.hashes, p.SHA256)
		b.sizes = append(b.sizes, p.FileSize)
	}
}

// insert adds the products of the steps recorded (done) to every build of theirs,
// in the order they were added: of two with the same number, the first stays.
func (b *batchProducts) insert(ctx context.Context, tx pgx.Tx, done []int64) error {
	if len(b.steps) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, `INSERT INTO build_products (build_id, nr, type, subtype, name, path, default_path, file_size, sha256)
		SELECT b.id, x.nr, x.type, x.subtype, x.name, x.path, x.default_path, x.file_size, x.sha256
		FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[], $9::text[])
			WITH ORDINALITY x(step_id, nr, type, subtype, name, path, default_path, file_size, sha256, ord)
		JOIN builds b ON b.step_id = x.step_id WHERE x.step_id = ANY($10::bigint[]) ORDER BY x.ord, b.id ON CONFLICT DO NOTHING`,
		b.steps, b.nrs, b.types, b.subtypes, b.names, b.paths, b.defs, b.sizes, b.hashes, done); err != nil {
		return fmt.Errorf("products: %w", err)
	}
	return nil
}

// batchMetrics are the metrics of one or more reports, column by column.
type batchMetrics struct {
	steps        []int64
	names, units []string
	values       []float64
}

func (b *batchMetrics) add(stepID int64, ms []Metric) {
	for _, m := range ms {
		b.steps, b.names, b.values, b.units = append(b.steps, stepID), append(b.names, m.Name), append(b.values, m.Value), append(b.units, m.Unit)
	}
}

// insert adds the metrics of the steps recorded (done) to every build of theirs, in
// the order they were added: of two with the same name, the first stays.
func (b *batchMetrics) insert(ctx context.Context, tx pgx.Tx, done []int64) error {
	if len(b.steps) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, `INSERT INTO build_metrics (build_id, name, value, unit)
		SELECT b.id, x.name, x.value, x.unit
		FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::text[]) WITH ORDINALITY x(step_id, name, value, unit, ord)
		JOIN builds b ON b.step_id = x.step_id WHERE x.step_id = ANY($5::bigint[]) ORDER BY x.ord, b.id ON CONFLICT DO NOTHING`,
		b.steps, b.names, b.values, b.units, done); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}
