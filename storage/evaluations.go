package storage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// EvalTarget is what the scheduler needs to decide about one jobset.
type EvalTarget struct {
	Jobset         Jobset
	RepositoryURL  string
	Credentials    FetchCredentials
	TriggerPending bool
	TriggerForced  bool
	ProjectEnabled bool
}

// DueJobsets lists jobsets whose poll interval elapsed or that were triggered, for
// enabled projects and jobsets that may evaluate (two queries, whatever the count).
func (db *DB) DueJobsets(ctx context.Context, limit int) ([]EvalTarget, error) {
	return db.evalTargets(ctx, evalTargetsFrom+`p.enabled AND j.state <> 'disabled'
		  AND (j.trigger_requested_at IS NOT NULL
		       OR (j.check_interval > 0 AND (j.last_checked_at IS NULL
		           OR j.last_checked_at < now() - make_interval(secs => j.check_interval))))
		ORDER BY j.trigger_requested_at NULLS LAST, j.last_checked_at NULLS FIRST
		LIMIT $1`, limit)
}

// EvalTargetOf reads one jobset as the scheduler decides about it (a trigger that
// checks at once); disabled ones too, for the caller to refuse.
func (db *DB) EvalTargetOf(ctx context.Context, jobsetID int64) (EvalTarget, error) {
	ts, err := db.evalTargets(ctx, evalTargetsFrom+`j.id = $1`, jobsetID)
	if err != nil {
		return EvalTarget{}, err
	}
	if len(ts) == 0 {
		return EvalTarget{}, fmt.Errorf("jobset %d: %w", jobsetID, ErrNotFound)
	}
	return ts[0], nil
}

// evalTargetsFrom is the start of evalTargets' statements, before their condition
// (over j, the jobset, and p, its project).
const evalTargetsFrom = `SELECT ` + jobsetColumns + `, p.repository_url, p.fetch_credentials,
		j.trigger_requested_at IS NOT NULL, j.trigger_forced, p.enabled
		FROM jobsets j JOIN projects p ON p.id = j.project_id
		WHERE `

// evalTargets reads the jobsets query (evalTargetsFrom and a condition) selects,
// with their inputs; two queries, whatever the count.
func (db *DB) evalTargets(ctx context.Context, query string, args ...any) ([]EvalTarget, error) {
	rows, err := db.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("due jobsets: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (EvalTarget, error) {
		var t EvalTarget
		var creds *FetchCredentials
		scan := t.Jobset.scanTargets()
		err := r.Scan(append(scan.dest, &t.RepositoryURL, &creds, &t.TriggerPending, &t.TriggerForced, &t.ProjectEnabled)...)
		scan.finish()
		if creds != nil {
			t.Credentials = *creds
		}
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("due jobsets: %w", err)
	}
	ids := make([]int64, len(out))
	for i := range out {
		ids[i] = out[i].Jobset.ID
	}
	inputs, err := db.inputsOf(ctx, ids)
	if err != nil {
		return nil, err
	}
	for i := range out {
		out[i].Jobset.Inputs = inputs[out[i].Jobset.ID]
	}
	return out, nil
}

// QueuedEvaluations reports whether any evaluation waits for an agent now.
func (db *DB) QueuedEvaluations(ctx context.Context) (bool, error) {
	var any bool
	err := db.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM evaluations WHERE status = 'queued'
		AND (not_before IS NULL OR not_before <= now()))`).Scan(&any)
	if err != nil {
		return false, fmt.Errorf("queued evaluations: %w", err)
	}
	return any, nil
}

// RequestEvaluation marks a jobset for evaluation at the next scheduler pass.
func (db *DB) RequestEvaluation(ctx context.Context, jobsetID int64, force bool) error {
	tag, err := db.pool.Exec(ctx, `UPDATE jobsets SET trigger_requested_at = coalesce(trigger_requested_at, now()),
		trigger_forced = trigger_forced OR $2 WHERE id = $1`, jobsetID, force)
	if err != nil {
		return fmt.Errorf("trigger jobset %d: %w", jobsetID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("trigger jobset %d: %w", jobsetID, ErrNotFound)
	}
	return nil
}

// RequestEvaluationsForBranch triggers every jobset of a project that follows branch
// (a push webhook); jobsets with no branch follow the default branch. It returns the
// jobsets triggered.
func (db *DB) RequestEvaluationsForBranch(ctx context.Context, projectID int64, branch string, isDefault bool) ([]int64, error) {
	rows, err := db.pool.Query(ctx, `UPDATE jobsets SET trigger_requested_at = coalesce(trigger_requested_at, now())
		WHERE project_id = $1 AND state <> 'disabled' AND (branch = $2 OR (branch = '' AND $3))
		RETURNING id`, projectID, branch, isDefault)
	if err != nil {
		return nil, fmt.Errorf("trigger jobsets of project %d: %w", projectID, err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// LastEvaluation is a jobset's newest evaluation, for change detection.
type LastEvaluation struct {
	ID              int64
	Commit          string
	InputsHash      string
	Status          string
	UnfinishedBuild bool
}

// LatestEvaluation returns the jobset's newest evaluation, if any.
func (db *DB) LatestEvaluation(ctx context.Context, jobsetID int64) (LastEvaluation, bool, error) {
	var l LastEvaluation
	err := db.pool.QueryRow(ctx, `SELECT e.id, e.commit, e.inputs_hash, e.status,
		EXISTS (SELECT 1 FROM evaluation_builds eb JOIN builds b ON b.id = eb.build_id
			WHERE eb.evaluation_id = e.id AND b.status IN ('queued', 'running'))
		FROM evaluations e WHERE e.jobset_id = $1 ORDER BY e.id DESC LIMIT 1`, jobsetID).
		Scan(&l.ID, &l.Commit, &l.InputsHash, &l.Status, &l.UnfinishedBuild)
	if errors.Is(err, pgx.ErrNoRows) {
		return LastEvaluation{}, false, nil
	}
	if err != nil {
		return LastEvaluation{}, false, fmt.Errorf("latest evaluation of jobset %d: %w", jobsetID, err)
	}
	return l, true, nil
}

// MarkChecked records a poll that created no evaluation (and clears its trigger).
func (db *DB) MarkChecked(ctx context.Context, jobsetID int64, checkErr string) error {
	_, err := db.pool.Exec(ctx, `UPDATE jobsets SET last_checked_at = now(), last_check_error = $2,
		trigger_requested_at = NULL, trigger_forced = false WHERE id = $1`, jobsetID, checkErr)
	if err != nil {
		return fmt.Errorf("mark jobset %d checked: %w", jobsetID, err)
	}
	return nil
}

// NewEvaluation is what the scheduler records before an agent evaluates it.
type NewEvaluation struct {
	JobsetID   int64
	Commit     string
	InputsHash string
	Trigger    string
	Forced     bool
	Inputs     []EvaluationInput
}

// EvaluationInput is an input as evaluated (git inputs with their revision).
type EvaluationInput struct {
	Name, Type, Value, Revision string
}

// CreateEvaluation queues an evaluation, clears the jobset's trigger and disables a
// one_shot jobset, in one transaction.
func (db *DB) CreateEvaluation(ctx context.Context, n NewEvaluation) (int64, error) {
	var id int64
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `INSERT INTO evaluations (jobset_id, commit, inputs_hash, trigger, forced)
			VALUES ($1, $2, $3, $4, $5) RETURNING id`, n.JobsetID, n.Commit, n.InputsHash, n.Trigger, n.Forced).Scan(&id)
		if err != nil {
			return err
		}
		for _, in := range n.Inputs {
			if _, err := tx.Exec(ctx, `INSERT INTO evaluation_inputs (evaluation_id, name, type, value, revision)
				VALUES ($1, $2, $3, $4, $5)`, id, in.Name, in.Type, in.Value, in.Revision); err != nil {
				return err
			}
		}
		_, err = tx.Exec(ctx, `UPDATE jobsets SET last_checked_at = now(), last_check_error = '',
			trigger_requested_at = NULL, trigger_forced = false,
			state = CASE WHEN state = 'one_shot' THEN 'disabled' ELSE state END WHERE id = $1`, n.JobsetID)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("create evaluation of jobset %d: %w", n.JobsetID, err)
	}
	return id, nil
}

// Evaluation is an evaluation as the API shows it.
type Evaluation struct {
	ID              int64
	JobsetID        int64
	ProjectID       int64
	Status          string
	Commit          string
	InputsHash      string
	Trigger         string
	Forced          bool
	Error           string
	NrJobs          int
	NrNewBuilds     int
	NrErrors        int
	CheckoutSeconds *float64
	EvalSeconds     *float64
	AgentID         *int64
	Attempts        int
	CreatedAt       time.Time
	StartedAt       *time.Time
	FinishedAt      *time.Time
}

const evaluationColumns = `e.id, e.jobset_id, j.project_id, e.status, e.commit, e.inputs_hash, e.trigger, e.forced,
	e.error, e.nr_jobs, e.nr_new_builds, e.nr_errors, e.checkout_seconds, e.eval_seconds, e.agent_id, e.attempts,
	e.created_at, e.started_at, e.finished_at`

func scanEvaluation(row scanner) (Evaluation, error) {
	var e Evaluation
	err := row.Scan(&e.ID, &e.JobsetID, &e.ProjectID, &e.Status, &e.Commit, &e.InputsHash, &e.Trigger, &e.Forced,
		&e.Error, &e.NrJobs, &e.NrNewBuilds, &e.NrErrors, &e.CheckoutSeconds, &e.EvalSeconds, &e.AgentID, &e.Attempts,
		&e.CreatedAt, &e.StartedAt, &e.FinishedAt)
	return e, err
}

// GetEvaluation finds an evaluation.
func (db *DB) GetEvaluation(ctx context.Context, id int64) (Evaluation, error) {
	e, err := scanEvaluation(db.pool.QueryRow(ctx, `SELECT `+evaluationColumns+`
		FROM evaluations e JOIN jobsets j ON j.id = e.jobset_id WHERE e.id = $1`, id))
	if err != nil {
		return Evaluation{}, fmt.Errorf("get evaluation %d: %w", id, mapErr(err))
	}
	return e, nil
}

// EvaluationFilter narrows ListEvaluations; zero values do not filter.
type EvaluationFilter struct {
	ProjectID, JobsetID int64
	Status              string
}

// evaluationFilter is EvaluationFilter's condition: $1 project, $2 jobset, $3 status;
// a zero value does not filter.
const evaluationFilter = `($1 = 0 OR j.project_id = $1) AND ($2 = 0 OR e.jobset_id = $2) AND ($3 = '' OR e.status = $3)`

// ListEvaluations returns a page of evaluations, newest first.
func (db *DB) ListEvaluations(ctx context.Context, f EvaluationFilter, page Page) ([]Evaluation, int64, error) {
	var total int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM evaluations e JOIN jobsets j ON j.id = e.jobset_id WHERE `+evaluationFilter,
		f.ProjectID, f.JobsetID, f.Status).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count evaluations: %w", err)
	}
	rows, err := db.pool.Query(ctx, `SELECT `+evaluationColumns+` FROM evaluations e JOIN jobsets j ON j.id = e.jobset_id
		WHERE `+evaluationFilter+` ORDER BY e.id DESC LIMIT $4 OFFSET $5`, f.ProjectID, f.JobsetID, f.Status, page.Limit, page.Offset)
	if err != nil {
		return nil, 0, fmt.Errorf("list evaluations: %w", err)
	}
	items, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Evaluation, error) { return scanEvaluation(r) })
	if err != nil {
		return nil, 0, fmt.Errorf("list evaluations: %w", err)
	}
	return items, total, nil
}

// EvaluationErrors lists an evaluation's per-attribute errors.
func (db *DB) EvaluationErrors(ctx context.Context, id int64) ([]AttrError, error) {
	rows, err := db.pool.Query(ctx, `SELECT attr, message FROM evaluation_errors WHERE evaluation_id = $1 ORDER BY attr`, id)
	if err != nil {
		return nil, fmt.Errorf("evaluation %d errors: %w", id, err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (AttrError, error) {
		var e AttrError
		err := r.Scan(&e.Attr, &e.Message)
		return e, err
	})
}

// AttrError is an attribute that failed to evaluate.
type AttrError struct{ Attr, Message string }

// EvalJob is one job of a finished evaluation.
type EvalJob struct {
	Attr, Name, DrvPath, System    string
	Outputs                        map[string]string
	Description, License, Homepage string
	SchedulingPriority             int
	Timeout, MaxSilent             int
	IsAggregate                    bool
	Constituents                   []string
}

// EvalNode is a derivation that must be built, with its inputs among the nodes.
type EvalNode struct {
	DrvPath          string
	System           string
	RequiredFeatures []string
	PreferLocalBuild bool
	Outputs          map[string]string
	// OutputCA is the content address a fixed-output derivation declares, by output
	// name (none for input-addressed outputs): an upload of it must match.
	OutputCA map[string]string
	Inputs   []string
}

// EvalOutcome is what an agent reports for a successful evaluation.
type EvalOutcome struct {
	Jobs            []EvalJob
	Errors          []AttrError
	Nodes           []EvalNode
	CheckoutSeconds float64
	EvalSeconds     float64
}

// RunningEvaluations counts evaluations being evaluated now, on any coordinator.
func (db *DB) RunningEvaluations(ctx context.Context) (int, error) {
	var n int
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM evaluations WHERE status = 'running'`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count running evaluations: %w", err)
	}
	return n, nil
}

// EvalTask is what an agent needs to evaluate evaluation id.
type EvalTask struct {
	RepositoryURL, Commit, Branch, Expression string
	FlakeMode                                 bool
	Inputs                                    []EvaluationInput
	Credentials                               FetchCredentials
}

// EvalTaskOf reads an evaluation's task.
func (db *DB) EvalTaskOf(ctx context.Context, id int64) (EvalTask, error) {
	var t EvalTask
	var creds *FetchCredentials
	err := db.pool.QueryRow(ctx, `SELECT p.repository_url, e.commit, j.branch, j.nix_expression, j.flake_mode, p.fetch_credentials
		FROM evaluations e JOIN jobsets j ON j.id = e.jobset_id JOIN projects p ON p.id = j.project_id WHERE e.id = $1`, id).
		Scan(&t.RepositoryURL, &t.Commit, &t.Branch, &t.Expression, &t.FlakeMode, &creds)
	if creds != nil {
		t.Credentials = *creds
	}
	if err != nil {
		return EvalTask{}, fmt.Errorf("evaluation %d task: %w", id, mapErr(err))
	}
	rows, err := db.pool.Query(ctx, `SELECT name, type, value, revision FROM evaluation_inputs WHERE evaluation_id = $1 ORDER BY name`, id)
	if err != nil {
		return EvalTask{}, fmt.Errorf("evaluation %d inputs: %w", id, err)
	}
	t.Inputs, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (EvaluationInput, error) {
		var in EvaluationInput
		err := r.Scan(&in.Name, &in.Type, &in.Value, &in.Revision)
		return in, err
	})
	return t, err
}
