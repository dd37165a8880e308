package storage

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// FinishEvaluation records a successful evaluation under its lease, in one
// transaction: per-attribute errors, one step per derivation that must be built
// (shared with every other evaluation that needs it), their edges and outputs, one
// build per job, and aggregate constituents. A stale lease changes nothing.
func (db *DB) FinishEvaluation(ctx context.Context, l Lease, o EvalOutcome) error {
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		var jobsetID int64
		err := tx.QueryRow(ctx, `SELECT jobset_id FROM evaluations WHERE id = $1 AND lease_epoch = $2 AND agent_id = $3
			AND status = 'running' FOR UPDATE`, l.ID, l.Epoch, l.AgentID).Scan(&jobsetID)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("evaluation %d epoch %d: %w", l.ID, l.Epoch, ErrStaleLease)
		}
		if err != nil {
			return err
		}
		if err := insertErrors(ctx, tx, l.ID, o.Errors); err != nil {
			return fmt.Errorf("errors: %w", err)
		}
		if err := insertNodes(ctx, tx, jobsetID, o.Nodes, o.Jobs); err != nil {
			return fmt.Errorf("steps: %w", err)
		}
		newBuilds, err := insertBuilds(ctx, tx, l.ID, jobsetID, o.Jobs)
		if err != nil {
			return fmt.Errorf("builds: %w", err)
		}
		if err := finishAggregates(ctx, tx, l.ID); err != nil {
			return fmt.Errorf("aggregates: %w", err)
		}
		_, err = tx.Exec(ctx, `UPDATE evaluations SET status = 'succeeded', nr_jobs = $2, nr_new_builds = $3, nr_errors = $4,
			checkout_seconds = $5, eval_seconds = $6, finished_at = now(), lease_expires_at = NULL WHERE id = $1`,
			l.ID, len(o.Jobs), newBuilds, len(o.Errors), o.CheckoutSeconds, o.EvalSeconds)
		if err != nil {
			return err
		}
		return notifySteps(ctx, tx)
	})
	if err != nil {
		return fmt.Errorf("finish evaluation %d: %w", l.ID, err)
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

func insertErrors(ctx context.Context, tx pgx.Tx, evalID int64, errs []AttrError) error {
	if len(errs) == 0 {
		return nil
	}
	attrs, msgs := make([]string, len(errs)), make([]string, len(errs))
	for i, e := range errs {
		attrs[i], msgs[i] = e.Attr, e.Message
	}
	_, err := tx.Exec(ctx, `INSERT INTO evaluation_errors (evaluation_id, attr, message)
		SELECT $1, a, m FROM unnest($2::text[], $3::text[]) AS x(a, m) ON CONFLICT DO NOTHING`, evalID, attrs, msgs)
	return err
}

func insertNodes(ctx context.Context, tx pgx.Tx, jobsetID int64, nodes []EvalNode, jobs []EvalJob) error {
	if len(nodes) == 0 {
		return nil
	}
	prio, depth := rankNodes(nodes, jobs)
	// A job's meta.timeout and meta.maxSilent apply to the step building it.
	limits := make(map[string][2]int, len(jobs))
	for _, j := range jobs {
		if j.Timeout > 0 || j.MaxSilent > 0 {
			limits[j.DrvPath] = [2]int{j.Timeout, j.MaxSilent}
		}
	}
	n := len(nodes)
	drvs, systems, feats := make([]string, n), make([]string, n), make([]string, n)
	local := make([]bool, n)
	timeouts, silents := make([]*int32, n), make([]*int32, n)
	prios, paths := make([]int32, n), make([]int32, n)
	var outDrv, outName, outPath, outCA, edgeFrom, edgeTo []string
	for i, nd := range nodes {
		drvs[i], systems[i], feats[i], local[i] = nd.DrvPath, nd.System, strings.Join(nd.RequiredFeatures, " "), nd.PreferLocalBuild
		prios[i], paths[i] = int32(prio[nd.DrvPath]), int32(depth[nd.DrvPath])
		if lim, ok := limits[nd.DrvPath]; ok {
			if lim[0] > 0 {
				v := int32(lim[0])
				timeouts[i] = &v
			}
			if lim[1] > 0 {
				v := int32(lim[1])
				silents[i] = &v
			}
		}
		names := make([]string, 0, len(nd.Outputs))
		for name := range nd.Outputs {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			outDrv, outName, outPath = append(outDrv, nd.DrvPath), append(outName, name), append(outPath, nd.Outputs[name])
			outCA = append(outCA, nd.OutputCA[name])
		}
		for _, in := range nd.Inputs {
			edgeFrom, edgeTo = append(edgeFrom, nd.DrvPath), append(edgeTo, in)
		}
	}
	// A step another evaluation already has keeps its row; it takes the higher
	// priority and longer critical path, and work that was cancelled, aborted or had no
	// capable agent is wanted again.
	_, err := tx.Exec(ctx, `INSERT INTO steps (drv_path, system, required_features, prefer_local_build, timeout_seconds,
			max_silent_seconds, jobset_id, scheduling_priority, critical_path)
		SELECT d, s, CASE WHEN f = '' THEN '{}'::text[] ELSE string_to_array(f, ' ') END, l, t, m, $7, p, c
		FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[], $5::int[], $6::int[], $8::int[], $9::int[])
			AS x(d, s, f, l, t, m, p, c)
		ON CONFLICT (drv_path) DO UPDATE SET
			scheduling_priority = greatest(steps.scheduling_priority, excluded.scheduling_priority),
			critical_path = greatest(steps.critical_path, excluded.critical_path),
			jobset_id = coalesce(steps.jobset_id, excluded.jobset_id),
			status = CASE WHEN steps.status IN ('cancelled', 'aborted', 'unsupported_system') THEN 'queued' ELSE steps.status END,
			status_code = CASE WHEN steps.status IN ('cancelled', 'aborted', 'unsupported_system') THEN NULL ELSE steps.status_code END,
			attempts = CASE WHEN steps.status IN ('cancelled', 'aborted', 'unsupported_system') THEN 0 ELSE steps.attempts END,
			created_at = CASE WHEN steps.status IN ('cancelled', 'aborted', 'unsupported_system') THEN now() ELSE steps.created_at END,
			finished_at = CASE WHEN steps.status IN ('cancelled', 'aborted', 'unsupported_system') THEN NULL ELSE steps.finished_at END`,
		drvs, systems, feats, local, timeouts, silents, jobsetID, prios, paths)
	if err != nil {
		return err
	}
	if len(outDrv) > 0 {
		_, err = tx.Exec(ctx, `INSERT INTO step_outputs (step_id, name, path, ca)
			SELECT s.id, x.n, x.p, x.ca FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS x(d, n, p, ca)
			JOIN steps s ON s.drv_path = x.d ON CONFLICT DO NOTHING`, outDrv, outName, outPath, outCA)
		if err != nil {
			return err
		}
	}
	if len(edgeFrom) > 0 {
		_, err = tx.Exec(ctx, `INSERT INTO step_edges (step_id, depends_on)
			SELECT a.id, b.id FROM unnest($1::text[], $2::text[]) AS x(f, t)
			JOIN steps a ON a.drv_path = x.f JOIN steps b ON b.drv_path = x.t ON CONFLICT DO NOTHING`, edgeFrom, edgeTo)
	}
	return err
}

// insertBuilds adds one build per job that has none yet for its derivation, links
// every job's build to the evaluation, and returns how many new builds must be built
// (the rest were already in the cache and finish at once, as Hydra's cached builds do).
func insertBuilds(ctx context.Context, tx pgx.Tx, evalID, jobsetID int64, jobs []EvalJob) (int, error) {
	if len(jobs) == 0 {
		return 0, nil
	}
	n := len(jobs)
	attrs, drvs, systems, names, descs, lics, homes := make([]string, n), make([]string, n), make([]string, n),
		make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	prios := make([]int32, n)
	aggs := make([]bool, n)
	var oJob, oName, oPath, cAgg, cRef []string
	for i, j := range jobs {
		attrs[i], drvs[i], systems[i], names[i] = j.Attr, j.DrvPath, j.System, j.Name
		descs[i], lics[i], homes[i], aggs[i] = j.Description, j.License, j.Homepage, j.IsAggregate
		prios[i] = int32(j.SchedulingPriority)
		if prios[i] == 0 {
			prios[i] = 100 // Hydra's default schedulingPriority
		}
		outs := make([]string, 0, len(j.Outputs))
		for name := range j.Outputs {
			outs = append(outs, name)
		}
		sort.Strings(outs)
		for _, name := range outs {
			oJob, oName, oPath = append(oJob, j.Attr), append(oName, name), append(oPath, j.Outputs[name])
		}
		for _, c := range j.Constituents {
			cAgg, cRef = append(cAgg, j.Attr), append(cRef, c)
		}
	}
	var newBuilds int
	// A job whose derivation already has a build of that job in the jobset joins this
	// evaluation as that build (Hydra's reuse), unless that build was cancelled, aborted
	// or had no capable agent: those are wanted again, as their steps are.
	err := tx.QueryRow(ctx, `WITH x AS (
		SELECT x.*, (SELECT b.id FROM builds b WHERE b.jobset_id = $2 AND b.job = x.a AND b.drv_path = x.d
				AND b.status NOT IN ('cancelled', 'aborted', 'unsupported_system') ORDER BY b.id DESC LIMIT 1) AS prev
		FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::int[], $11::boolean[])
			AS x(a, d, s, n, de, li, h, p, ag)),
	ins AS (
		INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, step_id, system, nix_name, description, license,
			homepage, scheduling_priority, is_aggregate, status, status_code, finished_at)
		SELECT $1, $2, x.a, x.d, s.id, x.s, x.n, x.de, x.li, x.h, x.p, x.ag,
			CASE WHEN x.ag THEN 'queued' WHEN s.id IS NULL THEN 'succeeded' WHEN s.status IN ('queued', 'running') THEN s.status
				WHEN s.status IN `+ownFailures+` THEN 'cached_failure' ELSE s.status END,
			CASE WHEN x.ag THEN NULL WHEN s.id IS NULL THEN 0 WHEN s.status IN `+ownFailures+` THEN 8 ELSE s.status_code END,
			CASE WHEN x.ag OR (s.id IS NOT NULL AND s.status IN ('queued', 'running')) THEN NULL ELSE now() END
		FROM x LEFT JOIN steps s ON s.drv_path = x.d
		WHERE x.prev IS NULL
		RETURNING id, step_id),
	-- New builds are linked by the builds_link_evaluation trigger.
	link AS (
		INSERT INTO evaluation_builds (evaluation_id, build_id)
		SELECT $1, prev FROM x WHERE prev IS NOT NULL ON CONFLICT DO NOTHING)
		SELECT count(*) FILTER (WHERE step_id IS NOT NULL) FROM ins`,
		evalID, jobsetID, attrs, drvs, systems, names, descs, lics, homes, prios, aggs).Scan(&newBuilds)
	if err != nil {
		return 0, err
	}
	if len(oJob) > 0 {
		if _, err := tx.Exec(ctx, `INSERT INTO build_outputs (build_id, name, path)
			SELECT b.id, x.n, x.p FROM unnest($2::text[], $3::text[], $4::text[]) AS x(j, n, p)
			JOIN builds b ON b.evaluation_id = $1 AND b.job = x.j`, evalID, oJob, oName, oPath); err != nil {
			return 0, err
		}
	}
	if len(cAgg) > 0 {
		// A constituent is a job name of this evaluation or the drv path of one of its jobs.
		if _, err := tx.Exec(ctx, `INSERT INTO aggregate_constituents (aggregate_id, constituent_id)
			SELECT DISTINCT a.id, c.id FROM unnest($2::text[], $3::text[]) AS x(agg, ref)
			JOIN evaluation_builds ea ON ea.evaluation_id = $1 JOIN builds a ON a.id = ea.build_id AND a.job = x.agg
			JOIN evaluation_builds ec ON ec.evaluation_id = $1 JOIN builds c ON c.id = ec.build_id
				AND (c.job = x.ref OR c.drv_path = x.ref) AND c.id <> a.id
			ON CONFLICT DO NOTHING`, evalID, cAgg, cRef); err != nil {
			return 0, err
		}
	}
	return newBuilds, nil
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
