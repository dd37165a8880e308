package storage

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// BuildStatusCounts counts the builds of each of these evaluations (new and reused)
// by status, in one query: evaluation id -> status -> builds. An evaluation without
// builds has an empty map.
func (db *DB) BuildStatusCounts(ctx context.Context, evalIDs []int64) (map[int64]map[string]int64, error) {
	out := make(map[int64]map[string]int64, len(evalIDs))
	for _, id := range evalIDs {
		out[id] = map[string]int64{}
	}
	if len(evalIDs) == 0 {
		return out, nil
	}
	rows, err := db.pool.Query(ctx, `SELECT eb.evaluation_id, b.status, count(*) FROM evaluation_builds eb
		JOIN builds b ON b.id = eb.build_id WHERE eb.evaluation_id = ANY($1) GROUP BY 1, 2`, evalIDs)
	if err != nil {
		return nil, fmt.Errorf("count builds by status: %w", err)
	}
	var (
		id     int64
		status string
		n      int64
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &status, &n}, func() error {
		out[id][status] = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("count builds by status: %w", err)
	}
	return out, nil
}

// FullComparison is every tab of a comparison (CompareTabs but TabErrors), each
// with its count and its first limit jobs by name, and the attribute errors new here
// (not in the earlier evaluation) and fixed (there, not here), each up to limit.
type FullComparison struct {
	Counts            map[string]int64
	Jobs              map[string][]ComparedJob
	NewErrors, Fixed  []AttrError
	NrNewErr, NrFixed int64
}

// CompareAll compares evaluation evalID with prevID in every tab at once (the
// API's comparison); three queries.
func (db *DB) CompareAll(ctx context.Context, evalID, prevID int64, limit int) (FullComparison, error) {
	c := FullComparison{Counts: map[string]int64{}, Jobs: map[string][]ComparedJob{}}
	for _, t := range CompareTabs {
		if t != TabErrors {
			c.Counts[t], c.Jobs[t] = 0, []ComparedJob{}
		}
	}
	rows, err := db.pool.Query(ctx, comparePairs+`, ranked AS (SELECT *, row_number() OVER (PARTITION BY tab ORDER BY job) AS rn,
			count(*) OVER (PARTITION BY tab) AS n FROM pairs)
		SELECT tab, n, job, system, cid, cst, pid, pst FROM ranked WHERE rn <= $4 ORDER BY tab, job`, evalID, prevID, "", limit)
	if err != nil {
		return c, fmt.Errorf("compare evaluations %d and %d: %w", evalID, prevID, err)
	}
	var (
		tab string
		n   int64
		j   ComparedJob
	)
	_, err = pgx.ForEachRow(rows, []any{&tab, &n, &j.Job, &j.System, &j.ID, &j.Status, &j.PrevID, &j.PrevStatus}, func() error {
		c.Counts[tab] = n
		c.Jobs[tab] = append(c.Jobs[tab], j)
		return nil
	})
	if err != nil {
		return c, fmt.Errorf("compare evaluations %d and %d: %w", evalID, prevID, err)
	}
	if c.NewErrors, c.NrNewErr, err = db.errorsNotIn(ctx, evalID, prevID, limit); err == nil {
		c.Fixed, c.NrFixed, err = db.errorsNotIn(ctx, prevID, evalID, limit)
	}
	return c, err
}

// errorsNotIn lists the attribute errors of evaluation a whose attribute has none in
// evaluation b (up to limit, by attribute) and how many there are.
func (db *DB) errorsNotIn(ctx context.Context, a, b int64, limit int) ([]AttrError, int64, error) {
	rows, err := db.pool.Query(ctx, `SELECT x.attr, x.message, count(*) OVER () FROM evaluation_errors x
		WHERE x.evaluation_id = $1 AND NOT EXISTS (SELECT 1 FROM evaluation_errors y WHERE y.evaluation_id = $2 AND y.attr = x.attr)
		ORDER BY x.attr LIMIT $3`, a, b, limit)
	if err != nil {
		return nil, 0, fmt.Errorf("errors of evaluation %d not in %d: %w", a, b, err)
	}
	out := []AttrError{}
	var total int64
	var e AttrError
	_, err = pgx.ForEachRow(rows, []any{&e.Attr, &e.Message, &total}, func() error {
		out = append(out, e)
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("errors of evaluation %d not in %d: %w", a, b, err)
	}
	return out, total, nil
}
