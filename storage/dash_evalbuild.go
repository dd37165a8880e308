package storage

// The reads of the evaluation and build pages (and of the API, for the comparison):
// each answers with a fixed number of queries whatever the number of rows.

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// StatusCount is how many builds have one status.
type StatusCount struct {
	Status string
	N      int64
}

// EvalSummary is an evaluation with what its page shows around it.
type EvalSummary struct {
	Evaluation
	Project, Jobset string
	// PreviousID is the jobset's last succeeded evaluation before this one, which the
	// comparison is made against (nil: none).
	PreviousID *int64
	Inputs     []EvaluationInput
	// ByStatus counts the evaluation's builds by status, by name; Builds is their sum.
	ByStatus []StatusCount
	Builds   int64
}

// EvalSummary reads an evaluation, its jobset's names, its inputs, its previous
// evaluation and the counts of its builds by status, in one query.
func (db *DB) EvalSummary(ctx context.Context, id int64) (EvalSummary, error) {
	var s EvalSummary
	var names, types, values, revs, statuses []string
	var counts []int64
	err := db.pool.QueryRow(ctx, `SELECT `+evaluationColumns+`, p.name, j.name,
			(SELECT max(pe.id) FROM evaluations pe WHERE pe.jobset_id = e.jobset_id AND pe.id < e.id AND pe.status = 'succeeded'),
			ARRAY(SELECT name FROM evaluation_inputs WHERE evaluation_id = e.id ORDER BY name),
			ARRAY(SELECT type FROM evaluation_inputs WHERE evaluation_id = e.id ORDER BY name),
			ARRAY(SELECT value FROM evaluation_inputs WHERE evaluation_id = e.id ORDER BY name),
			ARRAY(SELECT revision FROM evaluation_inputs WHERE evaluation_id = e.id ORDER BY name),
			coalesce(c.statuses, '{}'), coalesce(c.counts, '{}')
		FROM evaluations e JOIN jobsets j ON j.id = e.jobset_id JOIN projects p ON p.id = j.project_id
		LEFT JOIN LATERAL (SELECT array_agg(status ORDER BY status) AS statuses, array_agg(n ORDER BY status) AS counts
			FROM (SELECT b.status, count(*) AS n FROM evaluation_builds eb JOIN builds b ON b.id = eb.build_id
				WHERE eb.evaluation_id = e.id GROUP BY b.status) x) c ON true
		WHERE e.id = $1`, id).Scan(&s.ID, &s.JobsetID, &s.ProjectID, &s.Status, &s.Commit, &s.InputsHash, &s.Trigger,
		&s.Forced, &s.Error, &s.NrJobs, &s.NrNewBuilds, &s.NrErrors, &s.CheckoutSeconds, &s.EvalSeconds, &s.AgentID,
		&s.Attempts, &s.CreatedAt, &s.StartedAt, &s.FinishedAt, &s.Project, &s.Jobset, &s.PreviousID,
		&names, &types, &values, &revs, &statuses, &counts)
	if err != nil {
		return EvalSummary{}, fmt.Errorf("evaluation %d: %w", id, mapErr(err))
	}
	for i := range names {
		s.Inputs = append(s.Inputs, EvaluationInput{Name: names[i], Type: types[i], Value: values[i], Revision: revs[i]})
	}
	for i := range statuses {
		s.ByStatus = append(s.ByStatus, StatusCount{Status: statuses[i], N: counts[i]})
		s.Builds += counts[i]
	}
	return s, nil
}

// The tabs of an evaluation's comparison with an earlier one. Every job of either
// evaluation is in exactly one of the build tabs, decided in this order:
//   - TabQueued: its build here has not finished;
//   - TabAborted: its build here was stopped rather than failed on its own merits
//     (stoppedStatuses: aborted, cancelled, or killed by a limit);
//   - TabNew: the earlier evaluation has no such job (TabRemoved: only it has);
//   - else by outcome: succeeded here and there (TabStillSucceeding), succeeded here
//     only (TabNewlySucceeding), failed here and there (TabStillFailing), failed here
//     but not (known) there (TabNewlyFailing: the earlier build succeeded or has not
//     finished).
//
// TabErrors lists the attributes that failed to evaluate here.
const (
	TabNewlyFailing     = "newly-failing"
	TabNewlySucceeding  = "newly-succeeding"
	TabStillFailing     = "still-failing"
	TabStillSucceeding  = "still-succeeding"
	TabNew              = "new"
	TabRemoved          = "removed"
	TabQueued           = "queued"
	TabAborted          = "aborted"
	TabErrors           = "errors"
	defaultCompareLimit = 100
)

// CompareTabs are the comparison's tabs in the order pages show them.
var CompareTabs = []string{TabNewlyFailing, TabNewlySucceeding, TabStillFailing, TabNew, TabRemoved, TabQueued,
	TabAborted, TabErrors, TabStillSucceeding}

// stoppedStatuses are the finished statuses of builds that were stopped rather than
// failed on their own merits, as an SQL list: the comparison's TabAborted.
const stoppedStatuses = `('aborted', 'cancelled', 'timed_out', 'log_limit_exceeded', 'output_limit_exceeded', 'unsupported_system')`

// comparePairs pairs the builds of evaluation $1 with those of the same job in
// evaluation $2 (a job in only one of them has NULLs for the other), with their tab;
// $3 is a part of job names to match (LIKE's wildcards escaped), or ”.
const comparePairs = `WITH cur AS (SELECT b.id, b.job, b.system, b.status FROM evaluation_builds eb JOIN builds b ON b.id = eb.build_id
		WHERE eb.evaluation_id = $1 AND ($3 = '' OR b.job ILIKE '%' || $3 || '%')),
	prev AS (SELECT b.id, b.job, b.system, b.status FROM evaluation_builds eb JOIN builds b ON b.id = eb.build_id
		WHERE eb.evaluation_id = $2 AND ($3 = '' OR b.job ILIKE '%' || $3 || '%')),
	pairs AS (
		SELECT coalesce(c.job, p.job) AS job, coalesce(c.system, p.system) AS system, c.id AS cid, coalesce(c.status, '') AS cst,
			p.id AS pid, coalesce(p.status, '') AS pst,
			CASE WHEN c.id IS NULL THEN '` + TabRemoved + `'
				WHEN c.status IN ('queued', 'running') THEN '` + TabQueued + `'
				WHEN c.status IN ` + stoppedStatuses + ` THEN '` + TabAborted + `'
				WHEN p.id IS NULL THEN '` + TabNew + `'
				WHEN c.status = 'succeeded' AND p.status = 'succeeded' THEN '` + TabStillSucceeding + `'
				WHEN c.status = 'succeeded' THEN '` + TabNewlySucceeding + `'
				WHEN p.status NOT IN ('queued', 'running', 'succeeded') THEN '` + TabStillFailing + `'
				ELSE '` + TabNewlyFailing + `' END AS tab
		FROM cur c FULL JOIN prev p ON p.job = c.job)`

// ComparedJob is one job of a comparison: its build here (ID nil: removed) and in
// the earlier evaluation (PrevID nil: new).
type ComparedJob struct {
	Job, System        string
	ID, PrevID         *int64
	Status, PrevStatus string
}

// Comparison is an evaluation compared with an earlier one: the number of jobs in
// every tab (errors included), and one page of one tab.
type Comparison struct {
	Tab    string
	Counts map[string]int64
	Jobs   []ComparedJob // the page, for a build tab
	Errors []AttrError   // the page, for TabErrors
}

// CompareEvaluations compares evaluation evalID with prevID (0: with nothing, so
// every job is new): the counts of every tab, then the page of tab (one of
// CompareTabs; "": the first that is not empty), jobs by name. filter keeps the jobs
// (and error attributes) whose name contains it, in every count too. Two queries.
// Tab is the tab whose page was read.
func (db *DB) CompareEvaluations(ctx context.Context, evalID, prevID int64, tab, filter string, page Page) (Comparison, error) {
	if page.Limit <= 0 {
		page.Limit = defaultCompareLimit
	}
	pattern := likeEscaper.Replace(filter) // matched anywhere in a name: '%' || $n || '%'

	c := Comparison{Counts: map[string]int64{}}
	for _, t := range CompareTabs {
		c.Counts[t] = 0
	}
	rows, err := db.pool.Query(ctx, comparePairs+` SELECT tab, count(*) FROM pairs GROUP BY tab
		UNION ALL SELECT '`+TabErrors+`', count(*) FROM evaluation_errors WHERE evaluation_id = $1 AND ($3 = '' OR attr ILIKE '%' || $3 || '%')`,
		evalID, prevID, pattern)
	if err != nil {
		return c, fmt.Errorf("compare evaluations %d and %d: %w", evalID, prevID, err)
	}
	for rows.Next() {
		var t string
		var n int64
		if err := rows.Scan(&t, &n); err != nil {
			return c, fmt.Errorf("compare evaluations %d and %d: %w", evalID, prevID, err)
		}
		c.Counts[t] = n
	}
	if err := rows.Err(); err != nil {
		return c, fmt.Errorf("compare evaluations %d and %d: %w", evalID, prevID, err)
	}
	if tab == "" {
		tab = CompareTabs[0]
		for _, t := range CompareTabs {
			if c.Counts[t] > 0 {
				tab = t
				break
			}
		}
	}
	c.Tab = tab
	if tab == TabErrors {
		rows, err = db.pool.Query(ctx, `SELECT attr, message FROM evaluation_errors WHERE evaluation_id = $1
			AND ($2 = '' OR attr ILIKE '%' || $2 || '%') ORDER BY attr LIMIT $3 OFFSET $4`, evalID, pattern, page.Limit, page.Offset)
		if err == nil {
			c.Errors, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (AttrError, error) {
				var e AttrError
				return e, r.Scan(&e.Attr, &e.Message)
			})
		}
	} else {
		rows, err = db.pool.Query(ctx, comparePairs+` SELECT job, system, cid, cst, pid, pst FROM pairs WHERE tab = $4
			ORDER BY job LIMIT $5 OFFSET $6`, evalID, prevID, pattern, tab, page.Limit, page.Offset)
		if err == nil {
			c.Jobs, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (ComparedJob, error) {
				var j ComparedJob
				return j, r.Scan(&j.Job, &j.System, &j.ID, &j.Status, &j.PrevID, &j.PrevStatus)
			})
		}
	}
	if err != nil {
		return c, fmt.Errorf("compare evaluations %d and %d, %s: %w", evalID, prevID, tab, err)
	}
	return c, nil
}

// likeEscaper escapes the wildcards of a LIKE pattern (the default escape is \).
var likeEscaper = strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)

// OwnStep is what the build page says of a build's own step beyond StepInfo: the
// limits it ran under (nil: the coordinator's defaults).
type OwnStep struct {
	ID                         int64
	DrvPath, Status, Error     string
	ExitCode                   *int
	Attempts                   int
	AgentName                  string
	LogSize                    int64
	StartedAt, FinishedAt      *time.Time
	TimeoutSecs, MaxSilentSecs *int
}

// Culprit is the step whose failure a build's failure comes from (a failed
// dependency, or the earlier failure behind a cached one), with a build of it when
// one exists (BuildID nil: the step is no job's own step).
type Culprit struct {
	StepID                 int64
	DrvPath, Status, Error string
	StartedAt              *time.Time
	LogSize                int64
	BuildID, EvaluationID  *int64
	Job, BuildStatus       string
	Project, Jobset        string
}

// BuildReason is why a build is in its state: its own step (nil: it had nothing to
// build) and, for dependency_failed and cached_failure, the culprit (nil: not found,
// e.g. restarted since).
type BuildReason struct {
	Own     *OwnStep
	Culprit *Culprit
}

// BuildReason finds a build's own step and, when it failed because of another
// step, that step and a build of it, in one query. A dependency_failed build points
// at its failed build (propagated_from) when ingest or the failure set it; otherwise
// the failed step is searched for through the steps that failed because of it. A
// cached_failure comes from the step that failed on the same outputs before.
func (db *DB) BuildReason(ctx context.Context, buildID int64) (BuildReason, error) {
	var r BuildReason
	var own OwnStep
	var ownID, cStep, cBuild, cEval *int64
	var cDrv, cStatus, cError, cJob, cBuildStatus, cProject, cJobset *string
	var cStarted *time.Time
	var cLogSize *int64
	var ownDrv, ownStatus, ownError, ownAgent *string
	var ownAttempts *int
	var ownLogSize *int64
	err := db.pool.QueryRow(ctx, `WITH RECURSIVE own AS (
			SELECT id, step_id, evaluation_id, propagated_from, status FROM builds WHERE id = $1),
		down(id) AS (
			SELECT step_id FROM own WHERE status = 'dependency_failed' AND propagated_from IS NULL AND step_id IS NOT NULL
			UNION SELECT e.depends_on FROM down JOIN steps s ON s.id = down.id AND s.status = 'dependency_failed'
				JOIN step_edges e ON e.step_id = down.id),
		culprit AS (
			SELECT CASE
				WHEN own.status = 'dependency_failed' AND own.propagated_from IS NOT NULL THEN
					(SELECT step_id FROM builds WHERE id = own.propagated_from)
				WHEN own.status = 'dependency_failed' THEN
					(SELECT d.id FROM down d JOIN steps s ON s.id = d.id
					WHERE s.status NOT IN ('dependency_failed', 'queued', 'running', 'succeeded', 'cancelled') ORDER BY d.id LIMIT 1)
				WHEN own.status = 'cached_failure' THEN coalesce(
					(SELECT f.step_id FROM step_outputs o JOIN failed_paths f ON f.path = o.path
					WHERE o.step_id = own.step_id AND f.step_id IS NOT NULL ORDER BY f.created_at DESC LIMIT 1), own.step_id)
				END AS step_id,
				CASE WHEN own.status = 'dependency_failed' AND own.propagated_from IS NOT NULL THEN own.propagated_from END AS build_id
			FROM own),
		culprit_build AS (
			SELECT coalesce(c.build_id, (SELECT b.id FROM builds b, own WHERE b.step_id = c.step_id AND b.id <> own.id
				AND b.status NOT IN ('cached_failure', 'dependency_failed')
				ORDER BY b.evaluation_id = own.evaluation_id DESC, b.id DESC LIMIT 1)) AS id
			FROM culprit c)
		SELECT s.id, s.drv_path, s.status, s.error, s.exit_code, s.attempts, a.name, s.log_size, s.started_at, s.finished_at,
			s.timeout_seconds, s.max_silent_seconds,
			cs.id, cs.drv_path, cs.status, cs.error, cs.started_at, cs.log_size,
			fb.id, fb.evaluation_id, fb.job, fb.status, fp.name, fj.name
		FROM own LEFT JOIN steps s ON s.id = own.step_id LEFT JOIN agents a ON a.id = s.agent_id
		CROSS JOIN culprit c LEFT JOIN steps cs ON cs.id = c.step_id
		CROSS JOIN culprit_build cb LEFT JOIN builds fb ON fb.id = cb.id
		LEFT JOIN jobsets fj ON fj.id = fb.jobset_id LEFT JOIN projects fp ON fp.id = fj.project_id`, buildID).Scan(
		&ownID, &ownDrv, &ownStatus, &ownError, &own.ExitCode, &ownAttempts, &ownAgent, &ownLogSize, &own.StartedAt,
		&own.FinishedAt, &own.TimeoutSecs, &own.MaxSilentSecs,
		&cStep, &cDrv, &cStatus, &cError, &cStarted, &cLogSize,
		&cBuild, &cEval, &cJob, &cBuildStatus, &cProject, &cJobset)
	if err != nil {
		return r, fmt.Errorf("build %d reason: %w", buildID, mapErr(err))
	}
	if ownID != nil {
		own.ID, own.DrvPath, own.Status, own.Error = *ownID, deref(ownDrv), deref(ownStatus), deref(ownError)
		own.Attempts, own.AgentName, own.LogSize = zeroIfNil(ownAttempts), deref(ownAgent), zeroIfNil(ownLogSize)
		r.Own = &own
	}
	if cStep != nil || cBuild != nil {
		r.Culprit = &Culprit{DrvPath: deref(cDrv), Status: deref(cStatus), Error: deref(cError), StartedAt: cStarted,
			LogSize: zeroIfNil(cLogSize), BuildID: cBuild, EvaluationID: cEval, Job: deref(cJob),
			BuildStatus: deref(cBuildStatus), Project: deref(cProject), Jobset: deref(cJobset)}
		if cStep != nil {
			r.Culprit.StepID = *cStep
		}
	}
	return r, nil
}

// zeroIfNil is *p, or T's zero value for nil (a LEFT JOIN's missing row).
func zeroIfNil[T any](p *T) T {
	var v T
	if p != nil {
		v = *p
	}
	return v
}

// buildClosure is the steps build $1 needed: its own and, transitively, those it
// waited for, each at its least depth.
const buildClosure = `WITH RECURSIVE down(id) AS (
		SELECT step_id FROM builds WHERE id = $1 AND step_id IS NOT NULL
		UNION SELECT e.depends_on FROM step_edges e JOIN down ON e.step_id = down.id)`

// BuildStepsPage is one page of the steps a build needed, its own first, then by
// id, and how many there are.
func (db *DB) BuildStepsPage(ctx context.Context, buildID int64, page Page) ([]StepInfo, int64, error) {
	rows, err := db.pool.Query(ctx, buildClosure+`, own AS (SELECT step_id FROM builds WHERE id = $1)
		SELECT `+stepColumns+`, count(*) OVER () FROM steps s LEFT JOIN agents a ON a.id = s.agent_id
		WHERE s.id IN (SELECT id FROM down)
		ORDER BY s.id = (SELECT step_id FROM own) DESC, s.id LIMIT $2 OFFSET $3`, buildID, page.Limit, page.Offset)
	if err != nil {
		return nil, 0, fmt.Errorf("steps of build %d: %w", buildID, err)
	}
	var total int64
	steps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (StepInfo, error) {
		var s StepInfo
		err := r.Scan(&s.ID, &s.DrvPath, &s.System, &s.Status, &s.StatusCode, &s.Error, &s.ExitCode, &s.AgentID,
			&s.AgentName, &s.Attempts, &s.LogSize, &s.CreatedAt, &s.StartedAt, &s.FinishedAt, &s.LeaseEpoch, &s.Priority,
			&s.Critical, &s.GlobalPrio, &s.RequiredFts, &total)
		return s, err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("steps of build %d: %w", buildID, err)
	}
	if len(steps) == 0 && page.Offset > 0 { // past the end: count them anyway
		err = db.pool.QueryRow(ctx, buildClosure+` SELECT count(*) FROM down`, buildID).Scan(&total)
		if err != nil {
			return nil, 0, fmt.Errorf("steps of build %d: %w", buildID, err)
		}
	}
	return steps, total, nil
}

// StepOfBuild is step stepID when build buildID needed it, else ErrNotFound.
func (db *DB) StepOfBuild(ctx context.Context, buildID, stepID int64) (StepInfo, error) {
	rows, err := db.pool.Query(ctx, buildClosure+` SELECT `+stepColumns+` FROM steps s LEFT JOIN agents a ON a.id = s.agent_id
		WHERE s.id = $2 AND s.id IN (SELECT id FROM down)`, buildID, stepID)
	if err != nil {
		return StepInfo{}, fmt.Errorf("step %d of build %d: %w", stepID, buildID, err)
	}
	s, err := pgx.CollectExactlyOneRow(rows, scanStep)
	if err != nil {
		return StepInfo{}, fmt.Errorf("step %d of build %d: %w", stepID, buildID, mapErr(err))
	}
	return s, nil
}
