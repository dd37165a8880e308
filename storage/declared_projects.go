package storage

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
)

// applyProjects upserts the declared projects by name and their jobsets by name
// within them. Projects and jobsets no longer declared are kept (their builds are
// history) and no longer marked declared.
func applyProjects(ctx context.Context, tx pgx.Tx, d Declarations, rep DeclarationReport, followers *[]int64) error {
	c := rep.count("projects")
	names := make([]string, 0, len(d.Projects))
	for _, p := range d.Projects {
		names = append(names, p.Fields.Name)
		var owner *int64
		if p.OwnerUser != "" {
			owner = new(int64)
			if err := tx.QueryRow(ctx, `SELECT id FROM users WHERE username = $1`, p.OwnerUser).Scan(owner); err != nil {
				return fmt.Errorf("project %q: owner %q: %w", p.Fields.Name, p.OwnerUser, mapErr(err))
			}
		}
		f := p.Fields
		var id int64
		var inserted bool
		err := tx.QueryRow(ctx, `INSERT INTO projects (name, display_name, description, repository_url, enabled,
				owner_user_id, declarative_file, declarative_branch, declared)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
			ON CONFLICT (name) DO UPDATE SET display_name = EXCLUDED.display_name, description = EXCLUDED.description,
				repository_url = EXCLUDED.repository_url, enabled = EXCLUDED.enabled, owner_user_id = EXCLUDED.owner_user_id,
				owner_key_id = NULL, declarative_file = EXCLUDED.declarative_file,
				declarative_branch = EXCLUDED.declarative_branch, declared = EXCLUDED.declared, updated_at = now()
			WHERE (projects.display_name, projects.description, projects.repository_url, projects.enabled,
				projects.owner_user_id, projects.owner_key_id, projects.declarative_file, projects.declarative_branch, projects.declared)
				IS DISTINCT FROM (EXCLUDED.display_name, EXCLUDED.description, EXCLUDED.repository_url, EXCLUDED.enabled,
				EXCLUDED.owner_user_id, NULL::bigint, EXCLUDED.declarative_file, EXCLUDED.declarative_branch, EXCLUDED.declared)
			RETURNING id, xmax = 0`, f.Name, f.DisplayName, f.Description, f.RepositoryURL, f.Enabled, owner,
			p.DeclarativeFile, p.DeclarativeBranch, d.Source).Scan(&id, &inserted)
		if errors.Is(err, pgx.ErrNoRows) {
			err = tx.QueryRow(ctx, `SELECT id FROM projects WHERE name = $1`, f.Name).Scan(&id)
		} else if err == nil && inserted {
			c.Created++
		} else if err == nil {
			c.Updated++
		}
		if err != nil {
			return fmt.Errorf("project %q: %w", f.Name, mapErr(err))
		}
		if err := upsertJobsets(ctx, tx, id, d.Source, p.Jobsets, rep.count("jobsets"), false, followers); err != nil {
			return fmt.Errorf("project %q: %w", f.Name, err)
		}
	}
	tag, err := tx.Exec(ctx, `UPDATE jobsets SET declared = NULL, updated_at = now()
		WHERE declared = $1 AND project_id IN (SELECT id FROM projects WHERE declared = $1 AND NOT (name = ANY($2)))`,
		d.Source, names)
	if err != nil {
		return fmt.Errorf("projects no longer declared: %w", err)
	}
	rep.count("jobsets").Removed += int(tag.RowsAffected())
	tag, err = tx.Exec(ctx, `UPDATE projects SET declared = NULL, updated_at = now()
		WHERE declared = $1 AND NOT (name = ANY($2))`, d.Source, names)
	if err != nil {
		return fmt.Errorf("projects no longer declared: %w", err)
	}
	c.Removed += int(tag.RowsAffected())
	return nil
}

// upsertJobsets makes project projectID's jobsets declared by source match js: each
// is created or updated by name; those source declared before and js lacks are no
// longer marked declared, and, when disable is set (a repository's file), disabled.
//
// A repository's file (disable set) does not take over a jobset another source
// declares: the config's declaration wins.
// The ids of the jobsets changed are added to followers: their pull requests' jobsets
// follow them (followParents) once the transaction is committed.
func upsertJobsets(ctx context.Context, tx pgx.Tx, projectID int64, source string, js []JobsetFields, c *DeclarationCounts,
	disable bool, followers *[]int64) error {
	names := make([]string, 0, len(js))
	for _, f := range js {
		names = append(names, f.Name)
		var id int64
		var inserted bool
		err := tx.QueryRow(ctx, `INSERT INTO jobsets (project_id, name, description, branch, flake_mode, nix_expression,
				check_interval, scheduling_shares, state, keep_nr, declared, pull_requests, pull_request_drafts)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $13, $14)
			ON CONFLICT (project_id, name) DO UPDATE SET description = EXCLUDED.description, branch = EXCLUDED.branch,
				flake_mode = EXCLUDED.flake_mode, nix_expression = EXCLUDED.nix_expression,
				check_interval = EXCLUDED.check_interval, scheduling_shares = EXCLUDED.scheduling_shares,
				state = EXCLUDED.state, keep_nr = EXCLUDED.keep_nr, declared = EXCLUDED.declared,
				pull_requests = EXCLUDED.pull_requests, pull_request_drafts = EXCLUDED.pull_request_drafts, updated_at = now()
			WHERE (jobsets.description, jobsets.branch, jobsets.flake_mode, jobsets.nix_expression, jobsets.check_interval,
				jobsets.scheduling_shares, jobsets.state, jobsets.keep_nr, jobsets.declared, jobsets.pull_requests,
				jobsets.pull_request_drafts) IS DISTINCT FROM
				(EXCLUDED.description, EXCLUDED.branch, EXCLUDED.flake_mode, EXCLUDED.nix_expression, EXCLUDED.check_interval,
				EXCLUDED.scheduling_shares, EXCLUDED.state, EXCLUDED.keep_nr, EXCLUDED.declared, EXCLUDED.pull_requests,
				EXCLUDED.pull_request_drafts)
				AND (NOT $12 OR jobsets.declared IS NULL OR jobsets.declared = EXCLUDED.declared)
				AND jobsets.parent_jobset_id IS NULL
			RETURNING id, xmax = 0`, projectID, f.Name, f.Description, f.Branch, f.FlakeMode, f.NixExpression,
			f.CheckInterval, f.SchedulingShares, f.State, f.KeepNr, source, disable, f.PullRequests,
			f.PullRequestDrafts).Scan(&id, &inserted)
		changed := err == nil
		if errors.Is(err, pgx.ErrNoRows) {
			var other *string
			var pr bool
			err = tx.QueryRow(ctx, `SELECT id, declared, parent_jobset_id IS NOT NULL FROM jobsets WHERE project_id = $1 AND name = $2`,
				projectID, f.Name).Scan(&id, &other, &pr)
			if err == nil && pr {
				return fmt.Errorf("jobset %q: %w: a pull request's jobset has this name", f.Name, ErrConflict)
			}
			if err == nil && other != nil && *other != source {
				continue // declared elsewhere (the config): left as it is
			}
		}
		if err != nil {
			return fmt.Errorf("jobset %q: %w", f.Name, mapErr(err))
		}
		inputsChanged, err := replaceInputsIfChanged(ctx, tx, id, f.Inputs)
		if err != nil {
			return fmt.Errorf("jobset %q: inputs: %w", f.Name, mapErr(err))
		}
		switch {
		case changed && inserted:
			c.Created++
		case changed || inputsChanged:
			c.Updated++
			*followers = append(*followers, id)
		}
	}
	tag, err := tx.Exec(ctx, `UPDATE jobsets SET declared = NULL, updated_at = now(),
		state = CASE WHEN $4 THEN 'disabled' ELSE state END
		WHERE project_id = $1 AND declared = $2 AND NOT (name = ANY($3))`, projectID, source, names, disable)
	if err != nil {
		return fmt.Errorf("jobsets no longer declared: %w", err)
	}
	c.Removed += int(tag.RowsAffected())
	return nil
}

// replaceInputsIfChanged replaces a jobset's inputs when they differ from inputs.
func replaceInputsIfChanged(ctx context.Context, tx pgx.Tx, jobsetID int64, inputs []JobsetInput) (bool, error) {
	rows, err := tx.Query(ctx, `SELECT name, type, value FROM jobset_inputs WHERE jobset_id = $1 ORDER BY name COLLATE "C"`, jobsetID)
	if err != nil {
		return false, err
	}
	old, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (JobsetInput, error) {
		var in JobsetInput
		return in, r.Scan(&in.Name, &in.Type, &in.Value)
	})
	if err != nil {
		return false, err
	}
	want := slices.Clone(inputs)
	slices.SortFunc(want, func(a, b JobsetInput) int {
		switch {
		case a.Name < b.Name:
			return -1
		case a.Name > b.Name:
			return 1
		}
		return 0
	})
	if slices.Equal(old, want) {
		return false, nil
	}
	return true, replaceInputs(ctx, tx, jobsetID, want)
}

// followParents makes the pull requests' jobsets of the changed jobsets ids follow
// them, as an API change does (UpdatePullRequestJobsets).
func (db *DB) followParents(ctx context.Context, ids []int64) error {
	for _, id := range ids {
		var projectID int64
		if err := db.pool.QueryRow(ctx, `SELECT project_id FROM jobsets WHERE id = $1`, id).Scan(&projectID); err != nil {
			return fmt.Errorf("jobset %d: %w", id, mapErr(err))
		}
		j, err := db.GetJobset(ctx, projectID, id)
		if err != nil {
			return err
		}
		if err := db.UpdatePullRequestJobsets(ctx, j); err != nil {
			return err
		}
	}
	return nil
}

// DeclarativeProjects are the enabled projects whose repositories declare jobsets
// (declarative_file set).
func (db *DB) DeclarativeProjects(ctx context.Context) ([]Project, error) {
	rows, err := db.pool.Query(ctx, `SELECT `+projectColumns+` FROM projects WHERE declarative_file <> '' AND enabled ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("declarative projects: %w", err)
	}
	ps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Project, error) { return scanProject(r) })
	if err != nil {
		return nil, fmt.Errorf("declarative projects: %w", err)
	}
	return ps, nil
}

// ApplyRepositoryJobsets makes the jobsets project projectID's repository declares
// (in the file source names, "repository:<project>/<file>") match js, in one transaction, and
// clears the project's declarative_error. Jobsets the file no longer declares are
// disabled and no longer marked declared.
func (db *DB) ApplyRepositoryJobsets(ctx context.Context, projectID int64, source string, js []JobsetFields) (DeclarationCounts, error) {
	var c DeclarationCounts
	var followers []int64
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		c, followers = DeclarationCounts{}, nil
		if err := upsertJobsets(ctx, tx, projectID, source, js, &c, true, &followers); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `UPDATE projects SET declarative_error = '' WHERE id = $1 AND declarative_error <> ''`, projectID)
		return err
	})
	if err != nil {
		return DeclarationCounts{}, fmt.Errorf("apply jobsets declared by %s: %w", source, mapErr(err))
	}
	return c, db.followParents(ctx, followers)
}

// SetDeclarativeError records why project projectID's declarative file could not be
// applied ("" clears it).
func (db *DB) SetDeclarativeError(ctx context.Context, projectID int64, msg string) error {
	if _, err := db.pool.Exec(ctx, `UPDATE projects SET declarative_error = $2 WHERE id = $1`, projectID, msg); err != nil {
		return fmt.Errorf("record declarative error of project %d: %w", projectID, err)
	}
	return nil
}
