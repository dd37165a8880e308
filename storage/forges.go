package storage

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Forge types.
const (
	ForgeGitHub  = "github"
	ForgeGitea   = "gitea"
	ForgeForgejo = "forgejo"
	ForgeGitLab  = "gitlab"
)

// ProjectForge is where a project's repository is hosted and how FC talks to it:
// listing pull requests, reporting commit statuses. Token is the secret the forge's
// API takes (write-only through the API: never log it or show it).
type ProjectForge struct {
	ProjectID int64
	// Type is ForgeGitHub, ForgeGitea, ForgeForgejo or ForgeGitLab.
	Type string
	// APIURL is the API's root without a trailing slash: https://api.github.com,
	// https://gitlab.com/api/v4, or a Gitea/Forgejo instance's root (the paths under
	// it start with /api/v1).
	APIURL string
	// Repository is owner/name; on GitLab a path with groups or a numeric id.
	Repository string
	Token      string
	// StatusPerJob reports one commit status per job rather than one per jobset.
	StatusPerJob bool
	// PullRequestsFromForks lets pull requests from other repositories be evaluated.
	PullRequestsFromForks bool
}

// TokenSet says whether the forge has a token.
func (f ProjectForge) TokenSet() bool { return f.Token != "" }

// ProjectForgeFields are the writable forge settings. Token nil leaves the token as it
// is; a pointer to "" clears it.
type ProjectForgeFields struct {
	Type                  string
	APIURL                string
	Repository            string
	Token                 *string
	StatusPerJob          bool
	PullRequestsFromForks bool
}

const forgeColumns = `f.project_id, f.type, f.api_url, f.repository, coalesce(f.token, ''), f.status_per_job,
	f.pull_requests_from_forks`

func (f *ProjectForge) scanTargets() []any {
	return []any{&f.ProjectID, &f.Type, &f.APIURL, &f.Repository, &f.Token, &f.StatusPerJob, &f.PullRequestsFromForks}
}

// ProjectForge returns a project's forge settings, token included; ok is false when
// the project has none (or does not exist).
func (db *DB) ProjectForge(ctx context.Context, projectID int64) (f ProjectForge, ok bool, err error) {
	err = db.pool.QueryRow(ctx, `SELECT `+forgeColumns+` FROM project_forges f WHERE f.project_id = $1`, projectID).
		Scan(f.scanTargets()...)
	if errors.Is(err, pgx.ErrNoRows) {
		return ProjectForge{}, false, nil
	}
	if err != nil {
		return ProjectForge{}, false, fmt.Errorf("forge of project %d: %w", projectID, err)
	}
	return f, true, nil
}

// ProjectForges returns the forge settings of several projects (those that have
// one), in one query.
func (db *DB) ProjectForges(ctx context.Context, projectIDs []int64) (map[int64]ProjectForge, error) {
	rows, err := db.pool.Query(ctx, `SELECT `+forgeColumns+` FROM project_forges f WHERE f.project_id = ANY($1)`, projectIDs)
	if err != nil {
		return nil, fmt.Errorf("forges of projects: %w", err)
	}
	fs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ProjectForge, error) {
		var f ProjectForge
		return f, r.Scan(f.scanTargets()...)
	})
	if err != nil {
		return nil, fmt.Errorf("forges of projects: %w", err)
	}
	out := make(map[int64]ProjectForge, len(fs))
	for _, f := range fs {
		out[f.ProjectID] = f
	}
	return out, nil
}

// SetProjectForge creates or replaces a project's forge settings. An unknown project
// is ErrNotFound.
func (db *DB) SetProjectForge(ctx context.Context, projectID int64, f ProjectForgeFields) (ProjectForge, error) {
	var out ProjectForge
	err := db.pool.QueryRow(ctx, `INSERT INTO project_forges AS f (project_id, type, api_url, repository, token,
			status_per_job, pull_requests_from_forks)
		VALUES ($1, $2, $3, $4, NULLIF($6, ''), $7, $8)
		ON CONFLICT (project_id) DO UPDATE SET type = $2, api_url = $3, repository = $4,
			token = CASE WHEN $5::boolean THEN NULLIF($6, '') ELSE f.token END,
			status_per_job = $7, pull_requests_from_forks = $8, updated_at = now()
		RETURNING `+forgeColumns,
		projectID, f.Type, f.APIURL, f.Repository, f.Token != nil, deref(f.Token), f.StatusPerJob, f.PullRequestsFromForks).
		Scan(out.scanTargets()...)
	if err != nil {
		return ProjectForge{}, fmt.Errorf("set the forge of project %d: %w", projectID, mapErr(err))
	}
	return out, nil
}

// DeleteProjectForge removes a project's forge settings (none is no error).
func (db *DB) DeleteProjectForge(ctx context.Context, projectID int64) error {
	if _, err := db.pool.Exec(ctx, `DELETE FROM project_forges WHERE project_id = $1`, projectID); err != nil {
		return fmt.Errorf("delete the forge of project %d: %w", projectID, err)
	}
	return nil
}
