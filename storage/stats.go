package storage

import (
	"context"
	"fmt"
)

// Counts are the figures /metrics exports as gauges.
type Counts struct {
	Builds, BuildsPending, BuildsRunning, BuildsCompleted, BuildsFailed int64
	Projects, Evaluations, Channels, AgentsConnected                    int64
}

// Counts reads every gauge in one round trip.
func (db *DB) Counts(ctx context.Context) (Counts, error) {
	var c Counts
	err := db.pool.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM builds),
		(SELECT count(*) FROM builds WHERE status = 'queued'),
		(SELECT count(*) FROM builds WHERE status = 'running'),
		(SELECT count(*) FROM builds WHERE status NOT IN ('queued', 'running')),
		(SELECT count(*) FROM builds WHERE status NOT IN ('queued', 'running', 'succeeded')),
		(SELECT count(*) FROM projects),
		(SELECT count(*) FROM evaluations),
		(SELECT count(*) FROM channels),
		(SELECT count(*) FROM agents WHERE connected AND revoked_at IS NULL
		 AND last_seen_at > now() - make_interval(secs => $1))`, presenceSecs).Scan(
		&c.Builds, &c.BuildsPending, &c.BuildsRunning, &c.BuildsCompleted, &c.BuildsFailed,
		&c.Projects, &c.Evaluations, &c.Channels, &c.AgentsConnected)
	if err != nil {
		return Counts{}, fmt.Errorf("read counts: %w", err)
	}
	return c, nil
}
