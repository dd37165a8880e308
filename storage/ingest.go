package storage

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// FinishEvaluation records a successful evaluation under its lease, in one
// transaction: per-attribute errors, one step per derivation that must be built
// (shared with every other evaluation that needs it), their edges and outputs, one
// build per job, and aggregate constituents. A stale lease changes nothing. It is the
// whole report of an agent that does not stream it (see EvalIngest).
func (db *DB) FinishEvaluation(ctx context.Context, l Lease, o EvalOutcome) error {
	in, err := db.BeginEvalIngest(ctx, l)
	if err != nil {
		return err
	}
	if err = in.Add(ctx, o.Jobs, o.Errors, o.Nodes); err == nil {
		err = in.Finish(ctx, o.CheckoutSeconds, o.EvalSeconds)
	}
	if err != nil {
		// Not the request's context: what was staged goes even when it was cancelled.
		_ = in.Discard(context.WithoutCancel(ctx))
		return err
	}
	return nil
}

// FailEvaluation records an evaluation that failed as a whole (e.g. the expression
// does not parse, the revision does not exist): not retried. The error is the
// jobset's last_check_error too, until its next evaluation is created.
func (db *DB) FailEvaluation(ctx context.Context, l Lease, msg string, checkoutSecs, evalSecs float64) error {
	tag, err := db.pool.Exec(ctx, `WITH e AS (UPDATE evaluations SET status = 'failed', error = $4, checkout_seconds = $5,
			eval_seconds = $6, finished_at = now(), lease_expires_at = NULL
			WHERE id = $1 AND lease_epoch = $2 AND agent_id = $3 AND status = 'running' RETURNING jobset_id)
		UPDATE jobsets SET last_check_error = $4 WHERE id IN (SELECT jobset_id FROM e)`,
		l.ID, l.Epoch, l.AgentID, msg, checkoutSecs, evalSecs)
	if err != nil {
		return fmt.Errorf("fail evaluation %d: %w", l.ID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("evaluation %d epoch %d: %w", l.ID, l.Epoch, ErrStaleLease)
	}
	return nil
}

// RetryEvaluation requeues an evaluation after an infrastructure failure, counting
// the attempt and backing off; at max_attempts it fails for good.
func (db *DB) RetryEvaluation(ctx context.Context, l Lease, msg string, cfg LeaseConfig) error {
	tag, err := db.pool.Exec(ctx, `UPDATE evaluations SET
		status = CASE WHEN attempts >= $5 THEN 'failed' ELSE 'queued' END,
		error = CASE WHEN attempts >= $5 THEN $4 || ' (after ' || attempts || ' attempts)' ELSE $4 END,
		finished_at = CASE WHEN attempts >= $5 THEN now() END,
		not_before = now() + make_interval(secs => $6 * power(2, greatest(attempts - 1, 0))),
		agent_id = CASE WHEN attempts >= $5 THEN agent_id END, lease_expires_at = NULL
		WHERE id = $1 AND lease_epoch = $2 AND agent_id = $3 AND status = 'running'`,
		l.ID, l.Epoch, l.AgentID, msg, cfg.MaxAttempts, cfg.Backoff.Seconds())
	if err != nil {
		return fmt.Errorf("retry evaluation %d: %w", l.ID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("evaluation %d epoch %d: %w", l.ID, l.Epoch, ErrStaleLease)
	}
	return nil
}

// BuildSummary is a build as the evaluation issue's first builds list shows it.
type BuildSummary struct {
	ID             int64
	EvaluationID   int64
	Job            string
	DrvPath        string
	System         string
	Status         string
	StatusCode     *int
	StepID         *int64
	IsAggregate    bool
	JobsetID       int64
	PropagatedFrom *int64
	FinishedAt     *time.Time
	ProjectID      int64
	Project        string
	Jobset         string
}

// BuildFilter narrows ListBuilds; zero values do not filter.
type BuildFilter struct {
	EvaluationID, JobsetID, ProjectID int64
	Status, System, Job               string
	// Finished lists only finished builds, the most recently finished first.
	Finished bool
}

// buildFilter is BuildFilter's condition: $1 evaluation, $2 jobset, $3 project, $4
// status, $5 system, $6 job; a zero value does not filter.
const buildFilter = `($1 = 0 OR b.id IN (SELECT build_id FROM evaluation_builds WHERE evaluation_id = $1)) AND ($2 = 0 OR b.jobset_id = $2) AND ($3 = 0 OR j.project_id = $3)
		AND ($4 = '' OR b.status = $4) AND ($5 = '' OR b.system = $5) AND ($6 = '' OR b.job = $6)`

const buildSummaryColumns = `b.id, b.evaluation_id, b.job, b.drv_path, b.system, b.status, b.status_code,
		b.step_id, b.is_aggregate, b.jobset_id, b.propagated_from, b.finished_at, j.project_id, p.name, j.name`

// The statements of ListBuilds: all builds newest first, or the finished ones most
// recently finished first.
const (
	countBuilds = `SELECT count(*) FROM builds b JOIN jobsets j ON j.id = b.jobset_id WHERE ` + buildFilter
	listBuilds  = `SELECT ` + buildSummaryColumns + ` FROM builds b JOIN jobsets j ON j.id = b.jobset_id
		JOIN projects p ON p.id = j.project_id WHERE ` + buildFilter + ` ORDER BY b.id DESC LIMIT $7 OFFSET $8`
	countFinishedBuilds = countBuilds + ` AND b.finished_at IS NOT NULL`
	listFinishedBuilds  = `SELECT ` + buildSummaryColumns + ` FROM builds b JOIN jobsets j ON j.id = b.jobset_id
		JOIN projects p ON p.id = j.project_id WHERE ` + buildFilter + ` AND b.finished_at IS NOT NULL ORDER BY b.finished_at DESC, b.id DESC LIMIT $7 OFFSET $8`
)

// ListBuilds returns a page of builds, newest first.
func (db *DB) ListBuilds(ctx context.Context, f BuildFilter, page Page) ([]BuildSummary, int64, error) {
	count, list := countBuilds, listBuilds
	if f.Finished {
		count, list = countFinishedBuilds, listFinishedBuilds
	}
	args := []any{f.EvaluationID, f.JobsetID, f.ProjectID, f.Status, f.System, f.Job}
	var total int64
	if err := db.pool.QueryRow(ctx, count, args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count builds: %w", err)
	}
	rows, err := db.pool.Query(ctx, list, append(args, page.Limit, page.Offset)...)
	if err != nil {
		return nil, 0, fmt.Errorf("list builds: %w", err)
	}
	items, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (BuildSummary, error) {
		var b BuildSummary
		err := r.Scan(&b.ID, &b.EvaluationID, &b.Job, &b.DrvPath, &b.System, &b.Status, &b.StatusCode, &b.StepID, &b.IsAggregate,
			&b.JobsetID, &b.PropagatedFrom, &b.FinishedAt, &b.ProjectID, &b.Project, &b.Jobset)
		return b, err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("list builds: %w", err)
	}
	return items, total, nil
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
