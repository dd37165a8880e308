package storage

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// The dashboard's browsing pages (home, projects, a project, a jobset, a job) read
// through these queries. Each answers a whole list in one statement (joins, LATERAL,
// = ANY), so a page runs a fixed number of queries whatever its number of rows.

// BuildCounts counts an evaluation's builds: Failed is every finished status but
// succeeded (cancelled included, as Hydra counts it).
type BuildCounts struct {
	Succeeded, Failed, Queued, Running int64
}

// buildCountsOf is the LATERAL subquery that counts the builds of evaluation e.id.
const buildCountsOf = `(SELECT count(*) FILTER (WHERE b.status = 'succeeded') AS succeeded,
		count(*) FILTER (WHERE b.status NOT IN ('succeeded', 'queued', 'running')) AS failed,
		count(*) FILTER (WHERE b.status = 'queued') AS queued,
		count(*) FILTER (WHERE b.status = 'running') AS running
		FROM evaluation_builds eb JOIN builds b ON b.id = eb.build_id WHERE eb.evaluation_id = e.id)`

// EvalBrief is an evaluation as lists show it, with its builds counted.
type EvalBrief struct {
	ID          int64
	JobsetID    int64
	Project     string
	Jobset      string
	Status      string
	Commit      string
	Error       string
	NrJobs      int
	NrNewBuilds int
	NrErrors    int
	CreatedAt   time.Time
	FinishedAt  *time.Time
	Builds      BuildCounts
}

const evalBriefColumns = `e.id, e.jobset_id, p.name, j.name, e.status, e.commit, e.error, e.nr_jobs, e.nr_new_builds,
	e.nr_errors, e.created_at, e.finished_at, c.succeeded, c.failed, c.queued, c.running`

func scanEvalBrief(r pgx.CollectableRow) (EvalBrief, error) {
	var e EvalBrief
	err := r.Scan(&e.ID, &e.JobsetID, &e.Project, &e.Jobset, &e.Status, &e.Commit, &e.Error, &e.NrJobs, &e.NrNewBuilds,
		&e.NrErrors, &e.CreatedAt, &e.FinishedAt, &e.Builds.Succeeded, &e.Builds.Failed, &e.Builds.Queued, &e.Builds.Running)
	return e, err
}

// JobsetBrief is a jobset with its latest evaluation (nil: never evaluated).
type JobsetBrief struct {
	ID             int64
	ProjectID      int64
	Project        string
	Name           string
	Description    string
	State          string
	LastCheckedAt  *time.Time
	LastCheckError string
	Latest         *EvalBrief
}

// jobsetBriefSelect lists jobsets j (joined to their project p) with their latest
// evaluation and its counts; the caller adds WHERE, ORDER BY and LIMIT.
const jobsetBriefSelect = `SELECT j.id, j.project_id, p.name, j.name, j.description, j.state, j.last_checked_at,
	j.last_check_error, e.id, e.status, e.commit, e.error, e.nr_jobs, e.nr_new_builds, e.nr_errors, e.created_at,
	e.finished_at, c.succeeded, c.failed, c.queued, c.running
	FROM jobsets j JOIN projects p ON p.id = j.project_id
	LEFT JOIN LATERAL (SELECT * FROM evaluations e WHERE e.jobset_id = j.id ORDER BY e.id DESC LIMIT 1) e ON true
	LEFT JOIN LATERAL ` + buildCountsOf + ` c ON true`

func scanJobsetBrief(r pgx.CollectableRow) (JobsetBrief, error) {
	var j JobsetBrief
	var (
		id                              *int64
		status, commit, msg             *string
		nrJobs, nrNew, nrErrs           *int
		created                         *time.Time
		finished                        *time.Time
		succeeded, failed, queued, runs *int64
	)
	err := r.Scan(&j.ID, &j.ProjectID, &j.Project, &j.Name, &j.Description, &j.State, &j.LastCheckedAt, &j.LastCheckError,
		&id, &status, &commit, &msg, &nrJobs, &nrNew, &nrErrs, &created, &finished, &succeeded, &failed, &queued, &runs)
	if err != nil || id == nil {
		return j, err
	}
	j.Latest = &EvalBrief{ID: *id, JobsetID: j.ID, Project: j.Project, Jobset: j.Name, Status: *status, Commit: *commit,
		Error: *msg, NrJobs: *nrJobs, NrNewBuilds: *nrNew, NrErrors: *nrErrs, CreatedAt: *created, FinishedAt: finished,
		Builds: BuildCounts{Succeeded: *succeeded, Failed: *failed, Queued: *queued, Running: *runs}}
	return j, nil
}

// ProjectBrief is a project with the first of its jobsets (by name).
type ProjectBrief struct {
	ID          int64
	Name        string
	DisplayName string
	Description string
	Enabled     bool
	OwnerName   string // the owning user's or API key's
	NrJobsets   int64
	Jobsets     []JobsetBrief
}

// DashProjects returns a page of projects by name, each with its first perProject
// jobsets (by name) and their latest evaluations (perProject 0: none), and the number
// of projects. Three statements, whatever the page's size.
func (db *DB) DashProjects(ctx context.Context, page Page, perProject int) ([]ProjectBrief, int64, error) {
	var total int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM projects`).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count projects: %w", err)
	}
	rows, err := db.pool.Query(ctx, `SELECT p.id, p.name, p.display_name, p.description, p.enabled,
		coalesce(u.username, k.name, ''), (SELECT count(*) FROM jobsets j WHERE j.project_id = p.id)
		FROM projects p LEFT JOIN api_keys k ON k.id = p.owner_key_id LEFT JOIN users u ON u.id = p.owner_user_id
		ORDER BY p.name LIMIT $1 OFFSET $2`, page.Limit, page.Offset)
	if err != nil {
		return nil, 0, fmt.Errorf("list projects: %w", err)
	}
	ps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ProjectBrief, error) {
		var p ProjectBrief
		return p, r.Scan(&p.ID, &p.Name, &p.DisplayName, &p.Description, &p.Enabled, &p.OwnerName, &p.NrJobsets)
	})
	if err != nil {
		return nil, 0, fmt.Errorf("list projects: %w", err)
	}
	if perProject <= 0 || len(ps) == 0 {
		return ps, total, nil
	}
	ids := make([]int64, len(ps))
	at := make(map[int64]int, len(ps))
	for i, p := range ps {
		ids[i], at[p.ID] = p.ID, i
	}
	rows, err = db.pool.Query(ctx, jobsetBriefSelect+` WHERE j.id IN (SELECT x.id FROM (SELECT x.id,
		row_number() OVER (PARTITION BY x.project_id ORDER BY x.name) AS n FROM jobsets x WHERE x.project_id = ANY($1)) x
		WHERE x.n <= $2) ORDER BY p.name, j.name`, ids, perProject)
	if err != nil {
		return nil, 0, fmt.Errorf("jobsets of projects: %w", err)
	}
	js, err := pgx.CollectRows(rows, scanJobsetBrief)
	if err != nil {
		return nil, 0, fmt.Errorf("jobsets of projects: %w", err)
	}
	for _, j := range js {
		ps[at[j.ProjectID]].Jobsets = append(ps[at[j.ProjectID]].Jobsets, j)
	}
	return ps, total, nil
}

// DashJobsets returns a page of a project's jobsets by name with their latest
// evaluations, and how many it has.
func (db *DB) DashJobsets(ctx context.Context, projectID int64, page Page) ([]JobsetBrief, int64, error) {
	var total int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM jobsets WHERE project_id = $1`, projectID).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count jobsets: %w", err)
	}
	rows, err := db.pool.Query(ctx, jobsetBriefSelect+` WHERE j.project_id = $1 ORDER BY j.name LIMIT $2 OFFSET $3`,
		projectID, page.Limit, page.Offset)
	if err != nil {
		return nil, 0, fmt.Errorf("list jobsets: %w", err)
	}
	js, err := pgx.CollectRows(rows, scanJobsetBrief)
	if err != nil {
		return nil, 0, fmt.Errorf("list jobsets: %w", err)
	}
	return js, total, nil
}

// DashJobsetsByID returns the jobsets of ids with their latest evaluations (for the
// home page's live refresh); unknown ids are left out.
func (db *DB) DashJobsetsByID(ctx context.Context, ids []int64) ([]JobsetBrief, error) {
	rows, err := db.pool.Query(ctx, jobsetBriefSelect+` WHERE j.id = ANY($1)`, ids)
	if err != nil {
		return nil, fmt.Errorf("jobsets by id: %w", err)
	}
	js, err := pgx.CollectRows(rows, scanJobsetBrief)
	if err != nil {
		return nil, fmt.Errorf("jobsets by id: %w", err)
	}
	return js, nil
}

// DashEvaluations returns a page of evaluations, newest first (of one jobset, or of
// all with jobsetID 0), with their builds counted, and how many there are.
func (db *DB) DashEvaluations(ctx context.Context, jobsetID int64, page Page) ([]EvalBrief, int64, error) {
	var total int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM evaluations e WHERE ($1 = 0 OR e.jobset_id = $1)`,
		jobsetID).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count evaluations: %w", err)
	}
	rows, err := db.pool.Query(ctx, `SELECT `+evalBriefColumns+`
		FROM (SELECT * FROM evaluations e WHERE ($1 = 0 OR e.jobset_id = $1) ORDER BY e.id DESC LIMIT $2 OFFSET $3) e
		JOIN jobsets j ON j.id = e.jobset_id JOIN projects p ON p.id = j.project_id
		CROSS JOIN LATERAL `+buildCountsOf+` c ORDER BY e.id DESC`, jobsetID, page.Limit, page.Offset)
	if err != nil {
		return nil, 0, fmt.Errorf("list evaluations: %w", err)
	}
	evs, err := pgx.CollectRows(rows, scanEvalBrief)
	if err != nil {
		return nil, 0, fmt.Errorf("list evaluations: %w", err)
	}
	return evs, total, nil
}

// BuildBrief is a build as lists show it.
type BuildBrief struct {
	ID           int64
	EvaluationID int64
	JobsetID     int64
	Project      string
	Jobset       string
	Job          string
	System       string
	Status       string
	CreatedAt    time.Time
	StartedAt    *time.Time
	FinishedAt   *time.Time
}

const buildBriefColumns = `b.id, b.evaluation_id, b.jobset_id, p.name, j.name, b.job, b.system, b.status,
	b.created_at, b.started_at, b.finished_at`

func scanBuildBrief(r pgx.CollectableRow) (BuildBrief, error) {
	var b BuildBrief
	err := r.Scan(&b.ID, &b.EvaluationID, &b.JobsetID, &b.Project, &b.Jobset, &b.Job, &b.System, &b.Status,
		&b.CreatedAt, &b.StartedAt, &b.FinishedAt)
	return b, err
}

// DashBuilds returns a page of the builds with status (running, say), newest first,
// and how many there are (counted on the status index: for a status few builds have
// for long).
func (db *DB) DashBuilds(ctx context.Context, status string, page Page) ([]BuildBrief, int64, error) {
	var total int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM builds b WHERE b.status = $1`,
		status).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count builds: %w", err)
	}
	rows, err := db.pool.Query(ctx, `SELECT `+buildBriefColumns+`
		FROM (SELECT * FROM builds b WHERE b.status = $1 ORDER BY b.id DESC LIMIT $2 OFFSET $3) b
		JOIN jobsets j ON j.id = b.jobset_id JOIN projects p ON p.id = j.project_id ORDER BY b.id DESC`,
		status, page.Limit, page.Offset)
	if err != nil {
		return nil, 0, fmt.Errorf("list builds: %w", err)
	}
	bs, err := pgx.CollectRows(rows, scanBuildBrief)
	if err != nil {
		return nil, 0, fmt.Errorf("list builds: %w", err)
	}
	return bs, total, nil
}

// DashRecentBuilds returns a page of all builds, newest first, and whether older
// ones follow. It does not count them: counting every build would cost more than
// the whole rest of the home page.
func (db *DB) DashRecentBuilds(ctx context.Context, page Page) ([]BuildBrief, bool, error) {
	rows, err := db.pool.Query(ctx, `SELECT `+buildBriefColumns+`
		FROM (SELECT * FROM builds b ORDER BY b.id DESC LIMIT $1 OFFSET $2) b
		JOIN jobsets j ON j.id = b.jobset_id JOIN projects p ON p.id = j.project_id ORDER BY b.id DESC`,
		page.Limit+1, page.Offset)
	if err != nil {
		return nil, false, fmt.Errorf("recent builds: %w", err)
	}
	bs, err := pgx.CollectRows(rows, scanBuildBrief)
	if err != nil {
		return nil, false, fmt.Errorf("recent builds: %w", err)
	}
	if len(bs) > page.Limit {
		return bs[:page.Limit], true, nil
	}
	return bs, false, nil
}

// DashBuildStatuses returns the statuses of the builds of ids (unknown ones left out).
func (db *DB) DashBuildStatuses(ctx context.Context, ids []int64) (map[int64]string, error) {
	rows, err := db.pool.Query(ctx, `SELECT id, status FROM builds WHERE id = ANY($1)`, ids)
	if err != nil {
		return nil, fmt.Errorf("build statuses: %w", err)
	}
	out := map[int64]string{}
	var id int64
	var status string
	_, err = pgx.ForEachRow(rows, []any{&id, &status}, func() error { out[id] = status; return nil })
	if err != nil {
		return nil, fmt.Errorf("build statuses: %w", err)
	}
	return out, nil
}

// SystemLoad counts the queued and running steps of one system.
type SystemLoad struct {
	System          string
	Queued, Running int64
}

// DashQueue counts queued and running steps by system.
func (db *DB) DashQueue(ctx context.Context) ([]SystemLoad, error) {
	// Two arms, so each uses its status's partial index (steps_queued, steps_running)
	// instead of a scan of every step ever built.
	rows, err := db.pool.Query(ctx, `SELECT system, sum(queued)::bigint, sum(running)::bigint FROM (
		SELECT system, count(*) AS queued, 0 AS running FROM steps WHERE status = 'queued' GROUP BY system
		UNION ALL SELECT system, 0, count(*) FROM steps WHERE status = 'running' GROUP BY system) x
		GROUP BY system ORDER BY system`)
	if err != nil {
		return nil, fmt.Errorf("queue by system: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (SystemLoad, error) {
		var s SystemLoad
		return s, r.Scan(&s.System, &s.Queued, &s.Running)
	})
	if err != nil {
		return nil, fmt.Errorf("queue by system: %w", err)
	}
	return out, nil
}

// DashConnectedAgents returns how many agents are connected and the names of the
// first limit of them (by name).
func (db *DB) DashConnectedAgents(ctx context.Context, limit int) ([]string, int64, error) {
	rows, err := db.pool.Query(ctx, `SELECT name, count(*) OVER () FROM agents
		WHERE connected AND revoked_at IS NULL AND last_seen_at > now() - make_interval(secs => $1)
		ORDER BY name LIMIT $2`, presenceSecs, limit)
	if err != nil {
		return nil, 0, fmt.Errorf("connected agents: %w", err)
	}
	var names []string
	var total int64
	var name string
	_, err = pgx.ForEachRow(rows, []any{&name, &total}, func() error { names = append(names, name); return nil })
	if err != nil {
		return nil, 0, fmt.Errorf("connected agents: %w", err)
	}
	if len(names) == 0 {
		total = 0
	}
	return names, total, nil
}

// StarredLatest is a job someone starred, with its latest build (LatestID 0: none).
type StarredLatest struct {
	JobsetID     int64
	Project      string
	Jobset       string
	Job          string
	LatestID     int64
	LatestStatus string
	LatestAt     *time.Time
}

// DashStarredJobs returns a page of the jobs userID starred (by project, jobset,
// job) with the latest build of each, and how many there are.
func (db *DB) DashStarredJobs(ctx context.Context, userID int64, page Page) ([]StarredLatest, int64, error) {
	var total int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM starred_jobs WHERE user_id = $1`, userID).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count starred jobs: %w", err)
	}
	rows, err := db.pool.Query(ctx, `SELECT s.jobset_id, p.name, j.name, s.job, coalesce(l.id, 0), coalesce(l.status, ''),
		coalesce(l.finished_at, l.created_at)
		FROM starred_jobs s JOIN jobsets j ON j.id = s.jobset_id JOIN projects p ON p.id = j.project_id
		LEFT JOIN LATERAL (SELECT b.id, b.status, b.finished_at, b.created_at FROM builds b
			WHERE b.jobset_id = s.jobset_id AND b.job = s.job ORDER BY b.id DESC LIMIT 1) l ON true
		WHERE s.user_id = $1 ORDER BY p.name, j.name, s.job LIMIT $2 OFFSET $3`, userID, page.Limit, page.Offset)
	if err != nil {
		return nil, 0, fmt.Errorf("starred jobs: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (StarredLatest, error) {
		var s StarredLatest
		return s, r.Scan(&s.JobsetID, &s.Project, &s.Jobset, &s.Job, &s.LatestID, &s.LatestStatus, &s.LatestAt)
	})
	if err != nil {
		return nil, 0, fmt.Errorf("starred jobs: %w", err)
	}
	return out, total, nil
}

// JobStarred reports whether userID starred job of jobsetID.
func (db *DB) JobStarred(ctx context.Context, userID, jobsetID int64, job string) (bool, error) {
	var starred bool
	err := db.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM starred_jobs WHERE user_id = $1 AND jobset_id = $2 AND job = $3)`,
		userID, jobsetID, job).Scan(&starred)
	if err != nil {
		return false, fmt.Errorf("starred job: %w", err)
	}
	return starred, nil
}
