package storage

import (
	"context"
	"fmt"
	"time"
)

// StarredJob is a job a user follows, with where it lives and its newest build.
type StarredJob struct {
	JobsetID  int64
	Project   string
	Jobset    string
	Job       string
	CreatedAt time.Time
	// The job's newest build; LastBuildID nil when it has none yet.
	LastBuildID    *int64
	LastStatus     string
	LastFinishedAt *time.Time
}

// StarJob makes user follow job of a jobset; starring it again changes nothing. An
// unknown jobset (or user) is ErrNotFound.
func (db *DB) StarJob(ctx context.Context, userID, jobsetID int64, job string) error {
	_, err := db.pool.Exec(ctx, `INSERT INTO starred_jobs (user_id, jobset_id, job) VALUES ($1, $2, $3)
		ON CONFLICT DO NOTHING`, userID, jobsetID, job)
	if err != nil {
		return fmt.Errorf("star job %q of jobset %d: %w", job, jobsetID, mapErr(err))
	}
	return nil
}

// UnstarJob stops user following a job; ErrNotFound when they did not.
func (db *DB) UnstarJob(ctx context.Context, userID, jobsetID int64, job string) error {
	tag, err := db.pool.Exec(ctx, `DELETE FROM starred_jobs WHERE user_id = $1 AND jobset_id = $2 AND job = $3`,
		userID, jobsetID, job)
	if err != nil {
		return fmt.Errorf("unstar job %q of jobset %d: %w", job, jobsetID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("unstar job %q of jobset %d: %w", job, jobsetID, ErrNotFound)
	}
	return nil
}

// ListStarredJobs returns a page of the jobs user follows, by project, jobset and job,
// each with its newest build (one query, whatever the number of stars), and their
// number.
func (db *DB) ListStarredJobs(ctx context.Context, userID int64, page Page) ([]StarredJob, int64, error) {
	var total int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM starred_jobs WHERE user_id = $1`, userID).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count starred jobs: %w", err)
	}
	rows, err := db.pool.Query(ctx, `SELECT s.jobset_id, p.name, j.name, s.job, s.created_at, b.id, coalesce(b.status, ''), b.finished_at
		FROM starred_jobs s JOIN jobsets j ON j.id = s.jobset_id JOIN projects p ON p.id = j.project_id
		LEFT JOIN LATERAL (SELECT id, status, finished_at FROM builds
			WHERE jobset_id = s.jobset_id AND job = s.job ORDER BY id DESC LIMIT 1) b ON true
		WHERE s.user_id = $1 ORDER BY p.name, j.name, s.job LIMIT $2 OFFSET $3`, userID, page.Limit, page.Offset)
	if err != nil {
		return nil, 0, fmt.Errorf("list starred jobs: %w", err)
	}
	defer rows.Close()
	items := make([]StarredJob, 0, min(page.Limit, 100))
	for rows.Next() {
		var s StarredJob
		if err := rows.Scan(&s.JobsetID, &s.Project, &s.Jobset, &s.Job, &s.CreatedAt, &s.LastBuildID, &s.LastStatus, &s.LastFinishedAt); err != nil {
			return nil, 0, fmt.Errorf("list starred jobs: %w", err)
		}
		items = append(items, s)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("list starred jobs: %w", err)
	}
	return items, total, nil
}

// JobsetIDByName finds the id of jobset of project, both by name.
func (db *DB) JobsetIDByName(ctx context.Context, project, jobset string) (int64, error) {
	var id int64
	err := db.pool.QueryRow(ctx, `SELECT j.id FROM jobsets j JOIN projects p ON p.id = j.project_id
		WHERE p.name = $1 AND j.name = $2`, project, jobset).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("get jobset %s/%s: %w", project, jobset, mapErr(err))
	}
	return id, nil
}

// JobsetExists reports whether there is a jobset with this id.
func (db *DB) JobsetExists(ctx context.Context, id int64) (bool, error) {
	var ok bool
	if err := db.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM jobsets WHERE id = $1)`, id).Scan(&ok); err != nil {
		return false, fmt.Errorf("look up jobset %d: %w", id, err)
	}
	return ok, nil
}
