package storage

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// inputsBuilt is when the last input of step s finished building (NULL: none).
const inputsBuilt = `(SELECT max(d.finished_at) FROM step_edges e JOIN steps d ON d.id = e.depends_on WHERE e.step_id = s.id)`

// runnableSince is when a queued step s became runnable: queued (created, or
// restarted, which resets created_at), its retry backoff over, its last input built.
// ClaimSteps computes the same from the not_before it clears.
const runnableSince = `greatest(s.created_at, s.not_before, ` + inputsBuilt + `)`

// QueueGroup is the runnable steps of one system and feature set.
type QueueGroup struct {
	System string
	// Features are the required features, sorted and joined by commas ("" for none).
	Features string
	Runnable int64
	// OldestAge is how long the longest-waiting of them has been runnable.
	OldestAge time.Duration
}

// RunnableQueue counts the runnable steps (queued, backoff over, every input built,
// no output known to fail) per system and feature set, with the age of the oldest.
// One statement over the steps_runnable partial index; each queued step costs a
// probe of step_edges and step_outputs.
func (db *DB) RunnableQueue(ctx context.Context) ([]QueueGroup, error) {
	rows, err := db.pool.Query(ctx, `SELECT s.system, array_to_string(ARRAY(SELECT unnest(s.required_features) ORDER BY 1), ','),
			count(*), extract(epoch FROM now() - min(`+runnableSince+`))::float8
		FROM steps s
		WHERE s.status = 'queued' AND (s.not_before IS NULL OR s.not_before <= now())
			AND NOT EXISTS (SELECT 1 FROM step_edges e JOIN steps d ON d.id = e.depends_on
				WHERE e.step_id = s.id AND d.status <> 'succeeded')
			AND NOT EXISTS (SELECT 1 FROM step_outputs o JOIN failed_paths f ON f.path = o.path WHERE o.step_id = s.id)
		GROUP BY 1, 2 ORDER BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("read the runnable queue: %w", err)
	}
	groups, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (QueueGroup, error) {
		var g QueueGroup
		var age float64
		err := r.Scan(&g.System, &g.Features, &g.Runnable, &age)
		g.OldestAge = time.Duration(max(age, 0) * float64(time.Second))
		return g, err
	})
	if err != nil {
		return nil, fmt.Errorf("read the runnable queue: %w", err)
	}
	return groups, nil
}

// SystemSlots is the connected build capacity for one system.
type SystemSlots struct {
	System string
	// Sessions are the agents connected (and seen within PresenceWindow) that
	// advertise the system, whatever their roles.
	Sessions int64
	// Slots are the build slots (max_jobs) of those that take builds now (a build
	// role, enabled, not draining, not revoked); Free is Slots less the steps they run.
	Slots, Free int64
}

// AgentSlotsBySystem reads the connected agents' sessions and build slots per system
// in one statement (agents are few; running steps by the steps_running index).
func (db *DB) AgentSlotsBySystem(ctx context.Context) ([]SystemSlots, error) {
	rows, err := db.pool.Query(ctx, `SELECT sys, count(*),
			coalesce(sum(a.max_jobs) FILTER (WHERE taking), 0),
			coalesce(sum(greatest(a.max_jobs - r.n, 0)) FILTER (WHERE taking), 0)
		FROM agents a
		CROSS JOIN LATERAL unnest(a.systems) sys
		CROSS JOIN LATERAL (SELECT count(*) AS n FROM steps WHERE status = 'running' AND agent_id = a.id) r
		CROSS JOIN LATERAL (SELECT a.enabled AND NOT a.draining AND NOT a.self_draining AND 'build' = ANY(a.roles)
			AND (a.disabled_until IS NULL OR a.disabled_until <= now()) AS taking) t
		WHERE a.connected AND a.revoked_at IS NULL AND a.last_seen_at > now() - make_interval(secs => $1)
		GROUP BY sys ORDER BY sys`, presenceSecs)
	if err != nil {
		return nil, fmt.Errorf("read agent slots: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (SystemSlots, error) {
		var s SystemSlots
		return s, r.Scan(&s.System, &s.Sessions, &s.Slots, &s.Free)
	})
	if err != nil {
		return nil, fmt.Errorf("read agent slots: %w", err)
	}
	return out, nil
}

// StepSystem is a step's system (the label its duration is observed under).
func (db *DB) StepSystem(ctx context.Context, id int64) (string, error) {
	var system string
	if err := db.pool.QueryRow(ctx, `SELECT system FROM steps WHERE id = $1`, id).Scan(&system); err != nil {
		return "", fmt.Errorf("read the system of step %d: %w", id, err)
	}
	return system, nil
}
