package storage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// StatusCodes are Hydra's numbers for the finished statuses (DESIGN.md §7).
var StatusCodes = map[string]int{
	"succeeded": 0, "failed": 1, "dependency_failed": 2, "aborted": 3, "cancelled": 4,
	"failed_with_output": 6, "timed_out": 7, "cached_failure": 8, "unsupported_system": 9,
	"log_limit_exceeded": 10, "output_limit_exceeded": 11, "not_deterministic": 12,
}

// ownFailures are the statuses in which a step's own build failed: its outputs are
// remembered as failed, and a new build of it is a cached failure.
const ownFailures = `('failed', 'timed_out', 'failed_with_output', 'log_limit_exceeded', 'output_limit_exceeded', 'cached_failure')`

// restartable are the statuses a restart queues again.
const restartable = `('failed', 'timed_out', 'failed_with_output', 'log_limit_exceeded', 'output_limit_exceeded',
	'cached_failure', 'dependency_failed', 'aborted', 'cancelled', 'unsupported_system')`

// StepsChannel is the LISTEN/NOTIFY channel that says steps may have become runnable
// (an evaluation was stored, a step finished, work was restarted): every coordinator
// wakes its scheduler.
const StepsChannel = "fc_steps"

func notifySteps(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `SELECT pg_notify('`+StepsChannel+`', '')`)
	return err
}

// rankNodes gives each node the highest schedulingPriority of the jobs that need it
// and its critical path: the longest chain of nodes that wait for it, itself included.
func rankNodes(nodes []EvalNode, jobs []EvalJob) (prio, depth map[string]int) {
	dependents := make(map[string][]string, len(nodes))
	for _, n := range nodes {
		for _, in := range n.Inputs {
			dependents[in] = append(dependents[in], n.DrvPath)
		}
	}
	own := make(map[string]int, len(jobs))
	for _, j := range jobs {
		p := j.SchedulingPriority
		if p == 0 {
			p = 100
		}
		own[j.DrvPath] = max(own[j.DrvPath], p)
	}
	prio, depth = make(map[string]int, len(nodes)), make(map[string]int, len(nodes))
	// Iterative post-order over the dependents graph (a DAG; deep chains must not
	// exhaust the stack).
	type frame struct {
		drv  string
		next int
	}
	for _, n := range nodes {
		if _, done := depth[n.DrvPath]; done {
			continue
		}
		stack := []frame{{drv: n.DrvPath}}
		for len(stack) > 0 {
			top := &stack[len(stack)-1]
			ds := dependents[top.drv]
			if top.next < len(ds) {
				d := ds[top.next]
				top.next++
				if _, done := depth[d]; !done {
					stack = append(stack, frame{drv: d})
				}
				continue
			}
			p, c := own[top.drv], 0
			for _, d := range ds {
				p, c = max(p, prio[d]), max(c, depth[d])
			}
			if p == 0 {
				p = 100
			}
			prio[top.drv], depth[top.drv] = p, c+1
			stack = stack[:len(stack)-1]
		}
	}
	return prio, depth
}

// AgentSlots says what an agent can take: ClaimSteps gives it only steps it can build.
type AgentSlots struct {
	AgentID           int64
	Systems           []string
	Features          []string
	MandatoryFeatures []string
	N                 int
	TTL               time.Duration
}

// ClaimedStep is a step leased to an agent, with what it needs to build it.
type ClaimedStep struct {
	Lease
	DrvPath          string
	Outputs          map[string]string
	TimeoutSecs      *int
	MaxSilentSecs    *int
	RequiredFeatures []string
}

// ClaimSteps leases up to N runnable steps the agent can build, in scheduling order:
// bumped priority, the jobset's share use (build seconds in the last 24 h ÷ shares),
// schedulingPriority, critical path, age. Atomic across coordinators (SKIP LOCKED).
// The builds of a claimed step become running.
func (db *DB) ClaimSteps(ctx context.Context, a AgentSlots) ([]ClaimedStep, error) {
	if a.N <= 0 {
		return nil, nil
	}
	systems, features, mandatory := nonNil(a.Systems), nonNil(a.Features), nonNil(a.MandatoryFeatures)
	var out []ClaimedStep
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `WITH share AS (
				SELECT j.id, coalesce(sum(extract(epoch FROM b.finished_at - b.started_at)), 0) / j.scheduling_shares AS used
				FROM jobsets j LEFT JOIN builds b ON b.jobset_id = j.id AND b.finished_at > now() - interval '24 hours'
					AND b.started_at IS NOT NULL
				WHERE j.id IN (SELECT jobset_id FROM steps WHERE status = 'queued') -- only jobsets competing now
				GROUP BY j.id),
			pick AS (
				SELECT s.id FROM steps s LEFT JOIN share ON share.id = s.jobset_id
				WHERE s.status = 'queued' AND (s.not_before IS NULL OR s.not_before <= now())
					AND s.system = ANY($2::text[]) AND s.required_features <@ $3::text[] AND $4::text[] <@ s.required_features
					AND NOT EXISTS (SELECT 1 FROM step_edges e JOIN steps d ON d.id = e.depends_on
						WHERE e.step_id = s.id AND d.status <> 'succeeded')
					AND NOT EXISTS (SELECT 1 FROM step_outputs o JOIN failed_paths f ON f.path = o.path WHERE o.step_id = s.id)
				ORDER BY s.global_priority DESC, coalesce(share.used, 0), s.scheduling_priority DESC, s.critical_path DESC, s.id
				LIMIT $5 FOR UPDATE OF s SKIP LOCKED)
			UPDATE steps s SET status = 'running', agent_id = $1, lease_epoch = s.lease_epoch + 1,
				lease_expires_at = now() + make_interval(secs => $6), attempts = s.attempts + 1, started_at = now(),
				not_before = NULL
			FROM pick WHERE s.id = pick.id
			RETURNING s.id, s.lease_epoch, s.attempts, s.drv_path, s.timeout_seconds, s.max_silent_seconds, s.required_features`,
			a.AgentID, systems, features, mandatory, a.N, a.TTL.Seconds())
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (ClaimedStep, error) {
			c := ClaimedStep{Lease: Lease{Kind: LeaseStep, AgentID: a.AgentID}}
			err := r.Scan(&c.ID, &c.Epoch, &c.Attempt, &c.DrvPath, &c.TimeoutSecs, &c.MaxSilentSecs, &c.RequiredFeatures)
			return c, err
		})
		if err != nil || len(out) == 0 {
			return err
		}
		ids := make([]int64, len(out))
		for i, c := range out {
			ids[i] = c.ID
		}
		if _, err := tx.Exec(ctx, `UPDATE builds SET status = 'running', started_at = coalesce(started_at, now())
			WHERE step_id = ANY($1) AND status = 'queued'`, ids); err != nil {
			return err
		}
		outs, err := tx.Query(ctx, `SELECT step_id, name, path FROM step_outputs WHERE step_id = ANY($1)`, ids)
		if err != nil {
			return err
		}
		byID := make(map[int64]map[string]string, len(out))
		for outs.Next() {
			var id int64
			var name, path string
			if err := outs.Scan(&id, &name, &path); err != nil {
				return err
			}
			if byID[id] == nil {
				byID[id] = map[string]string{}
			}
			byID[id][name] = path
		}
		if err := outs.Err(); err != nil {
			return err
		}
		for i := range out {
			out[i].Outputs = byID[out[i].ID]
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("claim steps for agent %d: %w", a.AgentID, err)
	}
	return out, nil
}

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
				AND ($1 = 0 OR b.evaluation_id = $1)) t
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

// RetryStep requeues a step after an infrastructure failure the agent reported
// (counting the attempt, backing off); at max_attempts it ends aborted.
func (db *DB) RetryStep(ctx context.Context, l Lease, msg string, cfg LeaseConfig) error {
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		var status string
		err := tx.QueryRow(ctx, `UPDATE steps SET
			status = CASE WHEN attempts >= $5 THEN 'aborted' ELSE 'queued' END,
			status_code = CASE WHEN attempts >= $5 THEN 3 END,
			error = CASE WHEN attempts >= $5 THEN $4 || ' (after ' || attempts || ' attempts)' ELSE $4 END,
			finished_at = CASE WHEN attempts >= $5 THEN now() END,
			not_before = now() + make_interval(secs => $6 * power(2, greatest(attempts - 1, 0))),
			agent_id = CASE WHEN attempts >= $5 THEN agent_id END, lease_expires_at = NULL
			WHERE id = $1 AND lease_epoch = $2 AND agent_id = $3 AND status = 'running'
			RETURNING status`, l.ID, l.Epoch, l.AgentID, msg, cfg.MaxAttempts, cfg.Backoff.Seconds()).Scan(&status)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("step %d epoch %d: %w", l.ID, l.Epoch, ErrStaleLease)
		}
		if err != nil {
			return err
		}
		return afterRequeueOrAbort(ctx, tx, []int64{l.ID})
	})
	if err != nil {
		return fmt.Errorf("retry step %d: %w", l.ID, err)
	}
	return nil
}

// afterRequeueOrAbort brings the builds of steps that were requeued or aborted in line.
func afterRequeueOrAbort(ctx context.Context, tx pgx.Tx, ids []int64) error {
	if _, err := tx.Exec(ctx, `UPDATE builds b SET status = 'queued' FROM steps s
		WHERE s.id = b.step_id AND s.id = ANY($1) AND s.status = 'queued' AND b.status = 'running'`, ids); err != nil {
		return err
	}
	rows, err := tx.Query(ctx, `SELECT id FROM steps WHERE id = ANY($1) AND status = 'aborted'`, ids)
	if err != nil {
		return err
	}
	aborted, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return err
	}
	for _, id := range aborted {
		if err := finishBuildsOfStep(ctx, tx, id, "aborted", 3, ""); err != nil {
			return err
		}
		if err := failStepTx(ctx, tx, id); err != nil {
			return err
		}
	}
	if err := finishAggregates(ctx, tx, 0); err != nil {
		return err
	}
	return notifySteps(ctx, tx)
}

// RescueSteps requeues steps whose lease expired (backoff, attempt counted) and
// aborts those that used up max_attempts, with their builds.
func (db *DB) RescueSteps(ctx context.Context, cfg LeaseConfig) (requeued, aborted int, err error) {
	err = pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `UPDATE steps SET
			status = CASE WHEN attempts >= $1 THEN 'aborted' ELSE 'queued' END,
			status_code = CASE WHEN attempts >= $1 THEN 3 END,
			error = CASE WHEN attempts >= $1 THEN 'aborted: the agent was lost ' || attempts || ' times (max_attempts)' ELSE error END,
			finished_at = CASE WHEN attempts >= $1 THEN now() END,
			not_before = now() + make_interval(secs => $2 * power(2, greatest(attempts - 1, 0))),
			agent_id = CASE WHEN attempts >= $1 THEN agent_id END, lease_expires_at = NULL
			WHERE status = 'running' AND lease_expires_at < now()
			RETURNING id, status`, cfg.MaxAttempts, cfg.Backoff.Seconds())
		if err != nil {
			return err
		}
		var ids []int64
		for rows.Next() {
			var id int64
			var status string
			if err := rows.Scan(&id, &status); err != nil {
				return err
			}
			ids = append(ids, id)
			if status == "aborted" {
				aborted++
			} else {
				requeued++
			}
		}
		if err := rows.Err(); err != nil || len(ids) == 0 {
			return err
		}
		return afterRequeueOrAbort(ctx, tx, ids)
	})
	if err != nil {
		return 0, 0, fmt.Errorf("rescue steps: %w", err)
	}
	return requeued, aborted, nil
}

// endQueuedSteps ends queued steps chosen by where (a condition on s) with a status
// that propagates like a failure.
func (db *DB) endQueuedSteps(ctx context.Context, status, errMsg, where string, args ...any) (int, error) {
	code := StatusCodes[status]
	n := 0
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `UPDATE steps s SET status = '`+status+`', status_code = `+fmt.Sprint(code)+`,
			error = '`+errMsg+`', finished_at = now()
			WHERE s.status = 'queued' AND `+where+` RETURNING s.id`, args...)
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil || len(ids) == 0 {
			return err
		}
		n = len(ids)
		for _, id := range ids {
			if err := finishBuildsOfStep(ctx, tx, id, status, code, ""); err != nil {
				return err
			}
			if err := failStepTx(ctx, tx, id); err != nil {
				return err
			}
		}
		if err := finishAggregates(ctx, tx, 0); err != nil {
			return err
		}
		return notifySteps(ctx, tx)
	})
	if err != nil {
		return 0, fmt.Errorf("end %s steps: %w", status, err)
	}
	return n, nil
}

// FailCachedSteps ends queued steps with an output that failed before (and was not
// restarted since) as cached_failure.
func (db *DB) FailCachedSteps(ctx context.Context) (int, error) {
	return db.endQueuedSteps(ctx, "cached_failure", "an output of this derivation failed to build before; restart to retry",
		`EXISTS (SELECT 1 FROM step_outputs o JOIN failed_paths f ON f.path = o.path WHERE o.step_id = s.id)`)
}

// EndUnsupportedSteps ends queued steps that no agent could build for wait: no
// enabled build agent, connected or seen within wait, has the system and features.
func (db *DB) EndUnsupportedSteps(ctx context.Context, wait time.Duration) (int, error) {
	return db.endQueuedSteps(ctx, "unsupported_system", "no agent can build this system and feature set",
		`s.created_at < now() - make_interval(secs => $1)
		AND NOT EXISTS (SELECT 1 FROM agents a WHERE a.revoked_at IS NULL AND a.enabled AND 'build' = ANY(a.roles)
			AND (a.connected OR a.last_seen_at > now() - make_interval(secs => $1))
			AND s.system = ANY(a.systems) AND s.required_features <@ a.features AND a.mandatory_features <@ s.required_features)`,
		wait.Seconds())
}

// QueuedSteps reports whether any step is queued (so the scheduler need not look at
// agents when nothing is).
func (db *DB) QueuedSteps(ctx context.Context) (bool, error) {
	var ok bool
	err := db.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM steps WHERE status = 'queued')`).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("queued steps: %w", err)
	}
	return ok, nil
}

// RunningSteps lists the steps an agent holds a lease on.
func (db *DB) RunningSteps(ctx context.Context, agentID int64) ([]Lease, error) {
	rows, err := db.pool.Query(ctx, `SELECT id, lease_epoch, attempts FROM steps WHERE agent_id = $1 AND status = 'running'`, agentID)
	if err != nil {
		return nil, fmt.Errorf("running steps of agent %d: %w", agentID, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Lease, error) {
		l := Lease{Kind: LeaseStep, AgentID: agentID}
		return l, r.Scan(&l.ID, &l.Epoch, &l.Attempt)
	})
	if err != nil {
		return nil, fmt.Errorf("running steps of agent %d: %w", agentID, err)
	}
	return out, nil
}

// RunningStepsByAgent counts the steps each agent holds, across coordinators.
func (db *DB) RunningStepsByAgent(ctx context.Context) (map[int64]int, error) {
	rows, err := db.pool.Query(ctx, `SELECT agent_id, count(*) FROM steps WHERE status = 'running' AND agent_id IS NOT NULL GROUP BY agent_id`)
	if err != nil {
		return nil, fmt.Errorf("running steps: %w", err)
	}
	out := map[int64]int{}
	for rows.Next() {
		var id int64
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			return nil, err
		}
		out[id] = n
	}
	return out, rows.Err()
}

// ReleaseStep gives a claimed step back without counting an attempt (the agent
// declined it before starting); its builds are queued again.
func (db *DB) ReleaseStep(ctx context.Context, l Lease) error {
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE steps SET status = 'queued', agent_id = NULL, lease_expires_at = NULL,
			attempts = greatest(attempts - 1, 0), started_at = NULL WHERE id = $1 AND lease_epoch = $2 AND status = 'running'`, l.ID, l.Epoch)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE builds SET status = 'queued' WHERE step_id = $1 AND status = 'running'`, l.ID)
		return err
	})
	if err != nil {
		return fmt.Errorf("release step %d: %w", l.ID, err)
	}
	return nil
}

// NextRetry is when the earliest queued step held back by a retry backoff becomes
// runnable (ok false when none is).
func (db *DB) NextRetry(ctx context.Context) (time.Time, bool, error) {
	var at *time.Time
	if err := db.pool.QueryRow(ctx, `SELECT min(not_before) FROM steps WHERE status = 'queued' AND not_before > now()`).Scan(&at); err != nil {
		return time.Time{}, false, fmt.Errorf("next retry: %w", err)
	}
	if at == nil {
		return time.Time{}, false, nil
	}
	return *at, true, nil
}
