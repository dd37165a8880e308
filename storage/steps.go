package storage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
)

// StatusCodes are the numbers of the finished statuses. They are Hydra's numbers, so
// what reads Hydra's status codes reads FC's; the API shows the names.
var StatusCodes = map[string]int{
	"succeeded": 0, "failed": 1, "dependency_failed": 2, "aborted": 3, "cancelled": 4,
	"failed_with_output": 6, "timed_out": 7, "cached_failure": 8, "unsupported_system": 9,
	"log_limit_exceeded": 10, "output_limit_exceeded": 11, "not_deterministic": 12,
}

// ownFailures are the statuses in which a step's own build failed: its outputs are
// remembered as failed, and a new build of it is a cached failure.
const ownFailures = `('failed', 'timed_out', 'failed_with_output', 'log_limit_exceeded', 'output_limit_exceeded', 'cached_failure')`

// restartable are the statuses a restart queues again.
const restartable = `('failed', 'timed_out', 'failed_with_output', 'log_limit_exceeded', 'output_limit_exceeded',
	'cached_failure', 'dependency_failed', 'aborted', 'cancelled', 'unsupported_system')`

// AgentSlots says what an agent can take: ClaimSteps gives it only steps it can build.
type AgentSlots struct {
	AgentID           int64
	Systems           []string
	Features          []string
	MandatoryFeatures []string
	N                 int
	TTL               time.Duration
}

// ClaimedStep is a step leased to an agent, with what it needs to build it.
type ClaimedStep struct {
	Lease
	DrvPath          string
	Outputs          map[string]string
	TimeoutSecs      *int
	MaxSilentSecs    *int
	RequiredFeatures []string
	System           string
	// Waited is how long the step had been runnable when it was claimed.
	Waited time.Duration
}

// claimRunnable is a queued step the agent ($2 systems, $3 features, $4 mandatory
// features) can build now: inputs built, no output failed before. Blocked steps
// (blocked.go) are not read at all (steps_ready); the inputs are checked anyway.
const claimRunnable = `s.status = 'queued' AND NOT s.blocked AND (s.not_before IS NULL OR s.not_before <= now())
	-- (one coalesce: the planner estimates each array test at 0.5% of the rows, so for
	-- a claim of a few hundred steps it would sort the whole queue rather than read
	-- steps_ready in order and stop)
	AND coalesce(s.system = ANY($2::text[]) AND s.required_features <@ $3::text[] AND $4::text[] <@ s.required_features, false)
	AND NOT EXISTS (SELECT 1 FROM step_edges e JOIN steps d ON d.id = e.depends_on
		WHERE e.step_id = s.id AND d.status <> 'succeeded')
	AND NOT EXISTS (SELECT 1 FROM step_outputs o JOIN failed_paths f ON f.path = o.path WHERE o.step_id = s.id)`

// claimCandidates is how many steps of each jobset a claim of n looks at: n, and
// room for those other coordinators' claims hold at the same moment.
func claimCandidates(n int) int { return 2*n + 32 }

// ClaimSteps leases up to N runnable steps the agent can build, in scheduling order
// (see ClaimGroup), with the jobsets' share use as it is now. The builds of a
// claimed step become running.
func (db *DB) ClaimSteps(ctx context.Context, a AgentSlots) ([]ClaimedStep, error) {
	if a.N <= 0 {
		return nil, nil
	}
	use, err := db.ShareUse(ctx)
	if err != nil {
		return nil, fmt.Errorf("claim steps for agent %d: %w", a.AgentID, err)
	}
	g := ClaimGroup{Systems: a.Systems, Features: a.Features, MandatoryFeatures: a.MandatoryFeatures,
		Slots: slices.Repeat([]int64{a.AgentID}, a.N), TTL: a.TTL, ShareUse: use}
	out, err := db.ClaimForGroup(ctx, g)
	if err != nil {
		return nil, fmt.Errorf("claim steps for agent %d: %w", a.AgentID, err)
	}
	return out, nil
}

// ShareUse is each competing jobset's (one with queued steps) use of its shares:
// build seconds in the last 24 h ÷ scheduling_shares. It sums a day of builds, so a
// scheduler reads it once for many claims.
func (db *DB) ShareUse(ctx context.Context) (map[int64]float64, error) {
	rows, err := db.pool.Query(ctx, `SELECT j.id, coalesce(sum(extract(epoch FROM b.finished_at - b.started_at)), 0)::float8 / j.scheduling_shares
		FROM jobsets j LEFT JOIN builds b ON b.jobset_id = j.id AND b.finished_at > now() - interval '24 hours'
			AND b.started_at IS NOT NULL
		WHERE EXISTS (SELECT 1 FROM steps q WHERE q.jobset_id = j.id AND q.status = 'queued')
		GROUP BY j.id`)
	if err != nil {
		return nil, fmt.Errorf("share use: %w", err)
	}
	use := map[int64]float64{}
	for rows.Next() {
		var id int64
		var u float64
		if err := rows.Scan(&id, &u); err != nil {
			return nil, fmt.Errorf("share use: %w", err)
		}
		use[id] = u
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("share use: %w", err)
	}
	return use, nil
}

// ClaimGroup is one claim for several agents that can build the same steps (the same
// systems, features and mandatory features): Slots names one agent per free slot, in
// the order the slots are filled (the first claimed step goes to Slots[0]).
type ClaimGroup struct {
	Systems           []string
	Features          []string
	MandatoryFeatures []string
	Slots             []int64
	TTL               time.Duration
	// ShareUse is each competing jobset's share use (ShareUse); a jobset missing from
	// it counts as having used nothing.
	ShareUse map[int64]float64
}

// claimGroup leases, in one statement, as many runnable steps as g has slots, in
// scheduling order: bumped priority, the jobset's share use, schedulingPriority,
// critical path, age. Atomic across coordinators (SKIP LOCKED). An agent backed off
// after infrastructure failures takes nothing (its slots are skipped).
const claimGroup = `WITH share AS (
		SELECT j.id, coalesce(u.used, 0) AS used
		FROM jobsets j LEFT JOIN unnest($7::bigint[], $8::float8[]) u(id, used) ON u.id = j.id
		-- only jobsets competing now (a probe of steps_claim each)
		WHERE EXISTS (SELECT 1 FROM steps q WHERE q.jobset_id = j.id AND q.status = 'queued')),
	-- Each jobset's first runnable steps in its own order (steps_ready), a few more than
	-- wanted: rows another claim holds are skipped below. Merged below in the whole
	-- order, it is the same as ordering every queued step. Materialized: inlined, the
	-- planner may run it once per queued step (it did for steps inserted since the last
	-- ANALYZE, whose count it takes for 1: 80 ms a claim for a queue of 200).
	cand AS MATERIALIZED (
		SELECT c.*, share.used FROM share CROSS JOIN LATERAL (
			SELECT s.id, s.not_before, s.global_priority, s.scheduling_priority, s.critical_path FROM steps s
			WHERE s.jobset_id = share.id AND ` + claimRunnable + `
			ORDER BY s.global_priority DESC, s.scheduling_priority DESC, s.critical_path DESC, s.id LIMIT $6) c
		UNION ALL
		SELECT c.*, 0 FROM (
			SELECT s.id, s.not_before, s.global_priority, s.scheduling_priority, s.critical_path FROM steps s
			WHERE s.jobset_id IS NULL AND ` + claimRunnable + `
			ORDER BY s.global_priority DESC, s.scheduling_priority DESC, s.critical_path DESC, s.id LIMIT $6) c),
	-- The slots of agents not backed off, renumbered in order.
	slot AS (
		SELECT x.agent_id, row_number() OVER (ORDER BY x.ord) AS nr
		FROM unnest($1::bigint[]) WITH ORDINALITY x(agent_id, ord) JOIN agents ag ON ag.id = x.agent_id
		WHERE ag.disabled_until IS NULL OR ag.disabled_until <= now()),
	pick AS (
		SELECT s.id, cand.not_before, cand.global_priority, cand.used, cand.scheduling_priority, cand.critical_path
		FROM cand JOIN steps s ON s.id = cand.id
		WHERE s.status = 'queued'
		ORDER BY cand.global_priority DESC, cand.used, cand.scheduling_priority DESC, cand.critical_path DESC, cand.id
		LIMIT (SELECT count(*) FROM slot) FOR UPDATE OF s SKIP LOCKED),
	-- The picked steps in scheduling order, the first to the first slot.
	numbered AS (
		SELECT pick.id, pick.not_before, row_number() OVER (
			ORDER BY pick.global_priority DESC, pick.used, pick.scheduling_priority DESC, pick.critical_path DESC, pick.id) AS nr
		FROM pick)
	UPDATE steps s SET status = 'running', agent_id = slot.agent_id, lease_epoch = s.lease_epoch + 1,
		lease_expires_at = now() + make_interval(secs => $5), attempts = s.attempts + 1, started_at = now(),
		not_before = NULL
	FROM numbered JOIN slot ON slot.nr = numbered.nr WHERE s.id = numbered.id
	RETURNING s.id, s.agent_id, s.lease_epoch, s.attempts, s.drv_path, s.timeout_seconds, s.max_silent_seconds, s.required_features,
		s.system, extract(epoch FROM now() - greatest(s.created_at, numbered.not_before, ` + inputsBuilt + `))::float8`

// ClaimForGroup leases up to len(g.Slots) runnable steps that g's agents can build,
// in one statement (claimGroup): each claimed step is leased to the agent of its
// slot. The builds of a claimed step become running.
func (db *DB) ClaimForGroup(ctx context.Context, g ClaimGroup) ([]ClaimedStep, error) {
	if len(g.Slots) == 0 {
		return nil, nil
	}
	systems, features, mandatory := nonNil(g.Systems), nonNil(g.Features), nonNil(g.MandatoryFeatures)
	jobsets, used := make([]int64, 0, len(g.ShareUse)), make([]float64, 0, len(g.ShareUse))
	for id, u := range g.ShareUse {
		jobsets, used = append(jobsets, id), append(used, u)
	}
	var out []ClaimedStep
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, claimGroup, g.Slots, systems, features, mandatory, g.TTL.Seconds(),
			claimCandidates(len(g.Slots)), jobsets, used)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (ClaimedStep, error) {
			c := ClaimedStep{Lease: Lease{Kind: LeaseStep}}
			var waited float64
			err := r.Scan(&c.ID, &c.AgentID, &c.Epoch, &c.Attempt, &c.DrvPath, &c.TimeoutSecs, &c.MaxSilentSecs,
				&c.RequiredFeatures, &c.System, &waited)
			c.Waited = time.Duration(max(waited, 0) * float64(time.Second))
			return c, err
		})
		if err != nil || len(out) == 0 {
			return err
		}
		return claimedBuildsAndOutputs(ctx, tx, out)
	})
	if err != nil {
		return nil, fmt.Errorf("claim steps for %d slots: %w", len(g.Slots), err)
	}
	return out, nil
}

// claimedBuildsAndOutputs marks the builds of claimed steps running and fills in
// each step's outputs.
func claimedBuildsAndOutputs(ctx context.Context, tx pgx.Tx, out []ClaimedStep) error {
	ids := make([]int64, len(out))
	for i, c := range out {
		ids[i] = c.ID
	}
	if _, err := tx.Exec(ctx, `UPDATE builds SET status = 'running', started_at = coalesce(started_at, now())
		WHERE step_id = ANY($1) AND status = 'queued'`, ids); err != nil {
		return err
	}
	outs, err := tx.Query(ctx, `SELECT step_id, name, path FROM step_outputs WHERE step_id = ANY($1)`, ids)
	if err != nil {
		return err
	}
	byID := make(map[int64]map[string]string, len(out))
	for outs.Next() {
		var id int64
		var name, path string
		if err := outs.Scan(&id, &name, &path); err != nil {
			return err
		}
		if byID[id] == nil {
			byID[id] = map[string]string{}
		}
		byID[id][name] = path
	}
	if err := outs.Err(); err != nil {
		return err
	}
	for i := range out {
		out[i].Outputs = byID[out[i].ID]
	}
	return nil
}

// RetryStep requeues a step after an infrastructure failure the agent reported
// (counting the attempt, backing off); at max_attempts it ends aborted.
func (db *DB) RetryStep(ctx context.Context, l Lease, msg string, cfg LeaseConfig) error {
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		var status string
		err := tx.QueryRow(ctx, `UPDATE steps SET
			status = CASE WHEN attempts >= $5 THEN 'aborted' ELSE 'queued' END,
			status_code = CASE WHEN attempts >= $5 THEN 3 END,
			error = CASE WHEN attempts >= $5 THEN $4 || ' (after ' || attempts || ' attempts)' ELSE $4 END,
			finished_at = CASE WHEN attempts >= $5 THEN now() END,
			not_before = now() + make_interval(secs => $6 * power(2, greatest(attempts - 1, 0))),
			agent_id = CASE WHEN attempts >= $5 THEN agent_id END, lease_expires_at = NULL
			WHERE id = $1 AND lease_epoch = $2 AND agent_id = $3 AND status = 'running'
			RETURNING status`, l.ID, l.Epoch, l.AgentID, msg, cfg.MaxAttempts, cfg.Backoff.Seconds()).Scan(&status)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("step %d epoch %d: %w", l.ID, l.Epoch, ErrStaleLease)
		}
		if err != nil {
			return err
		}
		if err := agentFailed(ctx, tx, cfg.Health, msg, l.AgentID); err != nil {
			return err
		}
		return afterRequeueOrAbort(ctx, tx, []int64{l.ID})
	})
	if err != nil {
		return fmt.Errorf("retry step %d: %w", l.ID, err)
	}
	return nil
}

// afterRequeueOrAbort brings the builds of steps that were requeued or aborted in line.
func afterRequeueOrAbort(ctx context.Context, tx pgx.Tx, ids []int64) error {
	if _, err := tx.Exec(ctx, `UPDATE builds b SET status = 'queued' FROM steps s
		WHERE s.id = b.step_id AND s.id = ANY($1) AND s.status = 'queued' AND b.status = 'running'`, ids); err != nil {
		return err
	}
	rows, err := tx.Query(ctx, `SELECT id FROM steps WHERE id = ANY($1) AND status = 'aborted'`, ids)
	if err != nil {
		return err
	}
	aborted, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return err
	}
	for _, id := range aborted {
		if err := finishBuildsOfStep(ctx, tx, id, "aborted", 3, ""); err != nil {
			return err
		}
		if err := failStepTx(ctx, tx, id); err != nil {
			return err
		}
	}
	if err := finishAggregates(ctx, tx, 0); err != nil {
		return err
	}
	return notifySteps(ctx, tx)
}

// RescueSteps requeues steps whose lease expired (backoff, attempt counted) and
// aborts those that used up max_attempts, with their builds.
func (db *DB) RescueSteps(ctx context.Context, cfg LeaseConfig) (requeued, aborted int, err error) {
	err = pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		// The agent that held each lease is read before the update clears it: losing
		// a lease is a failure of that agent.
		rows, err := tx.Query(ctx, `UPDATE steps s SET
			status = CASE WHEN s.attempts >= $1 THEN 'aborted' ELSE 'queued' END,
			status_code = CASE WHEN s.attempts >= $1 THEN 3 END,
			error = CASE WHEN s.attempts >= $1 THEN 'aborted: the agent was lost ' || s.attempts || ' times (max_attempts)' ELSE s.error END,
			finished_at = CASE WHEN s.attempts >= $1 THEN now() END,
			not_before = now() + make_interval(secs => $2 * power(2, greatest(s.attempts - 1, 0))),
			agent_id = CASE WHEN s.attempts >= $1 THEN s.agent_id END, lease_expires_at = NULL
			FROM (SELECT id, agent_id FROM steps WHERE status = 'running' AND lease_expires_at < now() FOR UPDATE) old
			WHERE s.id = old.id
			RETURNING s.id, s.status, coalesce(old.agent_id, 0)`, cfg.MaxAttempts, cfg.Backoff.Seconds())
		if err != nil {
			return err
		}
		var ids, lost []int64
		for rows.Next() {
			var id, agent int64
			var status string
			if err := rows.Scan(&id, &status, &agent); err != nil {
				return err
			}
			ids, lost = append(ids, id), append(lost, agent)
			if status == "aborted" {
				aborted++
			} else {
				requeued++
			}
		}
		if err := rows.Err(); err != nil || len(ids) == 0 {
			return err
		}
		if err := agentFailed(ctx, tx, cfg.Health, "the lease of a step expired (the agent was lost)", lost...); err != nil {
			return err
		}
		return afterRequeueOrAbort(ctx, tx, ids)
	})
	if err != nil {
		return 0, 0, fmt.Errorf("rescue steps: %w", err)
	}
	return requeued, aborted, nil
}

// endQueuedSteps ends queued steps with a status that propagates like a failure.
// stmt is one of the constant statements below: it sets status ($1), status_code
// ($2) and error ($3) on the queued steps it chooses (with args from $4 on) and
// returns their ids.
func (db *DB) endQueuedSteps(ctx context.Context, status, errMsg, stmt string, args ...any) (int, error) {
	code := StatusCodes[status]
	n := 0
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, stmt, append([]any{status, code, errMsg}, args...)...)
		if err != nil {
			return err
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil || len(ids) == 0 {
			return err
		}
		n = len(ids)
		for _, id := range ids {
			if err := finishBuildsOfStep(ctx, tx, id, status, code, ""); err != nil {
				return err
			}
			if err := failStepTx(ctx, tx, id); err != nil {
				return err
			}
		}
		if err := finishAggregates(ctx, tx, 0); err != nil {
			return err
		}
		return notifySteps(ctx, tx)
	})
	if err != nil {
		return 0, fmt.Errorf("end %s steps: %w", status, err)
	}
	return n, nil
}

const (
	// endCachedFailures chooses the queued steps with an output that failed before.
	endCachedFailures = `UPDATE steps s SET status = $1, status_code = $2, error = $3, finished_at = now()
		WHERE s.status = 'queued'
			AND EXISTS (SELECT 1 FROM step_outputs o JOIN failed_paths f ON f.path = o.path WHERE o.step_id = s.id)
		RETURNING s.id`
	// endUnsupported chooses the queued steps older than $4 seconds that no enabled
	// build agent, connected or seen within $4 seconds, has the system and features for.
	endUnsupported = `UPDATE steps s SET status = $1, status_code = $2, error = $3, finished_at = now()
		WHERE s.status = 'queued' AND s.created_at < now() - make_interval(secs => $4)
			AND (s.system, s.required_features) IN (
				-- each system and feature set once, not every queued step against every agent
				SELECT q.system, q.required_features FROM (SELECT DISTINCT system, required_features FROM steps
					WHERE status = 'queued' AND created_at < now() - make_interval(secs => $4)) q
				WHERE NOT EXISTS (SELECT 1 FROM agents a WHERE a.revoked_at IS NULL AND a.enabled AND 'build' = ANY(a.roles)
					AND (a.connected OR a.last_seen_at > now() - make_interval(secs => $4))
					AND q.system = ANY(a.systems) AND q.required_features <@ a.features AND a.mandatory_features <@ q.required_features))
		RETURNING s.id`
)

// FailCachedSteps ends queued steps with an output that failed before (and was not
// restarted since) as cached_failure.
func (db *DB) FailCachedSteps(ctx context.Context) (int, error) {
	return db.endQueuedSteps(ctx, "cached_failure", "an output of this derivation failed to build before; restart to retry",
		endCachedFailures)
}

// EndUnsupportedSteps ends queued steps that no agent could build for wait: no
// enabled build agent, connected or seen within wait, has the system and features.
func (db *DB) EndUnsupportedSteps(ctx context.Context, wait time.Duration) (int, error) {
	return db.endQueuedSteps(ctx, "unsupported_system", "no agent can build this system and feature set",
		endUnsupported, wait.Seconds())
}

// QueuedSteps reports whether any step is queued (so the scheduler need not look at
// agents when nothing is).
func (db *DB) QueuedSteps(ctx context.Context) (bool, error) {
	var ok bool
	err := db.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM steps WHERE status = 'queued')`).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("queued steps: %w", err)
	}
	return ok, nil
}

// QueuedStepsUpTo counts the queued steps, stopping at limit (an index-only count of
// at most limit entries, however long the queue).
func (db *DB) QueuedStepsUpTo(ctx context.Context, limit int) (int, error) {
	var n int
	err := db.pool.QueryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM steps WHERE status = 'queued' LIMIT $1) q`, limit).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("queued steps: %w", err)
	}
	return n, nil
}

// RunningSteps lists the steps an agent holds a lease on.
func (db *DB) RunningSteps(ctx context.Context, agentID int64) ([]Lease, error) {
	rows, err := db.pool.Query(ctx, `SELECT id, lease_epoch, attempts FROM steps WHERE agent_id = $1 AND status = 'running'`, agentID)
	if err != nil {
		return nil, fmt.Errorf("running steps of agent %d: %w", agentID, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Lease, error) {
		l := Lease{Kind: LeaseStep, AgentID: agentID}
		return l, r.Scan(&l.ID, &l.Epoch, &l.Attempt)
	})
	if err != nil {
		return nil, fmt.Errorf("running steps of agent %d: %w", agentID, err)
	}
	return out, nil
}

// RunningStepsByAgent counts the steps each agent holds, across coordinators.
func (db *DB) RunningStepsByAgent(ctx context.Context) (map[int64]int, error) {
	rows, err := db.pool.Query(ctx, `SELECT agent_id, count(*) FROM steps WHERE status = 'running' AND agent_id IS NOT NULL GROUP BY agent_id`)
	if err != nil {
		return nil, fmt.Errorf("running steps: %w", err)
	}
	out := map[int64]int{}
	for rows.Next() {
		var id int64
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			return nil, err
		}
		out[id] = n
	}
	return out, rows.Err()
}

// ReleaseStep gives a claimed step back without counting an attempt (the agent
// declined it before starting); its builds are queued again.
func (db *DB) ReleaseStep(ctx context.Context, l Lease) error {
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE steps SET status = 'queued', agent_id = NULL, lease_expires_at = NULL,
			attempts = greatest(attempts - 1, 0), started_at = NULL WHERE id = $1 AND lease_epoch = $2 AND status = 'running'`, l.ID, l.Epoch)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE builds SET status = 'queued' WHERE step_id = $1 AND status = 'running'`, l.ID)
		return err
	})
	if err != nil {
		return fmt.Errorf("release step %d: %w", l.ID, err)
	}
	return nil
}

// NextRetry is when the earliest queued step held back by a retry backoff becomes
// runnable, or an agent's backoff after infrastructure failures ends, whichever is
// first (ok false when neither is pending).
func (db *DB) NextRetry(ctx context.Context) (time.Time, bool, error) {
	var at *time.Time
	if err := db.pool.QueryRow(ctx, `SELECT least(
			(SELECT min(not_before) FROM steps WHERE status = 'queued' AND not_before > now()),
			(SELECT min(disabled_until) FROM agents WHERE disabled_until > now() AND revoked_at IS NULL))`).Scan(&at); err != nil {
		return time.Time{}, false, fmt.Errorf("next retry: %w", err)
	}
	if at == nil {
		return time.Time{}, false, nil
	}
	return *at, true, nil
}
