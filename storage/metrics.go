package storage

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// inputsBuilt is when the last input of step s finished building (NULL: none). A step
// became runnable at the latest of that, its creation (or restart, which resets
// created_at) and the end of its retry backoff (not_before): RunnableQueue and
// ClaimSteps both measure from there.
const inputsBuilt = `(SELECT max(d.finished_at) FROM step_edges e JOIN steps d ON d.id = e.depends_on WHERE e.step_id = s.id)`

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
// One statement over the steps_runnable partial index: its cost grows with the queued
// steps (a probe of step_edges and step_outputs each, about 3 µs), never with the
// history. Without JIT, which would spend longer compiling than the query runs.
func (db *DB) RunnableQueue(ctx context.Context) ([]QueueGroup, error) {
	var groups []QueueGroup
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL jit = off`); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT s.system, s.required_features, count(*),
				extract(epoch FROM now() - min(greatest(s.created_at, s.not_before, dep.built)))::float8
			FROM steps s
			CROSS JOIN LATERAL (SELECT max(d.finished_at) AS built, bool_or(d.status <> 'succeeded') AS waiting
				FROM step_edges e JOIN steps d ON d.id = e.depends_on WHERE e.step_id = s.id) dep
			WHERE s.status = 'queued' AND (s.not_before IS NULL OR s.not_before <= now()) AND dep.waiting IS NOT TRUE
				AND NOT EXISTS (SELECT 1 FROM step_outputs o JOIN failed_paths f ON f.path = o.path WHERE o.step_id = s.id)
			GROUP BY 1, 2`)
		if err != nil {
			return err
		}
		groups, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (QueueGroup, error) {
			var g QueueGroup
			var features []string
			var age float64
			err := r.Scan(&g.System, &features, &g.Runnable, &age)
			g.Features = strings.Join(slices.Sorted(slices.Values(features)), ",")
			g.OldestAge = time.Duration(max(age, 0) * float64(time.Second))
			return g, err
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read the runnable queue: %w", err)
	}
	return mergeGroups(groups), nil
}

// mergeGroups joins the groups whose feature sets differ only in order.
func mergeGroups(groups []QueueGroup) []QueueGroup {
	byKey := map[[2]string]int{}
	var out []QueueGroup
	for _, g := range groups {
		k := [2]string{g.System, g.Features}
		if i, ok := byKey[k]; ok {
			out[i].Runnable += g.Runnable
			out[i].OldestAge = max(out[i].OldestAge, g.OldestAge)
			continue
		}
		byKey[k] = len(out)
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b QueueGroup) int {
		return cmp.Or(strings.Compare(a.System, b.System), strings.Compare(a.Features, b.Features))
	})
	return out
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
