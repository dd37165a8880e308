package storage

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// NixChannel (a Nix channel, not a NOTIFY Channel) follows a jobset, as Hydra's
// channels do: it points at the newest evaluation whose builds all succeeded, or
// whose Aggregate job succeeded when one is named.
type NixChannel struct {
	ID          int64
	Name        string
	ProjectID   int64
	ProjectName string
	JobsetID    int64
	JobsetName  string
	Aggregate   string
	// EvaluationID is the evaluation the channel serves, nil before the first.
	EvaluationID *int64
	Commit       string
	CreatedAt    time.Time
	UpdatedAt    time.Time
}

const channelSelect = `SELECT c.id, c.name, c.project_id, p.name, c.jobset_id, j.name, c.aggregate,
	c.current_evaluation_id, coalesce(e.commit, ''), c.created_at, c.updated_at
	FROM channels c JOIN projects p ON p.id = c.project_id JOIN jobsets j ON j.id = c.jobset_id
	LEFT JOIN evaluations e ON e.id = c.current_evaluation_id`

func scanChannel(row pgx.Row) (NixChannel, error) {
	var c NixChannel
	err := row.Scan(&c.ID, &c.Name, &c.ProjectID, &c.ProjectName, &c.JobsetID, &c.JobsetName, &c.Aggregate,
		&c.EvaluationID, &c.Commit, &c.CreatedAt, &c.UpdatedAt)
	return c, err
}

// CreateChannel adds a channel following jobsetID (of projectID); a taken name is
// ErrConflict, a jobset not of the project ErrNotFound. It starts at the newest
// evaluation that already qualifies, if any.
func (db *DB) CreateChannel(ctx context.Context, name string, projectID, jobsetID int64, aggregate string) (NixChannel, error) {
	var id int64
	err := db.pool.QueryRow(ctx, `INSERT INTO channels (name, project_id, jobset_id, aggregate)
		SELECT $1, j.project_id, j.id, $4 FROM jobsets j WHERE j.id = $3 AND j.project_id = $2 RETURNING id`,
		name, projectID, jobsetID, aggregate).Scan(&id)
	if err != nil {
		return NixChannel{}, fmt.Errorf("create channel %q: %w", name, mapErr(err))
	}
	if _, err := db.AdvanceChannels(ctx); err != nil {
		return NixChannel{}, err
	}
	return db.GetChannel(ctx, name)
}

// GetChannel returns the channel called name.
func (db *DB) GetChannel(ctx context.Context, name string) (NixChannel, error) {
	c, err := scanChannel(db.pool.QueryRow(ctx, channelSelect+` WHERE c.name = $1`, name))
	if err != nil {
		return NixChannel{}, fmt.Errorf("get channel %q: %w", name, mapErr(err))
	}
	return c, nil
}

// ListChannels returns a page of the channels by name, and their number; jobsetID
// non-zero keeps those following that jobset.
func (db *DB) ListChannels(ctx context.Context, jobsetID int64, page Page) ([]NixChannel, int64, error) {
	var total int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM channels WHERE $1 = 0 OR jobset_id = $1`, jobsetID).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count channels: %w", err)
	}
	rows, err := db.pool.Query(ctx, channelSelect+` WHERE $1 = 0 OR c.jobset_id = $1 ORDER BY c.name LIMIT $2 OFFSET $3`,
		jobsetID, page.Limit, page.Offset)
	if err != nil {
		return nil, 0, fmt.Errorf("list channels: %w", err)
	}
	cs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (NixChannel, error) { return scanChannel(r) })
	if err != nil {
		return nil, 0, fmt.Errorf("list channels: %w", err)
	}
	return cs, total, nil
}

// DeleteChannel removes the channel called name; ErrNotFound when there is none.
func (db *DB) DeleteChannel(ctx context.Context, name string) error {
	tag, err := db.pool.Exec(ctx, `DELETE FROM channels WHERE name = $1`, name)
	if err != nil {
		return fmt.Errorf("delete channel %q: %w", name, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("delete channel %q: %w", name, ErrNotFound)
	}
	return nil
}

// PromoteChannel points the channel at evaluation evalID by hand, whatever its builds'
// results; the evaluation must be a finished evaluation of the channel's jobset
// (ErrNotFound otherwise).
func (db *DB) PromoteChannel(ctx context.Context, name string, evalID int64) error {
	tag, err := db.pool.Exec(ctx, `UPDATE channels c SET current_evaluation_id = e.id, updated_at = now()
		FROM evaluations e WHERE c.name = $1 AND e.id = $2 AND e.jobset_id = c.jobset_id AND e.status = 'succeeded'`,
		name, evalID)
	if err != nil {
		return fmt.Errorf("promote channel %q to evaluation %d: %w", name, evalID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("promote channel %q: evaluation %d of its jobset: %w", name, evalID, ErrNotFound)
	}
	return nil
}

// evalBuilds lists the builds (b) of evaluation e, those it reused too: the one
// place channels say which builds an evaluation has.
const evalBuilds = `SELECT 1 FROM evaluation_builds eb JOIN builds b ON b.id = eb.build_id WHERE eb.evaluation_id = e.id`

// AdvanceChannels moves every channel to the newest evaluation of its jobset, newer
// than the one it serves, that succeeded and whose builds all succeeded (at least
// one), or whose aggregate job's build succeeded. It returns how many moved.
//
// It runs after every burst of step results. The status is an argument, not a
// literal, for a reason: pgx sends a statement without arguments by the simple
// protocol, which PostgreSQL plans on every call (some 5 ms for this one on a small
// machine, against a fraction of a millisecond to run it), where a prepared statement
// is soon planned once per connection.
func (db *DB) AdvanceChannels(ctx context.Context) (int64, error) {
	tag, err := db.pool.Exec(ctx, `UPDATE channels c SET current_evaluation_id = n.id, updated_at = now()
		FROM (SELECT c2.id AS channel_id, (SELECT e.id FROM evaluations e
				WHERE e.jobset_id = c2.jobset_id AND e.status = $1 AND e.id > coalesce(c2.current_evaluation_id, 0)
				AND CASE WHEN c2.aggregate = '' THEN
					EXISTS (`+evalBuilds+`)
					AND NOT EXISTS (`+evalBuilds+` AND b.status <> $1)
				ELSE EXISTS (`+evalBuilds+` AND b.job = c2.aggregate AND b.status = $1)
				END
				ORDER BY e.id DESC LIMIT 1) AS id
			FROM channels c2) n
		WHERE n.channel_id = c.id AND n.id IS NOT NULL`, "succeeded")
	if err != nil {
		return 0, fmt.Errorf("advance channels: %w", err)
	}
	return tag.RowsAffected(), nil
}

// EvaluationOutputPaths returns the output paths of an evaluation's builds, sorted.
func (db *DB) EvaluationOutputPaths(ctx context.Context, evalID int64) ([]string, error) {
	rows, err := db.pool.Query(ctx, `SELECT DISTINCT o.path FROM build_outputs o
		JOIN evaluations e ON e.id = $1 WHERE EXISTS (`+evalBuilds+` AND b.id = o.build_id) ORDER BY o.path`, evalID)
	if err != nil {
		return nil, fmt.Errorf("output paths of evaluation %d: %w", evalID, err)
	}
	paths, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("output paths of evaluation %d: %w", evalID, err)
	}
	return paths, nil
}
