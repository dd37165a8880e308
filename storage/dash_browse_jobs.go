package storage

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// The jobset and job pages' queries (dash_browse.go has the rest of the browsing
// pages'): a fixed number of statements each, whatever the number of rows.

// GridEval is one column of a jobset's status grid.
type GridEval struct {
	ID        int64
	Status    string
	Error     string // the evaluation's own error, if it failed
	CreatedAt time.Time
}

// GridCell is one job's build in one evaluation.
type GridCell struct {
	BuildID int64
	Status  string
}

// GridRow is one job and its builds in the grid's evaluations (Cells[i] is of
// Evals[i]; BuildID 0: the job was not in that evaluation).
type GridRow struct {
	Job   string
	Cells []GridCell
}

// JobGrid is a page of a jobset's jobs × its latest evaluations.
type JobGrid struct {
	Evals  []GridEval
	Rows   []GridRow
	NrJobs int64 // jobs in those evaluations, over every page
}

// DashJobGrid returns the jobs (by name, a page of them) of the jobset's latest
// nEvals evaluations with each one's build in each of them.
func (db *DB) DashJobGrid(ctx context.Context, jobsetID int64, nEvals int, page Page) (JobGrid, error) {
	var g JobGrid
	rows, err := db.pool.Query(ctx, `SELECT id, status, error, created_at FROM evaluations WHERE jobset_id = $1
		ORDER BY id DESC LIMIT $2`, jobsetID, nEvals)
	if err != nil {
		return g, fmt.Errorf("grid evaluations: %w", err)
	}
	g.Evals, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (GridEval, error) {
		var e GridEval
		return e, r.Scan(&e.ID, &e.Status, &e.Error, &e.CreatedAt)
	})
	if err != nil || len(g.Evals) == 0 {
		return g, wrapErr("grid evaluations", err)
	}
	ids := make([]int64, len(g.Evals))
	col := make(map[int64]int, len(g.Evals))
	for i, e := range g.Evals {
		ids[i], col[e.ID] = e.ID, i
	}
	// The page of job names and their builds in one statement; the total rides along.
	rows, err = db.pool.Query(ctx, `WITH eb AS (SELECT eb.evaluation_id, b.id, b.job, b.status FROM evaluation_builds eb JOIN builds b ON b.id = eb.build_id
			WHERE eb.evaluation_id = ANY($1)),
		jobs AS (SELECT DISTINCT job FROM eb),
		page AS (SELECT job, count(*) OVER () AS total FROM jobs ORDER BY job LIMIT $2 OFFSET $3)
		SELECT pg.job, pg.total, coalesce(b.evaluation_id, 0), coalesce(b.id, 0), coalesce(b.status, '')
		FROM page pg LEFT JOIN eb b ON b.job = pg.job
		ORDER BY pg.job`, ids, page.Limit, page.Offset)
	if err != nil {
		return g, fmt.Errorf("grid jobs: %w", err)
	}
	var (
		job           string
		evalID, build int64
		status        string
	)
	_, err = pgx.ForEachRow(rows, []any{&job, &g.NrJobs, &evalID, &build, &status}, func() error {
		if n := len(g.Rows); n == 0 || g.Rows[n-1].Job != job {
			g.Rows = append(g.Rows, GridRow{Job: job, Cells: make([]GridCell, len(g.Evals))})
		}
		if build != 0 {
			g.Rows[len(g.Rows)-1].Cells[col[evalID]] = GridCell{BuildID: build, Status: status}
		}
		return nil
	})
	if err != nil {
		return g, fmt.Errorf("grid jobs: %w", err)
	}
	if len(g.Rows) == 0 && page.Offset > 0 { // past the last page: still say how many
		err = db.pool.QueryRow(ctx, `SELECT count(DISTINCT b.job) FROM evaluation_builds eb JOIN builds b ON b.id = eb.build_id
			WHERE eb.evaluation_id = ANY($1)`, ids).Scan(&g.NrJobs)
	}
	return g, wrapErr("grid jobs", err)
}

func wrapErr(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

// DashEvalErrors returns the first limit attribute errors of an evaluation (by
// attribute) and how many it has.
func (db *DB) DashEvalErrors(ctx context.Context, evalID int64, limit int) ([]AttrError, int64, error) {
	rows, err := db.pool.Query(ctx, `SELECT attr, message, count(*) OVER () FROM evaluation_errors
		WHERE evaluation_id = $1 ORDER BY attr LIMIT $2`, evalID, limit)
	if err != nil {
		return nil, 0, fmt.Errorf("evaluation %d errors: %w", evalID, err)
	}
	var out []AttrError
	var e AttrError
	var total int64
	_, err = pgx.ForEachRow(rows, []any{&e.Attr, &e.Message, &total}, func() error { out = append(out, e); return nil })
	if err != nil {
		return nil, 0, fmt.Errorf("evaluation %d errors: %w", evalID, err)
	}
	return out, total, nil
}

// JobBuild is one build of a job's history.
type JobBuild struct {
	ID           int64
	EvaluationID int64
	System       string
	Status       string
	CreatedAt    time.Time
	StartedAt    *time.Time
	FinishedAt   *time.Time
}

// DashJobBuilds returns a page of a job's builds, newest first, and how many it has.
func (db *DB) DashJobBuilds(ctx context.Context, jobsetID int64, job string, page Page) ([]JobBuild, int64, error) {
	var total int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM builds WHERE jobset_id = $1 AND job = $2`,
		jobsetID, job).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count builds of %s: %w", job, err)
	}
	rows, err := db.pool.Query(ctx, `SELECT id, evaluation_id, system, status, created_at, started_at, finished_at
		FROM builds WHERE jobset_id = $1 AND job = $2 ORDER BY id DESC LIMIT $3 OFFSET $4`,
		jobsetID, job, page.Limit, page.Offset)
	if err != nil {
		return nil, 0, fmt.Errorf("builds of %s: %w", job, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (JobBuild, error) {
		var b JobBuild
		return b, r.Scan(&b.ID, &b.EvaluationID, &b.System, &b.Status, &b.CreatedAt, &b.StartedAt, &b.FinishedAt)
	})
	if err != nil {
		return nil, 0, fmt.Errorf("builds of %s: %w", job, err)
	}
	return out, total, nil
}

// ChartPoint is one finished build of a job's chart: how long it took (Seconds < 0:
// unknown, e.g. its outputs were already built) and the size of its outputs in the
// cache (OutputBytes < 0: none of them is there).
type ChartPoint struct {
	BuildID     int64
	Status      string
	FinishedAt  time.Time
	Seconds     float64
	OutputBytes int64
}

// DashJobChart returns the job's last limit finished builds, oldest first.
func (db *DB) DashJobChart(ctx context.Context, jobsetID int64, job string, limit int) ([]ChartPoint, error) {
	rows, err := db.pool.Query(ctx, `SELECT b.id, b.status, b.finished_at,
		coalesce(extract(epoch FROM b.finished_at - b.started_at)::float8, -1),
		coalesce((SELECT sum(n.nar_size) FROM build_outputs o JOIN narinfos n ON n.store_path = o.path
			WHERE o.build_id = b.id), -1)::bigint
		FROM (SELECT * FROM builds WHERE jobset_id = $1 AND job = $2 AND finished_at IS NOT NULL
			ORDER BY id DESC LIMIT $3) b ORDER BY b.id`, jobsetID, job, limit)
	if err != nil {
		return nil, fmt.Errorf("chart of %s: %w", job, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ChartPoint, error) {
		var p ChartPoint
		return p, r.Scan(&p.BuildID, &p.Status, &p.FinishedAt, &p.Seconds, &p.OutputBytes)
	})
	if err != nil {
		return nil, fmt.Errorf("chart of %s: %w", job, err)
	}
	return out, nil
}

// LatestJobBuild returns the newest build of a job that succeeded (or, with
// anyFinished, that finished at all); ErrNotFound when there is none.
func (db *DB) LatestJobBuild(ctx context.Context, jobsetID int64, job string, anyFinished bool) (id int64, status string, err error) {
	err = db.pool.QueryRow(ctx, `SELECT id, status FROM builds WHERE jobset_id = $1 AND job = $2
		AND finished_at IS NOT NULL AND ($3 OR status = 'succeeded') ORDER BY id DESC LIMIT 1`,
		jobsetID, job, anyFinished).Scan(&id, &status)
	if err != nil {
		return 0, "", fmt.Errorf("latest build of %s: %w", job, mapErr(err))
	}
	return id, status, nil
}
