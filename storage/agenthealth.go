package storage

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// AgentHealth is the [queue_runner] builder-health settings: an agent whose steps
// end in this many infrastructure failures in a row takes no new step for Backoff,
// doubled for each further failure up to MaxBackoff (Hydra's machine disabling).
type AgentHealth struct {
	Threshold  int // 0: never back an agent off
	Backoff    time.Duration
	MaxBackoff time.Duration
	// Uncounted: the work was stopped on purpose (released by an agent shutting
	// down), which is not a failure of the agent.
	Uncounted bool
}

// maxDoublings bounds the exponent: the cap applies long before, and 2^30 keeps
// the arithmetic in range.
const maxDoublings = 30

// BackoffAfter is how long an agent with failures consecutive infrastructure
// failures is kept from new steps: nothing below the threshold, then Backoff
// doubling with each failure beyond it, at most MaxBackoff.
func (h AgentHealth) BackoffAfter(failures int) time.Duration {
	if h.Threshold <= 0 || failures < h.Threshold || h.Backoff <= 0 {
		return 0
	}
	d := h.Backoff
	for i := 0; i < min(failures-h.Threshold, maxDoublings); i++ {
		d *= 2
		if h.MaxBackoff > 0 && d >= h.MaxBackoff {
			return h.MaxBackoff
		}
	}
	if h.MaxBackoff > 0 && d > h.MaxBackoff {
		return h.MaxBackoff
	}
	return d
}

// agentFailed counts one infrastructure failure of each agent (an agent listed
// twice counts twice) and backs off those past the threshold, in tx: with the
// statement that requeued or aborted their steps, so a stale report counts nothing.
func agentFailed(ctx context.Context, tx pgx.Tx, h AgentHealth, msg string, agents ...int64) error {
	if h.Uncounted {
		return nil
	}
	for _, id := range agents {
		if id == 0 {
			continue
		}
		var n int
		err := tx.QueryRow(ctx, `UPDATE agents SET consecutive_failures = consecutive_failures + 1, last_failure = $2
			WHERE id = $1 RETURNING consecutive_failures`, id, msg).Scan(&n)
		if err != nil {
			return fmt.Errorf("count a failure of agent %d: %w", id, err)
		}
		if d := h.BackoffAfter(n); d > 0 {
			if _, err := tx.Exec(ctx, `UPDATE agents SET disabled_until = now() + make_interval(secs => $2) WHERE id = $1`,
				id, d.Seconds()); err != nil {
				return fmt.Errorf("back off agent %d: %w", id, err)
			}
		}
	}
	return nil
}

// agentSucceeded resets an agent's failure count after a step whose outputs it
// stored: its Nix, store and uploads work.
func agentSucceeded(ctx context.Context, tx pgx.Tx, agentID int64) error {
	if _, err := tx.Exec(ctx, `UPDATE agents SET consecutive_failures = 0, disabled_until = NULL
		WHERE id = $1 AND (consecutive_failures <> 0 OR disabled_until IS NOT NULL)`, agentID); err != nil {
		return fmt.Errorf("reset the failures of agent %d: %w", agentID, err)
	}
	return nil
}

// ResetAgentHealth forgets an agent's failures and backoff (an admin enabled it).
func (db *DB) ResetAgentHealth(ctx context.Context, id int64) error {
	if _, err := db.pool.Exec(ctx, `UPDATE agents SET consecutive_failures = 0, disabled_until = NULL, last_failure = ''
		WHERE id = $1`, id); err != nil {
		return fmt.Errorf("reset the failures of agent %d: %w", id, err)
	}
	return nil
}
