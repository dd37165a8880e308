package storage_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// TestBuildPage_MatchesAPlainQueryForEveryFilterAndPage compares each page of
// ListBuilds' statements (one per driving index, with custom plans) with the plain
// query over every filter, and checks its total: exact when fewer than
// storage.BuildCountCap builds follow the page's first, else a lower bound past the
// page's end.
func TestBuildPage_MatchesAPlainQueryForEveryFilterAndPage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	var evals []int64
	for _, q := range []string{
		`INSERT INTO projects (name, repository_url) VALUES ('bl-a', 'https://example.org/a.git'), ('bl-b', 'https://example.org/b.git')`,
		`INSERT INTO jobsets (project_id, name) SELECT p.id, js FROM projects p, unnest(ARRAY['one', 'two']) js WHERE p.name = 'bl-a'
			UNION ALL SELECT id, 'one' FROM projects WHERE name = 'bl-b'`,
		`INSERT INTO evaluations (jobset_id, status, commit, trigger, nr_jobs)
			SELECT j.id, 'succeeded', md5(j.id || '-' || g), 'poll', 0 FROM jobsets j, generate_series(1, 2) g ORDER BY g, j.id`,
		// 1,500 builds spread over the evaluations, statuses, systems and jobs; queued
		// ones unfinished, finish times not in id order.
		`INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, status, finished_at)
			SELECT e.id, e.jobset_id, 'job' || (k / 6), '/nix/store/' || md5(k::text) || '-b.drv',
				CASE WHEN k % 3 = 0 THEN 'aarch64-linux' ELSE 'x86_64-linux' END,
				CASE WHEN k % 11 = 0 THEN 'queued' WHEN k % 7 = 0 THEN 'failed' ELSE 'succeeded' END,
				CASE WHEN k % 11 = 0 THEN NULL ELSE timestamptz '2026-01-01' + make_interval(secs => (k * 7919) % 5000) END
			FROM generate_series(1, 1500) k JOIN LATERAL (SELECT id, jobset_id FROM evaluations ORDER BY id OFFSET k % 6 LIMIT 1) e ON true
			ORDER BY k`,
		// The last evaluation reuses builds of the first of its jobset.
		`INSERT INTO evaluation_builds (evaluation_id, build_id)
			SELECT (SELECT max(id) FROM evaluations WHERE jobset_id = b.jobset_id), b.id FROM builds b
			WHERE b.evaluation_id = (SELECT min(id) FROM evaluations) AND b.id % 2 = 0 ON CONFLICT DO NOTHING`,
		`ANALYZE`,
	} {
		if _, err := db.Pool().Exec(ctx, q); err != nil {
			t.Fatalf("%v\n%s", err, q)
		}
	}
	rows, err := db.Pool().Query(ctx, `SELECT id FROM evaluations ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	if evals, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil || len(evals) != 6 {
		t.Fatalf("evaluations %v: %v", evals, err)
	}
	var jsA1, jsA2, projA, mid int64
	if err := db.Pool().QueryRow(ctx, `SELECT min(j.id), max(j.id), min(p.id), (SELECT id FROM builds ORDER BY id OFFSET 700 LIMIT 1)
		FROM jobsets j JOIN projects p ON p.id = j.project_id WHERE p.name = 'bl-a'`).Scan(&jsA1, &jsA2, &projA, &mid); err != nil {
		t.Fatal(err)
	}
	// The plain query: every filter written out, newest (or last finished) first.
	plain := func(f storage.BuildFilter) []int64 {
		order := `b.id DESC`
		if f.Finished {
			order = `b.finished_at DESC, b.id DESC`
		}
		rows, err := db.Pool().Query(ctx, `SELECT b.id FROM builds b JOIN jobsets j ON j.id = b.jobset_id
			WHERE ($1 = 0 OR b.id IN (SELECT build_id FROM evaluation_builds WHERE evaluation_id = $1)) AND ($2 = 0 OR b.jobset_id = $2)
			AND ($3 = 0 OR j.project_id = $3) AND ($4 = '' OR b.status = $4) AND ($5 = '' OR b.system = $5) AND ($6 = '' OR b.job = $6)
			AND ($7 = 0 OR b.id < $7) AND (NOT $8 OR b.finished_at IS NOT NULL)
			ORDER BY `+order, f.EvaluationID, f.JobsetID, f.ProjectID, f.Status, f.System, f.Job, f.BeforeID, f.Finished)
		if err != nil {
			t.Fatal(err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	filters := []storage.BuildFilter{
		{}, {JobsetID: jsA1}, {ProjectID: projA}, {Status: "failed"}, {Status: "succeeded"}, {JobsetID: jsA2, Status: "failed"},
		{ProjectID: projA, Status: "queued"}, {System: "aarch64-linux"}, {Job: "job7"}, {JobsetID: jsA1, Job: "job6"},
		{EvaluationID: evals[0]}, {EvaluationID: evals[5]}, {EvaluationID: evals[5], Status: "succeeded", System: "x86_64-linux"},
		{EvaluationID: evals[5], ProjectID: projA}, {BeforeID: mid}, {BeforeID: mid, Status: "failed"}, {EvaluationID: evals[5], BeforeID: mid},
		{Finished: true}, {Finished: true, JobsetID: jsA2}, {Status: "failed", ProjectID: projA + 1000}, {EvaluationID: evals[5] + 1000},
	}
	pages := []storage.Page{{Limit: 50}, {Limit: 7, Offset: 13}, {Limit: 500, Offset: 200}, {Limit: 50, Offset: 480},
		{Limit: 500, Offset: 1000}, {Limit: 50, Offset: 1490}, {Limit: 50, Offset: 5000}}
	for _, f := range filters {
		all := plain(f)
		for _, p := range pages {
			t.Run(fmt.Sprintf("%+v/%+v", f, p), func(t *testing.T) {
				l, err := db.BuildPage(ctx, f, p)
				if err != nil {
					t.Fatal(err)
				}
				want := all[min(p.Offset, len(all)):min(p.Offset+p.Limit, len(all))]
				got := make([]int64, len(l.Items))
				for i, b := range l.Items {
					got[i] = b.ID
				}
				if !slices.Equal(got, want) {
					t.Errorf("ids %v, want %v (%d match)", got, want, len(all))
				}
				switch window := p.Limit + storage.BuildCountCap; {
				case len(all)-p.Offset < window:
					if !l.TotalExact || l.Total != int64(len(all)) {
						t.Errorf("total %d exact %v, want exactly %d", l.Total, l.TotalExact, len(all))
					}
				case l.TotalExact || l.Total != int64(p.Offset+window):
					t.Errorf("total %d exact %v, want the lower bound %d (%d match)", l.Total, l.TotalExact, p.Offset+window, len(all))
				}
			})
		}
	}
}
