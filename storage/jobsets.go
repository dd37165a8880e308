package storage

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Jobset states.
const (
	JobsetEnabled    = "enabled"
	JobsetDisabled   = "disabled"
	JobsetOneShot    = "one_shot"
	JobsetOneAtATime = "one_at_a_time"
	InputTypeString  = "string"
	InputTypeBoolean = "boolean"
	InputTypeGit     = "git"
	InputTypePath    = "path"
)

// JobsetInput is one named input passed to the Nix expression.
type JobsetInput struct {
	Name  string
	Type  string
	Value string
}

// Jobset is a branch and an expression of a project.
type Jobset struct {
	ID               int64
	ProjectID        int64
	ProjectName      string
	Name             string
	Description      string
	Branch           string
	FlakeMode        bool
	NixExpression    string
	Inputs           []JobsetInput
	CheckInterval    int
	SchedulingShares int
	State            string
	KeepNr           int
	LastCheckedAt    *time.Time
	LastCheckError   string
	CreatedAt        time.Time
	UpdatedAt        time.Time
	// PullRequests gives each open pull request whose base is this jobset's branch a
	// jobset of its own; PullRequestDrafts includes drafts.
	PullRequests      bool
	PullRequestDrafts bool
	// Hidden leaves the jobset out of default lists (a closed pull request's).
	Hidden bool
	// PullRequest is set on a jobset FC made for a pull request (storage/pullrequests.go).
	PullRequest *JobsetPullRequest
	// Declared names where the jobset is declared: the config file, or
	// "repository:<project>/<file>"; "": nowhere, the API manages it.
	Declared string
}

// JobsetFields are the writable columns of a jobset.
type JobsetFields struct {
	Name              string
	Description       string
	Branch            string
	FlakeMode         bool
	NixExpression     string
	Inputs            []JobsetInput
	CheckInterval     int
	SchedulingShares  int
	State             string
	KeepNr            int
	PullRequests      bool
	PullRequestDrafts bool
}

const jobsetColumns = `j.id, j.project_id, p.name, j.name, j.description, j.branch, j.flake_mode,
	j.nix_expression, j.check_interval, j.scheduling_shares, j.state, j.keep_nr, j.last_checked_at,
	j.last_check_error, j.created_at, j.updated_at, j.pull_requests, j.pull_request_drafts, j.hidden,
	j.parent_jobset_id, j.pr_number, j.pr_head_sha, j.pr_head_branch, j.pr_head_repository, j.pr_title,
	coalesce(j.declared, '')`

func scanJobset(row scanner) (Jobset, error) {
	var j Jobset
	scan := j.scanTargets()
	err := row.Scan(scan.dest...)
	scan.finish()
	return j, err
}

// jobsetScan is where a row of jobsetColumns goes; finish sets the pull request.
type jobsetScan struct {
	dest   []any
	finish func()
}

func (j *Jobset) scanTargets() jobsetScan {
	var parent, number *int64
	var pr JobsetPullRequest
	return jobsetScan{
		dest: []any{&j.ID, &j.ProjectID, &j.ProjectName, &j.Name, &j.Description, &j.Branch, &j.FlakeMode,
			&j.NixExpression, &j.CheckInterval, &j.SchedulingShares, &j.State, &j.KeepNr, &j.LastCheckedAt,
			&j.LastCheckError, &j.CreatedAt, &j.UpdatedAt, &j.PullRequests, &j.PullRequestDrafts, &j.Hidden,
			&parent, &number, &pr.HeadSHA, &pr.HeadBranch, &pr.HeadRepository, &pr.Title, &j.Declared},
		finish: func() {
			if parent != nil && number != nil {
				pr.ParentJobsetID, pr.Number = *parent, *number
				j.PullRequest = &pr
			}
		},
	}
}

// CreateJobset inserts a jobset and its inputs in one transaction.
func (db *DB) CreateJobset(ctx context.Context, projectID int64, f JobsetFields) (Jobset, error) {
	var id int64
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `INSERT INTO jobsets (project_id, name, description, branch, flake_mode, nix_expression,
			check_interval, scheduling_shares, state, keep_nr, pull_requests, pull_request_drafts)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id`,
			projectID, f.Name, f.Description, f.Branch, f.FlakeMode, f.NixExpression, f.CheckInterval,
			f.SchedulingShares, f.State, f.KeepNr, f.PullRequests, f.PullRequestDrafts).Scan(&id)
		if err != nil {
			return err
		}
		return replaceInputs(ctx, tx, id, f.Inputs)
	})
	if err != nil {
		return Jobset{}, fmt.Errorf("create jobset %q: %w", f.Name, mapErr(err))
	}
	return db.GetJobset(ctx, projectID, id)
}

func replaceInputs(ctx context.Context, tx pgx.Tx, jobsetID int64, inputs []JobsetInput) error {
	if _, err := tx.Exec(ctx, `DELETE FROM jobset_inputs WHERE jobset_id = $1`, jobsetID); err != nil {
		return err
	}
	if len(inputs) == 0 {
		return nil
	}
	names := make([]string, len(inputs))
	types := make([]string, len(inputs))
	values := make([]string, len(inputs))
	for i, in := range inputs {
		names[i], types[i], values[i] = in.Name, in.Type, in.Value
	}
	_, err := tx.Exec(ctx, `INSERT INTO jobset_inputs (jobset_id, name, type, value)
		SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[])`, jobsetID, names, types, values)
	return err
}

// GetJobset finds jobset id of project projectID.
func (db *DB) GetJobset(ctx context.Context, projectID, id int64) (Jobset, error) {
	j, err := scanJobset(db.pool.QueryRow(ctx, `SELECT `+jobsetColumns+`
		FROM jobsets j JOIN projects p ON p.id = j.project_id WHERE j.project_id = $1 AND j.id = $2`, projectID, id))
	if err != nil {
		return Jobset{}, fmt.Errorf("get jobset %d: %w", id, mapErr(err))
	}
	return db.withInputs(ctx, j)
}

// GetJobsetByName finds a jobset by its name within a project.
func (db *DB) GetJobsetByName(ctx context.Context, projectID int64, name string) (Jobset, error) {
	j, err := scanJobset(db.pool.QueryRow(ctx, `SELECT `+jobsetColumns+`
		FROM jobsets j JOIN projects p ON p.id = j.project_id WHERE j.project_id = $1 AND j.name = $2`, projectID, name))
	if err != nil {
		return Jobset{}, fmt.Errorf("get jobset %q: %w", name, mapErr(err))
	}
	return db.withInputs(ctx, j)
}

func (db *DB) withInputs(ctx context.Context, j Jobset) (Jobset, error) {
	byID, err := db.inputsOf(ctx, []int64{j.ID})
	if err != nil {
		return Jobset{}, err
	}
	j.Inputs = byID[j.ID]
	return j, nil
}

// inputsOf loads the inputs of several jobsets in one query.
func (db *DB) inputsOf(ctx context.Context, ids []int64) (map[int64][]JobsetInput, error) {
	rows, err := db.pool.Query(ctx, `SELECT jobset_id, name, type, value FROM jobset_inputs
		WHERE jobset_id = ANY($1) ORDER BY jobset_id, name`, ids)
	if err != nil {
		return nil, fmt.Errorf("load jobset inputs: %w", err)
	}
	defer rows.Close()
	out := make(map[int64][]JobsetInput, len(ids))
	for rows.Next() {
		var id int64
		var in JobsetInput
		if err := rows.Scan(&id, &in.Name, &in.Type, &in.Value); err != nil {
			return nil, fmt.Errorf("load jobset inputs: %w", err)
		}
		out[id] = append(out[id], in)
	}
	return out, rows.Err()
}

// ListJobsets returns a page of a project's jobsets, newest first, and the total,
// without the hidden ones (closed pull requests').
func (db *DB) ListJobsets(ctx context.Context, projectID int64, page Page) ([]Jobset, int64, error) {
	return db.listJobsets(ctx, projectID, false, page)
}

// ListAllJobsets is ListJobsets with the hidden jobsets too.
func (db *DB) ListAllJobsets(ctx context.Context, projectID int64, page Page) ([]Jobset, int64, error) {
	return db.listJobsets(ctx, projectID, true, page)
}

func (db *DB) listJobsets(ctx context.Context, projectID int64, hidden bool, page Page) ([]Jobset, int64, error) {
	var total int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM jobsets WHERE project_id = $1 AND (NOT hidden OR $2)`,
		projectID, hidden).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count jobsets: %w", err)
	}
	rows, err := db.pool.Query(ctx, `SELECT `+jobsetColumns+` FROM jobsets j JOIN projects p ON p.id = j.project_id
		WHERE j.project_id = $1 AND (NOT j.hidden OR $4) ORDER BY j.id DESC LIMIT $2 OFFSET $3`,
		projectID, page.Limit, page.Offset, hidden)
	if err != nil {
		return nil, 0, fmt.Errorf("list jobsets: %w", err)
	}
	items, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Jobset, error) { return scanJobset(r) })
	if err != nil {
		return nil, 0, fmt.Errorf("list jobsets: %w", err)
	}
	ids := make([]int64, len(items))
	for i := range items {
		ids[i] = items[i].ID
	}
	inputs, err := db.inputsOf(ctx, ids)
	if err != nil {
		return nil, 0, err
	}
	for i := range items {
		items[i].Inputs = inputs[items[i].ID]
	}
	return items, total, nil
}

// UpdateJobset replaces the writable columns and the inputs of a jobset.
func (db *DB) UpdateJobset(ctx context.Context, projectID, id int64, f JobsetFields) (Jobset, error) {
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE jobsets SET name = $3, description = $4, branch = $5, flake_mode = $6,
			nix_expression = $7, check_interval = $8, scheduling_shares = $9, state = $10, keep_nr = $11,
			pull_requests = $12, pull_request_drafts = $13, updated_at = now() WHERE project_id = $1 AND id = $2`,
			projectID, id, f.Name, f.Description, f.Branch, f.FlakeMode, f.NixExpression, f.CheckInterval,
			f.SchedulingShares, f.State, f.KeepNr, f.PullRequests, f.PullRequestDrafts)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrNotFound
		}
		return replaceInputs(ctx, tx, id, f.Inputs)
	})
	if err != nil {
		return Jobset{}, fmt.Errorf("update jobset %d: %w", id, mapErr(err))
	}
	return db.GetJobset(ctx, projectID, id)
}

// DeleteJobset removes a jobset with its evaluations and builds.
func (db *DB) DeleteJobset(ctx context.Context, projectID, id int64) error {
	tag, err := db.pool.Exec(ctx, `DELETE FROM jobsets WHERE project_id = $1 AND id = $2`, projectID, id)
	if err != nil {
		return fmt.Errorf("delete jobset %d: %w", id, mapErr(err))
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("delete jobset %d: %w", id, ErrNotFound)
	}
	return nil
}
