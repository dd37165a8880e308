package storage

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// The dashboard's lists of jobsets that know of pull requests: a project's jobsets
// and a jobset's pull request jobsets, each with the request a jobset evaluates, and
// without the hidden ones (closed requests') unless asked. Three statements a list,
// whatever its length.

// JobsetRow is a jobset of such a list: its latest evaluation, whether it is hidden,
// and the pull request it evaluates (nil for others).
type JobsetRow struct {
	JobsetBrief
	Hidden      bool
	PullRequest *JobsetPullRequest
}

// JobsetList is a page of jobsets, how many the list has (hidden ones counted only
// when shown), and how many of all are hidden.
type JobsetList struct {
	Rows          []JobsetRow
	Total, Hidden int64
}

// The lists: $1 is the project or the parent jobset, $2 whether hidden jobsets are
// shown, $3 and $4 the page.
const (
	projectJobsetsCount = `SELECT count(*) FILTER (WHERE NOT hidden OR $2), count(*) FILTER (WHERE hidden)
		FROM jobsets WHERE project_id = $1`
	projectJobsetsPage = jobsetBriefSelect + ` WHERE j.project_id = $1 AND (NOT j.hidden OR $2)
		ORDER BY j.name LIMIT $3 OFFSET $4`
	childJobsetsCount = `SELECT count(*) FILTER (WHERE NOT hidden OR $2), count(*) FILTER (WHERE hidden)
		FROM jobsets WHERE parent_jobset_id = $1`
	childJobsetsPage = jobsetBriefSelect + ` WHERE j.parent_jobset_id = $1 AND (NOT j.hidden OR $2)
		ORDER BY j.pr_number DESC LIMIT $3 OFFSET $4`
)

// DashProjectJobsets is a page of a project's jobsets by name.
func (db *DB) DashProjectJobsets(ctx context.Context, projectID int64, withHidden bool, page Page) (JobsetList, error) {
	l, err := db.dashJobsetList(ctx, projectJobsetsCount, projectJobsetsPage, projectID, withHidden, page)
	if err != nil {
		return JobsetList{}, fmt.Errorf("jobsets of project %d: %w", projectID, err)
	}
	return l, nil
}

// DashPullRequestJobsets is a page of the pull request jobsets of jobset parentID,
// the newest request first.
func (db *DB) DashPullRequestJobsets(ctx context.Context, parentID int64, withHidden bool, page Page) (JobsetList, error) {
	l, err := db.dashJobsetList(ctx, childJobsetsCount, childJobsetsPage, parentID, withHidden, page)
	if err != nil {
		return JobsetList{}, fmt.Errorf("pull request jobsets of jobset %d: %w", parentID, err)
	}
	return l, nil
}

func (db *DB) dashJobsetList(ctx context.Context, countQuery, pageQuery string, id int64, withHidden bool, page Page) (JobsetList, error) {
	var l JobsetList
	if err := db.pool.QueryRow(ctx, countQuery, id, withHidden).Scan(&l.Total, &l.Hidden); err != nil {
		return JobsetList{}, fmt.Errorf("count: %w", err)
	}
	rows, err := db.pool.Query(ctx, pageQuery, id, withHidden, page.Limit, page.Offset)
	if err != nil {
		return JobsetList{}, err
	}
	briefs, err := pgx.CollectRows(rows, scanJobsetBrief)
	if err != nil {
		return JobsetList{}, err
	}
	l.Rows = make([]JobsetRow, len(briefs))
	ids := make([]int64, len(briefs))
	at := make(map[int64]int, len(briefs))
	for i, b := range briefs {
		l.Rows[i].JobsetBrief, ids[i], at[b.ID] = b, b.ID, i
	}
	if len(ids) == 0 {
		return l, nil
	}
	rows, err = db.pool.Query(ctx, `SELECT id, hidden, parent_jobset_id, pr_number, pr_head_sha, pr_head_branch,
		pr_head_repository, pr_title FROM jobsets WHERE id = ANY($1)`, ids)
	if err != nil {
		return JobsetList{}, fmt.Errorf("pull requests: %w", err)
	}
	var (
		rowID          int64
		hidden         bool
		parent, number *int64
		pr             JobsetPullRequest
	)
	_, err = pgx.ForEachRow(rows, []any{&rowID, &hidden, &parent, &number, &pr.HeadSHA, &pr.HeadBranch, &pr.HeadRepository, &pr.Title},
		func() error {
			row := &l.Rows[at[rowID]]
			row.Hidden = hidden
			if parent != nil && number != nil {
				p := pr
				p.ParentJobsetID, p.Number = *parent, *number
				row.PullRequest = &p
			}
			return nil
		})
	if err != nil {
		return JobsetList{}, fmt.Errorf("pull requests: %w", err)
	}
	return l, nil
}

// JobsetName is the name of jobset id (a pull request jobset's parent, for a link).
func (db *DB) JobsetName(ctx context.Context, id int64) (string, error) {
	var name string
	if err := db.pool.QueryRow(ctx, `SELECT name FROM jobsets WHERE id = $1`, id).Scan(&name); err != nil {
		return "", fmt.Errorf("name of jobset %d: %w", id, mapErr(err))
	}
	return name, nil
}
