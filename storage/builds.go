package storage

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Build is one build with everything the API shows of it.
type Build struct {
	BuildSummary
	JobsetID           int64
	ProjectID          int64
	Project, Jobset    string
	NixName            string
	Description        string
	License            string
	Homepage           string
	ReleaseName        string
	SchedulingPriority int
	Keep               bool
	PropagatedFrom     *int64
	CreatedAt          time.Time
	StartedAt          *time.Time
	FinishedAt         *time.Time
	Outputs            map[string]string
	Products           []Product
	Metrics            []Metric
	Constituents       []int64
}

// StepInfo is a step as a build's detail shows it.
type StepInfo struct {
	ID          int64
	DrvPath     string
	System      string
	Status      string
	StatusCode  *int
	Error       string
	ExitCode    *int
	AgentID     *int64
	AgentName   string
	Attempts    int
	LogSize     int64
	CreatedAt   time.Time
	StartedAt   *time.Time
	FinishedAt  *time.Time
	LeaseEpoch  int64
	Priority    int
	Critical    int
	GlobalPrio  int
	RequiredFts []string
}

// GetBuild returns one build with its outputs, products, metrics and constituents.
func (db *DB) GetBuild(ctx context.Context, id int64) (Build, error) {
	var b Build
	err := db.pool.QueryRow(ctx, `SELECT b.id, b.evaluation_id, b.job, b.drv_path, b.system, b.status, b.status_code,
		b.step_id, b.is_aggregate, b.jobset_id, j.project_id, p.name, j.name, b.nix_name, b.description, b.license,
		b.homepage, b.release_name, b.scheduling_priority, b.keep, b.propagated_from, b.created_at, b.started_at, b.finished_at
		FROM builds b JOIN jobsets j ON j.id = b.jobset_id JOIN projects p ON p.id = j.project_id WHERE b.id = $1`, id).Scan(
		&b.ID, &b.EvaluationID, &b.Job, &b.DrvPath, &b.System, &b.Status, &b.StatusCode, &b.StepID, &b.IsAggregate,
		&b.JobsetID, &b.ProjectID, &b.Project, &b.Jobset, &b.NixName, &b.Description, &b.License, &b.Homepage,
		&b.ReleaseName, &b.SchedulingPriority, &b.Keep, &b.PropagatedFrom, &b.CreatedAt, &b.StartedAt, &b.FinishedAt)
	if err != nil {
		return Build{}, fmt.Errorf("build %d: %w", id, mapErr(err))
	}
	b.Outputs = map[string]string{}
	rows, err := db.pool.Query(ctx, `SELECT name, path FROM build_outputs WHERE build_id = $1`, id)
	if err != nil {
		return Build{}, fmt.Errorf("build %d outputs: %w", id, err)
	}
	for rows.Next() {
		var name, path string
		if err := rows.Scan(&name, &path); err != nil {
			return Build{}, err
		}
		b.Outputs[name] = path
	}
	if err := rows.Err(); err != nil {
		return Build{}, err
	}
	rows, err = db.pool.Query(ctx, `SELECT nr, type, subtype, name, path, default_path, file_size, sha256
		FROM build_products WHERE build_id = $1 ORDER BY nr`, id)
	if err != nil {
		return Build{}, fmt.Errorf("build %d products: %w", id, err)
	}
	b.Products, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Product, error) {
		var p Product
		return p, r.Scan(&p.Nr, &p.Type, &p.Subtype, &p.Name, &p.Path, &p.DefaultPath, &p.FileSize, &p.SHA256)
	})
	if err != nil {
		return Build{}, fmt.Errorf("build %d products: %w", id, err)
	}
	rows, err = db.pool.Query(ctx, `SELECT name, value, unit FROM build_metrics WHERE build_id = $1 ORDER BY name`, id)
	if err != nil {
		return Build{}, fmt.Errorf("build %d metrics: %w", id, err)
	}
	b.Metrics, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Metric, error) {
		var m Metric
		return m, r.Scan(&m.Name, &m.Value, &m.Unit)
	})
	if err != nil {
		return Build{}, fmt.Errorf("build %d metrics: %w", id, err)
	}
	rows, err = db.pool.Query(ctx, `SELECT constituent_id FROM aggregate_constituents WHERE aggregate_id = $1 ORDER BY 1`, id)
	if err != nil {
		return Build{}, err
	}
	if b.Constituents, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
		return Build{}, err
	}
	return b, nil
}

const stepColumns = `s.id, s.drv_path, s.system, s.status, s.status_code, s.error, s.exit_code, s.agent_id,
	coalesce(a.name, ''), s.attempts, s.log_size, s.created_at, s.started_at, s.finished_at, s.lease_epoch,
	s.scheduling_priority, s.critical_path, s.global_priority, s.required_features`

func scanStep(r pgx.CollectableRow) (StepInfo, error) {
	var s StepInfo
	err := r.Scan(&s.ID, &s.DrvPath, &s.System, &s.Status, &s.StatusCode, &s.Error, &s.ExitCode, &s.AgentID, &s.AgentName,
		&s.Attempts, &s.LogSize, &s.CreatedAt, &s.StartedAt, &s.FinishedAt, &s.LeaseEpoch, &s.Priority, &s.Critical,
		&s.GlobalPrio, &s.RequiredFts)
	return s, err
}

// BuildSteps lists the steps a build needed: its own and, transitively, the ones it
// waited for, its own first.
func (db *DB) BuildSteps(ctx context.Context, buildID int64) ([]StepInfo, error) {
	rows, err := db.pool.Query(ctx, `WITH RECURSIVE down(id, depth) AS (
			SELECT step_id, 0 FROM builds WHERE id = $1 AND step_id IS NOT NULL
			UNION SELECT e.depends_on, down.depth + 1 FROM step_edges e JOIN down ON e.step_id = down.id WHERE down.depth < 1000)
		SELECT `+stepColumns+` FROM steps s LEFT JOIN agents a ON a.id = s.agent_id
		JOIN (SELECT id, min(depth) AS depth FROM down GROUP BY id) d ON d.id = s.id
		ORDER BY d.depth, s.id`, buildID)
	if err != nil {
		return nil, fmt.Errorf("steps of build %d: %w", buildID, err)
	}
	steps, err := pgx.CollectRows(rows, scanStep)
	if err != nil {
		return nil, fmt.Errorf("steps of build %d: %w", buildID, err)
	}
	return steps, nil
}

// GetStep returns one step.
func (db *DB) GetStep(ctx context.Context, id int64) (StepInfo, error) {
	rows, err := db.pool.Query(ctx, `SELECT `+stepColumns+` FROM steps s LEFT JOIN agents a ON a.id = s.agent_id WHERE s.id = $1`, id)
	if err != nil {
		return StepInfo{}, fmt.Errorf("step %d: %w", id, err)
	}
	s, err := pgx.CollectExactlyOneRow(rows, scanStep)
	if err != nil {
		return StepInfo{}, fmt.Errorf("step %d: %w", id, mapErr(err))
	}
	return s, nil
}

// StepByDrv finds the step building a derivation.
func (db *DB) StepByDrv(ctx context.Context, drvPath string) (StepInfo, error) {
	rows, err := db.pool.Query(ctx, `SELECT `+stepColumns+` FROM steps s LEFT JOIN agents a ON a.id = s.agent_id WHERE s.drv_path = $1`, drvPath)
	if err != nil {
		return StepInfo{}, fmt.Errorf("step of %s: %w", drvPath, err)
	}
	s, err := pgx.CollectExactlyOneRow(rows, scanStep)
	if err != nil {
		return StepInfo{}, fmt.Errorf("step of %s: %w", drvPath, mapErr(err))
	}
	return s, nil
}

// BuildStats counts builds by status, and steps queued and running.
type BuildStats struct {
	Total        int64
	ByStatus     map[string]int64
	StepsQueued  int64
	StepsRunning int64
}

// GetBuildStats returns the counts.
func (db *DB) GetBuildStats(ctx context.Context) (BuildStats, error) {
	st := BuildStats{ByStatus: map[string]int64{}}
	rows, err := db.pool.Query(ctx, `SELECT status, count(*) FROM builds GROUP BY status`)
	if err != nil {
		return st, fmt.Errorf("build stats: %w", err)
	}
	for rows.Next() {
		var s string
		var n int64
		if err := rows.Scan(&s, &n); err != nil {
			return st, err
		}
		st.ByStatus[s] = n
		st.Total += n
	}
	if err := rows.Err(); err != nil {
		return st, err
	}
	err = db.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'queued'), count(*) FILTER (WHERE status = 'running')
		FROM steps WHERE status IN ('queued', 'running')`).Scan(&st.StepsQueued, &st.StepsRunning)
	if err != nil {
		return st, fmt.Errorf("step stats: %w", err)
	}
	return st, nil
}

// QueueSystem counts queued and running steps for one system.
type QueueSystem struct {
	System          string
	Queued, Running int64
}

// Queue is what waits and what runs.
type Queue struct {
	Systems []QueueSystem
	Steps   []StepInfo // running first, then queued in scheduling order; at most limit
}

// GetQueue returns the queue.
func (db *DB) GetQueue(ctx context.Context, limit int) (Queue, error) {
	var q Queue
	rows, err := db.pool.Query(ctx, `SELECT system, count(*) FILTER (WHERE status = 'queued'), count(*) FILTER (WHERE status = 'running')
		FROM steps WHERE status IN ('queued', 'running') GROUP BY system ORDER BY system`)
	if err != nil {
		return q, fmt.Errorf("queue: %w", err)
	}
	q.Systems, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (QueueSystem, error) {
		var s QueueSystem
		return s, r.Scan(&s.System, &s.Queued, &s.Running)
	})
	if err != nil {
		return q, fmt.Errorf("queue: %w", err)
	}
	rows, err = db.pool.Query(ctx, `SELECT `+stepColumns+` FROM steps s LEFT JOIN agents a ON a.id = s.agent_id
		WHERE s.status IN ('queued', 'running')
		ORDER BY s.status = 'running' DESC, s.global_priority DESC, s.scheduling_priority DESC, s.critical_path DESC, s.id
		LIMIT $1`, limit)
	if err != nil {
		return q, fmt.Errorf("queue: %w", err)
	}
	if q.Steps, err = pgx.CollectRows(rows, scanStep); err != nil {
		return q, fmt.Errorf("queue: %w", err)
	}
	return q, nil
}

// BuildsOfStep lists the ids of the builds a step builds.
func (db *DB) BuildsOfStep(ctx context.Context, stepID int64) ([]int64, error) {
	rows, err := db.pool.Query(ctx, `SELECT id FROM builds WHERE step_id = $1 ORDER BY id`, stepID)
	if err != nil {
		return nil, fmt.Errorf("builds of step %d: %w", stepID, err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// StepOutputs are a step's declared outputs: name → store path.
func (db *DB) StepOutputs(ctx context.Context, stepID int64) (map[string]string, error) {
	rows, err := db.pool.Query(ctx, `SELECT name, path FROM step_outputs WHERE step_id = $1`, stepID)
	if err != nil {
		return nil, fmt.Errorf("outputs of step %d: %w", stepID, err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var name, path string
		if err := rows.Scan(&name, &path); err != nil {
			return nil, fmt.Errorf("outputs of step %d: %w", stepID, err)
		}
		out[name] = path
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("outputs of step %d: %w", stepID, err)
	}
	return out, nil
}

// BuildFilter narrows ListBuilds; zero values do not filter.
type BuildFilter struct {
	EvaluationID, JobsetID, ProjectID int64
	Status, System, Job               string
	// BeforeID lists only builds older than this one (a page's last id): the next page
	// at any depth, as fast as the first (keyset pagination).
	BeforeID int64
	// Finished lists only finished builds, the most recently finished first.
	Finished bool
}

// BuildList is a page of builds and how many match.
type BuildList struct {
	Items []BuildSummary
	// Total is how many builds match when TotalExact; otherwise at least that many
	// do: it is counted no further than BuildCountCap builds past the page's first.
	Total      int64
	TotalExact bool
}

// BuildCountCap is how far past a page's first build ListBuilds counts: a count of
// every match costs a scan of all of them (a second at 1,000,000 builds).
const BuildCountCap = 1000

// The statements of ListBuilds. Each takes $1 jobset, $2 project, $3 status, $4
// system, $5 job, $6 before (0 for any), $7 limit, $8 offset, $9 how many to count at
// most from the page's first build, $10 evaluation; a zero filter does not filter.
// They run with custom plans (pgx.QueryExecModeExec: an unnamed statement, planned
// with its values), so PostgreSQL folds the unused filters away and takes the page
// from the index that fits the filters given: builds_jobset, builds_jobset_status,
// builds_status_jobset, builds_by_job, the primary key, evaluation_builds' key (a
// filter without an index of its own, ?system=, is checked on the rows of those). The
// page's ids come from the index alone; only the page's own rows are read, and the
// count walks the same index from the page's first build, at most $9 entries.
const (
	ownCond = `($1 = 0 OR b.jobset_id = $1) AND ($3 = '' OR b.status = $3) AND ($4 = '' OR b.system = $4)
		AND ($5 = '' OR b.job = $5)`
	buildCond           = ownCond + ` AND ($2 = 0 OR b.jobset_id IN (SELECT id FROM jobsets WHERE project_id = $2))`
	buildSummaryColumns = `b.id, b.evaluation_id, b.job, b.drv_path, b.system, b.status, b.status_code,
		b.step_id, b.is_aggregate, b.jobset_id, b.propagated_from, b.finished_at, j.project_id, p.name, j.name`
	buildPageRows = ` FROM page JOIN builds b ON b.id = page.id JOIN jobsets j ON j.id = b.jobset_id
		JOIN projects p ON p.id = j.project_id`

	listBuilds = `WITH page AS MATERIALIZED (SELECT b.id FROM builds b WHERE ` + buildCond + ` AND ($6 = 0 OR b.id < $6)
			AND $10 = 0 ORDER BY b.id DESC LIMIT $7 OFFSET $8)
		SELECT (SELECT count(*) FROM (SELECT FROM builds b WHERE ` + buildCond + `
			AND b.id <= (SELECT max(id) FROM page) LIMIT $9) c), ` + buildSummaryColumns + buildPageRows + ` ORDER BY b.id DESC`

	// A project's builds are the newest of each of its jobsets, merged: walking all
	// builds newest first for a project's would read every newer build of the others.
	listProjectBuilds = `WITH page AS MATERIALIZED (SELECT x.id FROM jobsets j CROSS JOIN LATERAL (SELECT b.id FROM builds b
			WHERE b.jobset_id = j.id AND ` + ownCond + ` AND ($6 = 0 OR b.id < $6) AND $10 = 0
			ORDER BY b.id DESC LIMIT $7::bigint + $8::bigint) x
			WHERE j.project_id = $2 ORDER BY x.id DESC LIMIT $7 OFFSET $8)
		SELECT (SELECT count(*) FROM (SELECT FROM jobsets j CROSS JOIN LATERAL (SELECT FROM builds b WHERE b.jobset_id = j.id AND ` +
		ownCond + ` AND b.id <= (SELECT max(id) FROM page) LIMIT $9) x WHERE j.project_id = $2 LIMIT $9) c), ` +
		buildSummaryColumns + buildPageRows + ` ORDER BY b.id DESC`

	// An evaluation's builds (its own and the ones it reused) come from
	// evaluation_builds; a build's row is looked at only for another filter.
	evalBuildCond = `e.evaluation_id = $10 AND (($1 = 0 AND $2 = 0 AND $3 = '' AND $4 = '' AND $5 = '')
		OR EXISTS (SELECT FROM builds b WHERE b.id = e.build_id AND ` + buildCond + `))`
	listEvaluationBuilds = `WITH page AS MATERIALIZED (SELECT e.build_id AS id FROM evaluation_builds e WHERE ` + evalBuildCond + `
			AND ($6 = 0 OR e.build_id < $6) ORDER BY e.build_id DESC LIMIT $7 OFFSET $8)
		SELECT (SELECT count(*) FROM (SELECT FROM evaluation_builds e WHERE ` + evalBuildCond + `
			AND e.build_id <= (SELECT max(id) FROM page) LIMIT $9) c), ` + buildSummaryColumns + buildPageRows + ` ORDER BY b.id DESC`

	// Finished builds, the most recently finished first (builds_recent).
	finishedCond = `b.finished_at IS NOT NULL AND ` + buildCond + `
		AND ($10 = 0 OR b.id IN (SELECT build_id FROM evaluation_builds WHERE evaluation_id = $10))`
	listFinishedBuilds = `WITH page AS MATERIALIZED (SELECT b.id, b.finished_at FROM builds b WHERE ` + finishedCond + `
			AND ($6 = 0 OR b.id < $6) ORDER BY b.finished_at DESC, b.id DESC LIMIT $7 OFFSET $8)
		SELECT (SELECT count(*) FROM (SELECT FROM builds b WHERE ` + finishedCond + ` AND (b.finished_at, b.id) <=
			(SELECT finished_at, id FROM page ORDER BY finished_at DESC, id DESC LIMIT 1) LIMIT $9) c), ` +
		buildSummaryColumns + buildPageRows + ` ORDER BY b.finished_at DESC, b.id DESC`
)

// ListBuilds returns a page of builds, newest first (or most recently finished
// first), and how many match as BuildPage counts them.
func (db *DB) ListBuilds(ctx context.Context, f BuildFilter, page Page) ([]BuildSummary, int64, error) {
	l, err := db.BuildPage(ctx, f, page)
	return l.Items, l.Total, err
}

// BuildPage returns a page of builds, newest first (or most recently finished first),
// and how many match: exactly when fewer than BuildCountCap builds follow the page's
// first, else a lower bound that is still past the page's end.
func (db *DB) BuildPage(ctx context.Context, f BuildFilter, page Page) (BuildList, error) {
	stmt := listBuilds
	switch {
	case f.Finished:
		stmt = listFinishedBuilds
	case f.EvaluationID != 0:
		stmt = listEvaluationBuilds
	case f.ProjectID != 0 && f.JobsetID == 0:
		stmt = listProjectBuilds
	}
	window := int64(page.Limit) + BuildCountCap
	items, n, err := db.buildPage(ctx, stmt, f, int64(page.Limit), int64(page.Offset), window)
	if err != nil {
		return BuildList{}, err
	}
	if len(items) == 0 && page.Offset > 0 {
		// Past the end: the count from the first match, up to the offset, is all of it.
		window = int64(page.Offset)
		if _, n, err = db.buildPage(ctx, stmt, f, 1, 0, window); err != nil {
			return BuildList{}, err
		}
		return BuildList{Items: items, Total: n, TotalExact: true}, nil
	}
	return BuildList{Items: items, Total: int64(page.Offset) + n, TotalExact: n < window}, nil
}

// buildPage runs one of ListBuilds' statements: the page and the count from its
// first build, at most window.
func (db *DB) buildPage(ctx context.Context, stmt string, f BuildFilter, limit, offset, window int64) ([]BuildSummary, int64, error) {
	rows, err := db.pool.Query(ctx, stmt, pgx.QueryExecModeExec, f.JobsetID, f.ProjectID, f.Status, f.System, f.Job,
		f.BeforeID, limit, offset, window, f.EvaluationID)
	if err != nil {
		return nil, 0, fmt.Errorf("list builds: %w", err)
	}
	var n int64
	items, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (BuildSummary, error) {
		var b BuildSummary
		err := r.Scan(&n, &b.ID, &b.EvaluationID, &b.Job, &b.DrvPath, &b.System, &b.Status, &b.StatusCode, &b.StepID,
			&b.IsAggregate, &b.JobsetID, &b.PropagatedFrom, &b.FinishedAt, &b.ProjectID, &b.Project, &b.Jobset)
		return b, err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("list builds: %w", err)
	}
	return items, n, nil
}
