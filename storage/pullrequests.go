package storage

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// JobsetPullRequest is what a pull request's jobset records of its request.
type JobsetPullRequest struct {
	// ParentJobsetID is the jobset with pull_requests this one was made for.
	ParentJobsetID int64
	Number         int64
	// HeadSHA is the request's head commit: what the jobset evaluates.
	HeadSHA string
	// HeadBranch and HeadRepository are where the head comes from (owner/name of a
	// fork, or the base repository's).
	HeadBranch     string
	HeadRepository string
	Title          string
}

// PullRequestJobsetName is the name of parent's jobset for pull request number.
func PullRequestJobsetName(parent string, number int64) string {
	return fmt.Sprintf("%s-pr-%d", parent, number)
}

// PullRequestHead is an open pull request as a parent jobset's child evaluates it.
type PullRequestHead struct {
	Number int64
	// Ref is the forge's ref of the request's head in the base repository
	// (refs/pull/N/head, refs/merge-requests/N/head): the child's branch.
	Ref            string
	HeadSHA        string
	HeadBranch     string
	HeadRepository string
	Title          string
}

// PullRequestParents lists a project's jobsets that follow pull requests and may
// evaluate (not disabled), with their inputs.
func (db *DB) PullRequestParents(ctx context.Context, projectID int64) ([]Jobset, error) {
	rows, err := db.pool.Query(ctx, `SELECT `+jobsetColumns+` FROM jobsets j JOIN projects p ON p.id = j.project_id
		WHERE j.project_id = $1 AND j.pull_requests AND j.parent_jobset_id IS NULL AND j.state <> 'disabled'
		ORDER BY j.id`, projectID)
	if err != nil {
		return nil, fmt.Errorf("jobsets following pull requests of project %d: %w", projectID, err)
	}
	js, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Jobset, error) { return scanJobset(r) })
	if err != nil {
		return nil, fmt.Errorf("jobsets following pull requests of project %d: %w", projectID, err)
	}
	return db.withInputsAll(ctx, js)
}

func (db *DB) withInputsAll(ctx context.Context, js []Jobset) ([]Jobset, error) {
	ids := make([]int64, len(js))
	for i := range js {
		ids[i] = js[i].ID
	}
	inputs, err := db.inputsOf(ctx, ids)
	if err != nil {
		return nil, err
	}
	for i := range js {
		js[i].Inputs = inputs[js[i].ID]
	}
	return js, nil
}

// PullRequestChange is what OpenPullRequestJobset or ClosePullRequestJobset did.
type PullRequestChange struct {
	JobsetID int64
	Name     string
	// Created: the jobset is new; Triggered: an evaluation was requested (new, a new
	// head, or reopened); Closed: it was open and is now disabled and hidden.
	Created, Triggered, Closed bool
}

// childState is the state of a pull request's jobset made from parent: it evaluates
// like its parent, except that one_shot would disable it after its first evaluation.
func childState(parent Jobset) string {
	if parent.State == JobsetOneAtATime {
		return JobsetOneAtATime
	}
	return JobsetEnabled
}

// OpenPullRequestJobset makes or updates parent's jobset for an open pull request,
// in one transaction: the parent's settings and inputs (copied again each time, so a
// change to the parent reaches its children), the head, enabled and shown. It
// requests an evaluation when the jobset is new, was closed, or has a new head. A
// jobset of the same name that is not this request's is ErrConflict.
func (db *DB) OpenPullRequestJobset(ctx context.Context, parent Jobset, pr PullRequestHead) (PullRequestChange, error) {
	name := PullRequestJobsetName(parent.Name, pr.Number)
	ch := PullRequestChange{Name: name}
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		var oldHead, oldState string
		err := tx.QueryRow(ctx, `SELECT id, pr_head_sha, state FROM jobsets
			WHERE parent_jobset_id = $1 AND pr_number = $2 FOR UPDATE`, parent.ID, pr.Number).Scan(&ch.JobsetID, &oldHead, &oldState)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			ch.Created, ch.Triggered = true, true
			err = tx.QueryRow(ctx, `INSERT INTO jobsets (project_id, name, description, branch, flake_mode, nix_expression,
				check_interval, scheduling_shares, state, keep_nr, parent_jobset_id, pr_number, pr_head_sha,
				pr_head_branch, pr_head_repository, pr_title, trigger_requested_at)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, now()) RETURNING id`,
				parent.ProjectID, name, pullRequestDescription(pr), pr.Ref, parent.FlakeMode, parent.NixExpression,
				parent.CheckInterval, parent.SchedulingShares, childState(parent), parent.KeepNr, parent.ID, pr.Number,
				pr.HeadSHA, pr.HeadBranch, pr.HeadRepository, pr.Title).Scan(&ch.JobsetID)
		case err == nil:
			ch.Triggered = oldHead != pr.HeadSHA || oldState == JobsetDisabled
			_, err = tx.Exec(ctx, `UPDATE jobsets SET description = $2, branch = $3, flake_mode = $4, nix_expression = $5,
				check_interval = $6, scheduling_shares = $7, state = $8, keep_nr = $9, hidden = false,
				pr_head_sha = $10, pr_head_branch = $11, pr_head_repository = $12, pr_title = $13,
				trigger_requested_at = CASE WHEN $14 THEN coalesce(trigger_requested_at, now()) ELSE trigger_requested_at END,
				updated_at = now() WHERE id = $1`,
				ch.JobsetID, pullRequestDescription(pr), pr.Ref, parent.FlakeMode, parent.NixExpression, parent.CheckInterval,
				parent.SchedulingShares, childState(parent), parent.KeepNr, pr.HeadSHA, pr.HeadBranch, pr.HeadRepository,
				pr.Title, ch.Triggered)
		}
		if err != nil {
			return err
		}
		return replaceInputs(ctx, tx, ch.JobsetID, parent.Inputs)
	})
	if err != nil {
		return PullRequestChange{}, fmt.Errorf("jobset %s for pull request %d: %w", name, pr.Number, mapErr(err))
	}
	return ch, nil
}

func pullRequestDescription(pr PullRequestHead) string {
	return fmt.Sprintf("pull request #%d: %s", pr.Number, pr.Title)
}

// ClosePullRequestJobset disables and hides parent's jobset for pull request
// number, kept for history; Closed is false when it has none or it was closed
// already.
func (db *DB) ClosePullRequestJobset(ctx context.Context, parentID, number int64) (PullRequestChange, error) {
	var ch PullRequestChange
	err := db.pool.QueryRow(ctx, `WITH old AS (SELECT id, state, hidden FROM jobsets
			WHERE parent_jobset_id = $1 AND pr_number = $2 FOR UPDATE)
		UPDATE jobsets j SET state = 'disabled', hidden = true, trigger_requested_at = NULL, updated_at = now()
		FROM old WHERE j.id = old.id RETURNING j.id, j.name, old.state <> 'disabled' OR NOT old.hidden`,
		parentID, number).Scan(&ch.JobsetID, &ch.Name, &ch.Closed)
	if errors.Is(err, pgx.ErrNoRows) {
		return PullRequestChange{}, nil
	}
	if err != nil {
		return PullRequestChange{}, fmt.Errorf("close the jobset of pull request %d of jobset %d: %w", number, parentID, err)
	}
	return ch, nil
}

// OpenPullRequestNumbers lists the pull requests whose jobsets of parent are open
// (shown), for the poller to close those the forge no longer lists.
func (db *DB) OpenPullRequestNumbers(ctx context.Context, parentID int64) ([]int64, error) {
	rows, err := db.pool.Query(ctx, `SELECT pr_number FROM jobsets WHERE parent_jobset_id = $1 AND NOT hidden
		ORDER BY pr_number`, parentID)
	if err != nil {
		return nil, fmt.Errorf("open pull requests of jobset %d: %w", parentID, err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// CloseAllPullRequestJobsets disables and hides every open child of parent (its
// pull_requests was turned off), returning how many it closed.
func (db *DB) CloseAllPullRequestJobsets(ctx context.Context, parentID int64) (int64, error) {
	tag, err := db.pool.Exec(ctx, `UPDATE jobsets SET state = 'disabled', hidden = true, trigger_requested_at = NULL,
		updated_at = now() WHERE parent_jobset_id = $1 AND NOT hidden`, parentID)
	if err != nil {
		return 0, fmt.Errorf("close the pull request jobsets of jobset %d: %w", parentID, err)
	}
	return tag.RowsAffected(), nil
}

// PullRequestPollTarget is a project whose pull requests the poller lists: it has a
// forge and jobsets following pull requests.
type PullRequestPollTarget struct {
	ProjectID     int64
	RepositoryURL string
	Credentials   FetchCredentials
	Forge         ProjectForge
}

// PullRequestPollTargets lists the enabled projects with a forge and at least one
// jobset following pull requests that may evaluate.
func (db *DB) PullRequestPollTargets(ctx context.Context) ([]PullRequestPollTarget, error) {
	rows, err := db.pool.Query(ctx, `SELECT p.id, p.repository_url, p.fetch_credentials, `+forgeColumns+`
		FROM projects p JOIN project_forges f ON f.project_id = p.id
		WHERE p.enabled AND EXISTS (SELECT 1 FROM jobsets j WHERE j.project_id = p.id AND j.pull_requests
			AND j.parent_jobset_id IS NULL AND j.state <> 'disabled')
		ORDER BY p.id`)
	if err != nil {
		return nil, fmt.Errorf("projects to poll for pull requests: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (PullRequestPollTarget, error) {
		var t PullRequestPollTarget
		var creds *FetchCredentials
		err := r.Scan(append([]any{&t.ProjectID, &t.RepositoryURL, &creds}, t.Forge.scanTargets()...)...)
		if creds != nil {
			t.Credentials = *creds
		}
		return t, err
	})
	if err != nil {
		return nil, fmt.Errorf("projects to poll for pull requests: %w", err)
	}
	return out, nil
}

// UpdatePullRequestJobsets makes parent's open pull request jobsets follow it after
// a change, in one transaction: its settings and inputs, and its state (disabled
// with it, enabled again with it). When parent no longer follows pull requests they
// are closed (disabled and hidden) instead.
func (db *DB) UpdatePullRequestJobsets(ctx context.Context, parent Jobset) error {
	if parent.PullRequest != nil {
		return nil // a pull request's jobset has none
	}
	if !parent.PullRequests {
		_, err := db.CloseAllPullRequestJobsets(ctx, parent.ID)
		return err
	}
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE jobsets c SET flake_mode = p.flake_mode, nix_expression = p.nix_expression,
				check_interval = p.check_interval, scheduling_shares = p.scheduling_shares, keep_nr = p.keep_nr,
				state = CASE p.state WHEN 'disabled' THEN 'disabled' WHEN 'one_at_a_time' THEN 'one_at_a_time' ELSE 'enabled' END,
				updated_at = now()
			FROM jobsets p WHERE p.id = $1 AND c.parent_jobset_id = p.id AND NOT c.hidden`, parent.ID)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM jobset_inputs WHERE jobset_id IN
				(SELECT id FROM jobsets WHERE parent_jobset_id = $1 AND NOT hidden)`, parent.ID); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO jobset_inputs (jobset_id, name, type, value)
			SELECT c.id, i.name, i.type, i.value FROM jobsets c JOIN jobset_inputs i ON i.jobset_id = c.parent_jobset_id
			WHERE c.parent_jobset_id = $1 AND NOT c.hidden`, parent.ID)
		return err
	})
	if err != nil {
		return fmt.Errorf("update the pull request jobsets of jobset %d: %w", parent.ID, err)
	}
	return nil
}
