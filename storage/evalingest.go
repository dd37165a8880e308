package storage

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/jackc/pgx/v5"
)

// EvalIngest is an evaluation's report being stored while the agent streams it
// (protocol.StreamEvalStream). Add copies each part into staging tables that nothing
// else reads (migrations/00022): no row another evaluation or the build queue uses is
// touched, so nothing waits on a stream. Finish moves the whole report into steps,
// builds and the rest in one transaction under the lease, so the evaluation appears
// whole or not at all; Discard (the stream broke, the evaluation failed or is
// retried) deletes what was staged. Not safe for concurrent use.
type EvalIngest struct {
	db    *DB
	id    int64
	lease Lease
	// What Finish ranks the nodes with (drv paths and inputs, in seq order) and the
	// jobs' priorities and limits; everything else stays in the staging tables.
	nodes           []EvalNode
	seenNodes       map[string]bool
	jobs            []EvalJob
	nErrors         int
	hasConstituents bool
	// blocked are the steps Finish left blocked, cleared after its commit where their
	// inputs are built (blocked.go).
	blocked []int64
}

// BeginEvalIngest starts storing a report of the evaluation l leases. It clears what
// earlier attempts of the evaluation left, and the staged reports of evaluations no
// longer running (a coordinator that died mid-stream). The lease is checked by
// Finish (the caller checks it first too, to refuse a stale stream early).
func (db *DB) BeginEvalIngest(ctx context.Context, l Lease) (*EvalIngest, error) {
	in := &EvalIngest{db: db, lease: l, seenNodes: map[string]bool{}}
	_, err := db.pool.Exec(ctx, `DELETE FROM eval_ingests i WHERE (i.evaluation_id = $1 AND i.lease_epoch < $2)
		OR NOT EXISTS (SELECT 1 FROM evaluations e WHERE e.id = i.evaluation_id AND e.status = 'running')`, l.ID, l.Epoch)
	if err != nil {
		return nil, fmt.Errorf("begin storing evaluation %d: %w", l.ID, err)
	}
	if err := db.pool.QueryRow(ctx, `INSERT INTO eval_ingests (evaluation_id, lease_epoch) VALUES ($1, $2) RETURNING id`,
		l.ID, l.Epoch).Scan(&in.id); err != nil {
		return nil, fmt.Errorf("begin storing evaluation %d: %w", l.ID, err)
	}
	return in, nil
}

// Add stages part of the report. A node already added is skipped.
func (in *EvalIngest) Add(ctx context.Context, jobs []EvalJob, errs []AttrError, nodes []EvalNode) error {
	if len(jobs) > 0 {
		rows := make([][]any, len(jobs))
		for i, j := range jobs {
			names := make([]string, 0, len(j.Outputs))
			for name := range j.Outputs {
				names = append(names, name)
			}
			sort.Strings(names)
			paths := make([]string, len(names))
			for k, name := range names {
				paths[k] = j.Outputs[name]
			}
			rows[i] = []any{in.id, j.Attr, j.Name, j.DrvPath, j.System, j.Description, j.License, j.Homepage,
				int32(j.SchedulingPriority), j.IsAggregate, names, paths, nonNil(j.Constituents)}
			in.jobs = append(in.jobs, EvalJob{DrvPath: j.DrvPath, SchedulingPriority: j.SchedulingPriority,
				Timeout: j.Timeout, MaxSilent: j.MaxSilent})
			in.hasConstituents = in.hasConstituents || len(j.Constituents) > 0
		}
		if err := in.copy(ctx, "eval_ingest_jobs", []string{"ingest_id", "attr", "name", "drv_path", "system", "description",
			"license", "homepage", "scheduling_priority", "is_aggregate", "output_names", "output_paths", "constituents"}, rows); err != nil {
			return err
		}
	}
	if len(errs) > 0 {
		rows := make([][]any, len(errs))
		for i, e := range errs {
			rows[i] = []any{in.id, e.Attr, e.Message}
		}
		if err := in.copy(ctx, "eval_ingest_errors", []string{"ingest_id", "attr", "message"}, rows); err != nil {
			return err
		}
		in.nErrors += len(errs)
	}
	var rows [][]any
	for _, n := range nodes {
		if in.seenNodes[n.DrvPath] {
			continue
		}
		in.seenNodes[n.DrvPath] = true
		in.nodes = append(in.nodes, EvalNode{DrvPath: n.DrvPath, Inputs: n.Inputs})
		names := make([]string, 0, len(n.Outputs))
		for name := range n.Outputs {
			names = append(names, name)
		}
		sort.Strings(names)
		paths, cas := make([]string, len(names)), make([]string, len(names))
		for k, name := range names {
			paths[k], cas[k] = n.Outputs[name], n.OutputCA[name]
		}
		rows = append(rows, []any{in.id, int32(len(in.nodes)), n.DrvPath, n.System, nonNil(n.RequiredFeatures),
			n.PreferLocalBuild, names, paths, cas, nonNil(n.Inputs)})
	}
	if len(rows) > 0 {
		return in.copy(ctx, "eval_ingest_nodes", []string{"ingest_id", "seq", "drv_path", "system", "required_features",
			"prefer_local_build", "output_names", "output_paths", "output_cas", "inputs"}, rows)
	}
	return nil
}

func (in *EvalIngest) copy(ctx context.Context, table string, cols []string, rows [][]any) error {
	if _, err := in.db.pool.CopyFrom(ctx, pgx.Identifier{table}, cols, pgx.CopyFromRows(rows)); err != nil {
		return fmt.Errorf("stage evaluation %d (%s): %w", in.lease.ID, table, err)
	}
	return nil
}

// Discard deletes what was staged (the evaluation is not finished by this report).
func (in *EvalIngest) Discard(ctx context.Context) error {
	if _, err := in.db.pool.Exec(ctx, `DELETE FROM eval_ingests WHERE id = $1`, in.id); err != nil {
		return fmt.Errorf("discard the staged report of evaluation %d: %w", in.lease.ID, err)
	}
	return nil
}

// Jobs, Errors and Nodes count what was added (nodes without duplicates).
func (in *EvalIngest) Jobs() int   { return len(in.jobs) }
func (in *EvalIngest) Errors() int { return in.nErrors }
func (in *EvalIngest) Nodes() int  { return len(in.nodes) }

// Finish records the staged report as a successful evaluation, in one transaction:
// per-attribute errors, one step per derivation that must be built (shared with every
// other evaluation that needs it), their edges and outputs, one build per job, and
// aggregate constituents; the staged rows go. A stale lease changes nothing (the
// caller then discards).
func (in *EvalIngest) Finish(ctx context.Context, checkoutSecs, evalSecs float64) error {
	l := in.lease
	ranks := in.ranks()
	err := pgx.BeginFunc(ctx, in.db.pool, func(tx pgx.Tx) error {
		var jobsetID int64
		err := tx.QueryRow(ctx, `SELECT jobset_id FROM evaluations WHERE id = $1 AND lease_epoch = $2 AND agent_id = $3
			AND status = 'running' FOR UPDATE`, l.ID, l.Epoch, l.AgentID).Scan(&jobsetID)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("evaluation %d epoch %d: %w", l.ID, l.Epoch, ErrStaleLease)
		}
		if err != nil {
			return err
		}
		if in.nErrors > 0 {
			if _, err := tx.Exec(ctx, `INSERT INTO evaluation_errors (evaluation_id, attr, message)
				SELECT $1, attr, message FROM eval_ingest_errors WHERE ingest_id = $2 ON CONFLICT DO NOTHING`, l.ID, in.id); err != nil {
				return fmt.Errorf("errors: %w", err)
			}
		}
		if err := in.moveNodes(ctx, tx, jobsetID, ranks); err != nil {
			return fmt.Errorf("steps: %w", err)
		}
		newBuilds, err := in.moveBuilds(ctx, tx, jobsetID)
		if err != nil {
			return fmt.Errorf("builds: %w", err)
		}
		if err := finishAggregates(ctx, tx, l.ID); err != nil {
			return fmt.Errorf("aggregates: %w", err)
		}
		if _, err = tx.Exec(ctx, `UPDATE evaluations SET status = 'succeeded', nr_jobs = $2, nr_new_builds = $3, nr_errors = $4,
			checkout_seconds = $5, eval_seconds = $6, finished_at = now(), lease_expires_at = NULL WHERE id = $1`,
			l.ID, len(in.jobs), newBuilds, in.nErrors, checkoutSecs, evalSecs); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM eval_ingests WHERE id = $1`, in.id); err != nil {
			return err
		}
		return notifySteps(ctx, tx)
	})
	if err != nil {
		return fmt.Errorf("finish evaluation %d: %w", l.ID, err)
	}
	if len(in.blocked) > 0 {
		in.db.unblockAfter(ctx, "evaluation", unblockSteps, in.blocked)
	}
	return nil
}

// nodeRanks are the nodes' scheduling figures, indexed by seq - 1.
type nodeRanks struct {
	prios, paths       []int32
	timeouts, silences []*int32
}

func (in *EvalIngest) ranks() nodeRanks {
	prio, depth := rankNodes(in.nodes, in.jobs)
	// A job's meta.timeout and meta.maxSilent apply to the step building it.
	limits := make(map[string][2]int, len(in.jobs))
	for _, j := range in.jobs {
		if j.Timeout > 0 || j.MaxSilent > 0 {
			limits[j.DrvPath] = [2]int{j.Timeout, j.MaxSilent}
		}
	}
	n := len(in.nodes)
	r := nodeRanks{prios: make([]int32, n), paths: make([]int32, n), timeouts: make([]*int32, n), silences: make([]*int32, n)}
	for i, nd := range in.nodes {
		r.prios[i], r.paths[i] = int32(prio[nd.DrvPath]), int32(depth[nd.DrvPath])
		if lim, ok := limits[nd.DrvPath]; ok {
			if lim[0] > 0 {
				v := int32(lim[0])
				r.timeouts[i] = &v
			}
			if lim[1] > 0 {
				v := int32(lim[1])
				r.silences[i] = &v
			}
		}
	}
	return r
}

// moveNodes adds the staged nodes as steps, with their outputs and edges. A step
// another evaluation already has keeps its row; it takes the higher priority and
// longer critical path, and work that was cancelled, aborted or had no capable agent
// is wanted again. Steps are taken in drv path order, so that two evaluations
// finishing at once lock shared ones in the same order.
func (in *EvalIngest) moveNodes(ctx context.Context, tx pgx.Tx, jobsetID int64, r nodeRanks) error {
	if len(in.nodes) == 0 {
		return nil
	}
	// A step with inputs starts blocked (blocked.go); those already built are
	// cleared after the commit (in.blocked).
	rows, err := tx.Query(ctx, `INSERT INTO steps (drv_path, system, required_features, prefer_local_build, timeout_seconds,
			max_silent_seconds, jobset_id, scheduling_priority, critical_path, blocked)
		SELECT n.drv_path, n.system, n.required_features, n.prefer_local_build, ($3::int[])[n.seq], ($4::int[])[n.seq], $1,
			($5::int[])[n.seq], ($6::int[])[n.seq], cardinality(n.inputs) > 0
		FROM eval_ingest_nodes n WHERE n.ingest_id = $2 ORDER BY n.drv_path
		ON CONFLICT (drv_path) DO UPDATE SET
			blocked = CASE WHEN steps.status IN ('cancelled', 'aborted', 'unsupported_system') THEN excluded.blocked ELSE steps.blocked END,
			scheduling_priority = greatest(steps.scheduling_priority, excluded.scheduling_priority),
			critical_path = greatest(steps.critical_path, excluded.critical_path),
			jobset_id = coalesce(steps.jobset_id, excluded.jobset_id),
			status = CASE WHEN steps.status IN ('cancelled', 'aborted', 'unsupported_system') THEN 'queued' ELSE steps.status END,
			status_code = CASE WHEN steps.status IN ('cancelled', 'aborted', 'unsupported_system') THEN NULL ELSE steps.status_code END,
			attempts = CASE WHEN steps.status IN ('cancelled', 'aborted', 'unsupported_system') THEN 0 ELSE steps.attempts END,
			created_at = CASE WHEN steps.status IN ('cancelled', 'aborted', 'unsupported_system') THEN now() ELSE steps.created_at END,
			finished_at = CASE WHEN steps.status IN ('cancelled', 'aborted', 'unsupported_system') THEN NULL ELSE steps.finished_at END
		RETURNING id, blocked`,
		jobsetID, in.id, r.timeouts, r.silences, r.prios, r.paths)
	if err != nil {
		return err
	}
	in.blocked = in.blocked[:0]
	for rows.Next() {
		var id int64
		var blocked bool
		if err := rows.Scan(&id, &blocked); err != nil {
			rows.Close()
			return err
		}
		if blocked {
			in.blocked = append(in.blocked, id)
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if _, err = tx.Exec(ctx, `INSERT INTO step_outputs (step_id, name, path, ca)
		SELECT s.id, o.n, o.p, o.ca FROM eval_ingest_nodes n
		CROSS JOIN LATERAL unnest(n.output_names, n.output_paths, n.output_cas) AS o(n, p, ca)
		JOIN steps s ON s.drv_path = n.drv_path WHERE n.ingest_id = $1 ON CONFLICT DO NOTHING`, in.id); err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO step_edges (step_id, depends_on)
		SELECT a.id, b.id FROM eval_ingest_nodes n CROSS JOIN LATERAL unnest(n.inputs) AS i(d)
		JOIN steps a ON a.drv_path = n.drv_path JOIN steps b ON b.drv_path = i.d
		WHERE n.ingest_id = $1 ON CONFLICT DO NOTHING`, in.id)
	return err
}

// moveBuilds adds one build per staged job that has none yet for its derivation,
// links every job's build to the evaluation, and returns how many new builds must be
// built (the rest were already in the cache and finish at once, as Hydra's cached
// builds do).
func (in *EvalIngest) moveBuilds(ctx context.Context, tx pgx.Tx, jobsetID int64) (int, error) {
	if len(in.jobs) == 0 {
		return 0, nil
	}
	evalID := in.lease.ID
	var newBuilds int
	// A job whose derivation already has a build of that job in the jobset joins this
	// evaluation as that build (Hydra's reuse), unless that build was cancelled, aborted
	// or had no capable agent: those are wanted again, as their steps are.
	err := tx.QueryRow(ctx, `WITH x AS (
		SELECT j.attr AS a, j.drv_path AS d, j.system AS s, j.name AS n, j.description AS de, j.license AS li,
			j.homepage AS h, CASE WHEN j.scheduling_priority = 0 THEN 100 ELSE j.scheduling_priority END AS p,
			j.is_aggregate AS ag,
			(SELECT b.id FROM builds b WHERE b.jobset_id = $2 AND b.job = j.attr AND b.drv_path = j.drv_path
				AND b.status NOT IN ('cancelled', 'aborted', 'unsupported_system') ORDER BY b.id DESC LIMIT 1) AS prev
		FROM eval_ingest_jobs j WHERE j.ingest_id = $3),
	ins AS (
		INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, step_id, system, nix_name, description, license,
			homepage, scheduling_priority, is_aggregate, status, status_code, finished_at)
		SELECT $1, $2, x.a, x.d, s.id, x.s, x.n, x.de, x.li, x.h, x.p, x.ag,
			CASE WHEN x.ag THEN 'queued' WHEN s.id IS NULL THEN 'succeeded' WHEN s.status IN ('queued', 'running') THEN s.status
				WHEN s.status IN `+ownFailures+` THEN 'cached_failure' ELSE s.status END,
			CASE WHEN x.ag THEN NULL WHEN s.id IS NULL THEN 0 WHEN s.status IN `+ownFailures+` THEN 8 ELSE s.status_code END,
			CASE WHEN x.ag OR (s.id IS NOT NULL AND s.status IN ('queued', 'running')) THEN NULL ELSE now() END
		FROM x LEFT JOIN steps s ON s.drv_path = x.d
		WHERE x.prev IS NULL ORDER BY x.a
		RETURNING id, step_id),
	-- New builds are linked by the builds_link_evaluation trigger.
	link AS (
		INSERT INTO evaluation_builds (evaluation_id, build_id)
		SELECT $1, prev FROM x WHERE prev IS NOT NULL ON CONFLICT DO NOTHING)
		SELECT count(*) FILTER (WHERE step_id IS NOT NULL) FROM ins`, evalID, jobsetID, in.id).Scan(&newBuilds)
	if err != nil {
		return 0, err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO build_outputs (build_id, name, path)
		SELECT b.id, o.n, o.p FROM eval_ingest_jobs j CROSS JOIN LATERAL unnest(j.output_names, j.output_paths) AS o(n, p)
		JOIN builds b ON b.evaluation_id = $1 AND b.job = j.attr WHERE j.ingest_id = $2`, evalID, in.id); err != nil {
		return 0, err
	}
	if in.hasConstituents {
		// A constituent is a job name of this evaluation or the drv path of one of its jobs.
		if _, err := tx.Exec(ctx, `INSERT INTO aggregate_constituents (aggregate_id, constituent_id)
			SELECT DISTINCT a.id, c.id FROM eval_ingest_jobs j CROSS JOIN LATERAL unnest(j.constituents) AS x(ref)
			JOIN evaluation_builds ea ON ea.evaluation_id = $1 JOIN builds a ON a.id = ea.build_id AND a.job = j.attr
			JOIN evaluation_builds ec ON ec.evaluation_id = $1 JOIN builds c ON c.id = ec.build_id
				AND (c.job = x.ref OR c.drv_path = x.ref) AND c.id <> a.id
			WHERE j.ingest_id = $2 ON CONFLICT DO NOTHING`, evalID, in.id); err != nil {
			return 0, err
		}
	}
	return newBuilds, nil
}
