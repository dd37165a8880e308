package storage

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// The dashboard's queue and agents pages: a fixed number of queries per page.

// QueueStep is a queued or running step as the queue page shows it.
type QueueStep struct {
	ID                 int64
	DrvPath            string
	System             string
	Status             string
	GlobalPriority     int
	SchedulingPriority int
	CriticalPath       int
	Attempts           int
	AgentID            *int64
	AgentName          string
	CreatedAt          time.Time
	StartedAt          *time.Time
	NotBefore          *time.Time // a retry waits until then
	// WaitingFor counts its dependencies not built yet; Dependents the steps that
	// need it directly.
	WaitingFor int
	Dependents int
	// Builds counts the builds of its own derivation; Build is one build waiting on
	// it: its newest own one, else (Via) the build of a step that needs it.
	Builds int
	Build  *QueueBuild
	Via    bool
}

// QueueBuild is a build waiting on a step.
type QueueBuild struct {
	ID      int64
	Job     string
	Project string
	Jobset  string
}

// QueueBySystem counts queued and running steps by system (three queries in all
// for QueuePage's page).
func (db *DB) QueueBySystem(ctx context.Context) ([]QueueSystem, error) {
	rows, err := db.pool.Query(ctx, `SELECT system, count(*) FILTER (WHERE status = 'queued'), count(*) FILTER (WHERE status = 'running')
		FROM steps WHERE status IN ('queued', 'running') GROUP BY system ORDER BY system`)
	if err != nil {
		return nil, fmt.Errorf("queue by system: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (QueueSystem, error) {
		var s QueueSystem
		return s, r.Scan(&s.System, &s.Queued, &s.Running)
	})
	if err != nil {
		return nil, fmt.Errorf("queue by system: %w", err)
	}
	return out, nil
}

// QueuePage returns a page of the queued and running steps (of system, or all when
// ""), by system, running first, then in the order the scheduler picks them (the
// fair share aside, which changes by the minute).
func (db *DB) QueuePage(ctx context.Context, system string, page Page) ([]QueueStep, error) {
	rows, err := db.pool.Query(ctx, `WITH page AS (
			SELECT * FROM steps s WHERE s.status IN ('queued', 'running') AND ($1 = '' OR s.system = $1)
			ORDER BY s.system, s.status = 'running' DESC, s.global_priority DESC, s.scheduling_priority DESC,
				s.critical_path DESC, s.id
			LIMIT $2 OFFSET $3)
		SELECT s.id, s.drv_path, s.system, s.status, s.global_priority, s.scheduling_priority, s.critical_path, s.attempts,
			s.agent_id, coalesce(a.name, ''), s.created_at, s.started_at, s.not_before,
			(SELECT count(*) FROM step_edges e JOIN steps d ON d.id = e.depends_on WHERE e.step_id = s.id AND d.status <> 'succeeded'),
			(SELECT count(*) FROM step_edges e WHERE e.depends_on = s.id),
			coalesce(b.n, 0), b.id, coalesce(b.job, ''), coalesce(b.project, ''), coalesce(b.jobset, '')
		FROM page s LEFT JOIN agents a ON a.id = s.agent_id
		LEFT JOIN LATERAL (
			SELECT b.id, b.job, p.name AS project, j.name AS jobset, count(*) OVER () AS n
			FROM builds b JOIN jobsets j ON j.id = b.jobset_id JOIN projects p ON p.id = j.project_id
			WHERE b.step_id = s.id ORDER BY b.id DESC LIMIT 1) b ON true
		ORDER BY s.system, s.status = 'running' DESC, s.global_priority DESC, s.scheduling_priority DESC,
			s.critical_path DESC, s.id`, system, page.Limit, page.Offset)
	if err != nil {
		return nil, fmt.Errorf("queue page: %w", err)
	}
	steps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (QueueStep, error) {
		var s QueueStep
		var bid *int64
		var b QueueBuild
		err := r.Scan(&s.ID, &s.DrvPath, &s.System, &s.Status, &s.GlobalPriority, &s.SchedulingPriority, &s.CriticalPath,
			&s.Attempts, &s.AgentID, &s.AgentName, &s.CreatedAt, &s.StartedAt, &s.NotBefore, &s.WaitingFor, &s.Dependents,
			&s.Builds, &bid, &b.Job, &b.Project, &b.Jobset)
		if bid != nil {
			b.ID = *bid
			s.Build = &b
		}
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("queue page: %w", err)
	}
	return steps, db.dependentBuilds(ctx, steps)
}

// dependentBuilds finds, for each step without a build of its own, a build that
// waits on it: up one path of dependents (the first unfinished one at each level)
// to the first step with a build. One path, not the whole closure: a bootstrap step
// may have the whole queue above it.
func (db *DB) dependentBuilds(ctx context.Context, steps []QueueStep) error {
	var ids []int64
	at := map[int64]int{}
	for i, s := range steps {
		if s.Build == nil && s.Dependents > 0 {
			ids = append(ids, s.ID)
			at[s.ID] = i
		}
	}
	if len(ids) == 0 {
		return nil
	}
	rows, err := db.pool.Query(ctx, `WITH RECURSIVE up(origin, step, depth) AS (
			SELECT o, o, 0 FROM unnest($1::bigint[]) o
			UNION ALL
			SELECT up.origin, nx.step_id, up.depth + 1 FROM up
			CROSS JOIN LATERAL (
				SELECT e.step_id FROM step_edges e JOIN steps d ON d.id = e.step_id WHERE e.depends_on = up.step
				ORDER BY d.status IN ('queued', 'running') DESC, e.step_id LIMIT 1) nx
			WHERE up.depth < 500 AND NOT EXISTS (SELECT 1 FROM builds b WHERE b.step_id = up.step))
		SELECT DISTINCT ON (up.origin) up.origin, b.id, b.job, p.name, j.name
		FROM up JOIN LATERAL (SELECT id, job, jobset_id FROM builds WHERE step_id = up.step ORDER BY id DESC LIMIT 1) b ON true
		JOIN jobsets j ON j.id = b.jobset_id JOIN projects p ON p.id = j.project_id
		ORDER BY up.origin, up.depth`, ids)
	if err != nil {
		return fmt.Errorf("builds waiting on queued steps: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var origin int64
		var b QueueBuild
		if err := rows.Scan(&origin, &b.ID, &b.Job, &b.Project, &b.Jobset); err != nil {
			return fmt.Errorf("builds waiting on queued steps: %w", err)
		}
		s := &steps[at[origin]]
		s.Build, s.Via = &b, true
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("builds waiting on queued steps: %w", err)
	}
	return nil
}

// AgentRow is an agent as the agents page lists it: Running counts its running
// steps, Evaluations its running evaluations.
type AgentRow struct {
	Agent
	Evaluations int
}

// AgentCounts counts the agents that are not revoked and those that are.
func (db *DB) AgentCounts(ctx context.Context) (active, revoked int64, err error) {
	err = db.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE revoked_at IS NULL), count(*) FILTER (WHERE revoked_at IS NOT NULL)
		FROM agents`).Scan(&active, &revoked)
	if err != nil {
		return 0, 0, fmt.Errorf("count agents: %w", err)
	}
	return active, revoked, nil
}

// AgentsPage returns a page of the agents that are not revoked (by name), or of the
// revoked ones (latest first), with what each runs now from one GROUP BY.
func (db *DB) AgentsPage(ctx context.Context, revoked bool, page Page) ([]AgentRow, error) {
	rows, err := db.pool.Query(ctx, `SELECT a.id, a.name, a.public_key, a.fingerprint, a.enabled, a.draining, a.self_draining,
			a.revoked_at, (a.connected AND a.revoked_at IS NULL AND a.last_seen_at > now() - make_interval(secs => $1)),
			a.coordinator, a.last_seen_at, a.systems, a.features, a.mandatory_features, a.roles, a.max_jobs,
			a.speed_factor, a.agent_version, a.nix_version, a.load1, a.free_disk_bytes, a.created_at, a.push,
			a.consecutive_failures, a.disabled_until, a.last_failure, coalesce(w.steps, 0), coalesce(w.evals, 0),
			coalesce(a.declared, '')
		FROM agents a LEFT JOIN (
			SELECT agent_id, count(*) FILTER (WHERE kind = 'step') AS steps, count(*) FILTER (WHERE kind = 'eval') AS evals
			FROM (SELECT agent_id, 'step' AS kind FROM steps WHERE status = 'running' AND agent_id IS NOT NULL
				UNION ALL SELECT agent_id, 'eval' FROM evaluations WHERE status = 'running' AND agent_id IS NOT NULL) x
			GROUP BY agent_id) w ON w.agent_id = a.id
		WHERE (a.revoked_at IS NOT NULL) = $2
		ORDER BY CASE WHEN NOT $2 THEN a.name END, a.revoked_at DESC, CASE WHEN $2 THEN -a.id ELSE a.id END
		LIMIT $3 OFFSET $4`, presenceSecs, revoked, page.Limit, page.Offset)
	if err != nil {
		return nil, fmt.Errorf("agents page: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (AgentRow, error) {
		var a AgentRow
		err := r.Scan(&a.ID, &a.Name, &a.PublicKey, &a.Fingerprint, &a.Enabled, &a.Draining, &a.SelfDraining, &a.RevokedAt,
			&a.Connected, &a.Coordinator, &a.LastSeenAt, &a.Systems, &a.Features, &a.MandatoryFeatures, &a.Roles,
			&a.MaxJobs, &a.SpeedFactor, &a.AgentVersion, &a.NixVersion, &a.Load1, &a.FreeDiskBytes, &a.CreatedAt, &a.Push,
			&a.ConsecutiveFailures, &a.DisabledUntil, &a.LastFailure, &a.Running, &a.Evaluations, &a.Declared)
		return a, err
	})
	if err != nil {
		return nil, fmt.Errorf("agents page: %w", err)
	}
	return out, nil
}
