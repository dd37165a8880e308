package storage

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// producerLock is the advisory lock the outbox producer holds while it turns events
// into deliveries: one coordinator at a time, so the statuses of one commit are
// decided and queued in order.
const producerLock = 0x66636f75746278 // "fcoutbx"

// EventBatch is a batch of outbox events (evaluations that started or ended, builds
// that finished or were queued again) as the producer reads them: the current state
// of what they name, inside the transaction that consumes them.
type EventBatch struct {
	tx pgx.Tx
	// Evaluations are the evaluations the events name, with their jobset, project and
	// settings; evaluations deleted since are left out.
	Evaluations []DeliveryEvaluation
	// EvaluationChanged holds the evaluations whose own status changed.
	EvaluationChanged map[int64]bool
	// BuildIDs are the builds the events name, each once.
	BuildIDs []int64
}

// DeliveryEvaluation is an evaluation with what deciding its deliveries needs.
type DeliveryEvaluation struct {
	ID       int64
	Status   string
	Commit   string
	Error    string
	NrJobs   int
	NrErrors int
	JobsetID int64
	Jobset   string
	// StatusJobset names the commit statuses: a pull request's jobset reports under
	// its parent's name, so a forge can require one context on every request.
	StatusJobset string
	ProjectID    int64
	Project      string
	// Forge is nil when the project has none; its token is left out (ForgeTokenSet
	// says whether it has one: the sender reads it when it sends).
	Forge         *ProjectForge
	ForgeTokenSet bool
	// Notifications is nil when the project has none; its secret is left out.
	Notifications *ProjectNotifications
	// Builds counts the evaluation's builds (read only when the project has a forge).
	Builds EvalProgress
}

// EvalProgress counts an evaluation's builds by how they stand, for its commit status.
type EvalProgress struct {
	Total, Unfinished, Succeeded, Cancelled int
}

// Failed is the count of builds that finished in any way but success or cancel.
func (c EvalProgress) Failed() int { return c.Total - c.Unfinished - c.Succeeded - c.Cancelled }

// DeliveryBuild is a build as notifications show it.
type DeliveryBuild struct {
	ID, EvaluationID, JobsetID int64
	Job, System, DrvPath       string
	NixName                    string
	Status                     string
	StatusCode                 *int
	Finished                   bool
	StartedAt, FinishedAt      *time.Time
	Outputs                    map[string]string
	// PreviousStatus is the status of the job's last finished build before this one
	// in the same jobset ("" when there is none).
	PreviousStatus string
}

// ProcessOutboxEvents takes up to limit events, oldest first, reads what they name
// and hands it to produce; the deliveries produce returns are queued and the events
// consumed in one transaction. Only one coordinator produces at a time: when
// another holds the producer's lock, it returns 0 at once. It returns how many
// events it consumed.
func (db *DB) ProcessOutboxEvents(ctx context.Context, limit int,
	produce func(ctx context.Context, b *EventBatch) ([]NewDelivery, error)) (int, error) {
	n := 0
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		var locked bool
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1)`, int64(producerLock)).Scan(&locked); err != nil || !locked {
			return err
		}
		b, count, err := takeEvents(ctx, tx, limit)
		if err != nil || count == 0 {
			return err
		}
		n = count
		ds, err := produce(ctx, b)
		if err != nil {
			return err
		}
		if len(ds) > 0 {
			if _, err := tx.Exec(ctx, insertDeliveries, deliveryArrays(ds)...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("process outbox events: %w", err)
	}
	return n, nil
}

// takeEvents deletes up to limit events and reads the evaluations they name.
func takeEvents(ctx context.Context, tx pgx.Tx, limit int) (*EventBatch, int, error) {
	rows, err := tx.Query(ctx, `DELETE FROM outbox_events WHERE id IN (SELECT id FROM outbox_events ORDER BY id LIMIT $1)
		RETURNING evaluation_id, build_id`, limit)
	if err != nil {
		return nil, 0, err
	}
	b := &EventBatch{tx: tx, EvaluationChanged: map[int64]bool{}}
	var evalIDs []int64
	seenEval, seenBuild := map[int64]bool{}, map[int64]bool{}
	var evalID int64
	var buildID *int64
	count := 0
	_, err = pgx.ForEachRow(rows, []any{&evalID, &buildID}, func() error {
		count++
		if !seenEval[evalID] {
			seenEval[evalID] = true
			evalIDs = append(evalIDs, evalID)
		}
		switch {
		case buildID == nil:
			b.EvaluationChanged[evalID] = true
		case !seenBuild[*buildID]:
			seenBuild[*buildID] = true
			b.BuildIDs = append(b.BuildIDs, *buildID)
		}
		return nil
	})
	if err != nil || count == 0 {
		return nil, count, err
	}
	b.Evaluations, err = deliveryEvaluations(ctx, tx, evalIDs)
	return b, count, err
}

// deliveryEvaluations reads evaluations with their jobset, project, settings and,
// where the project has a forge, their builds' counts.
func deliveryEvaluations(ctx context.Context, tx pgx.Tx, ids []int64) ([]DeliveryEvaluation, error) {
	rows, err := tx.Query(ctx, `SELECT e.id, e.status, e.commit, e.error, e.nr_jobs, e.nr_errors, j.id, j.name,
			coalesce(pj.name, j.name), p.id, p.name,
			f.type, coalesce(f.api_url, ''), coalesce(f.repository, ''), coalesce(f.status_per_job, false), f.token IS NOT NULL,
			n.project_id IS NOT NULL, coalesce(n.emails, '{}'), coalesce(n.notify_on, ''), coalesce(n.webhook_url, ''),
			coalesce(c.total, 0), coalesce(c.unfinished, 0), coalesce(c.succeeded, 0), coalesce(c.cancelled, 0)
		FROM evaluations e JOIN jobsets j ON j.id = e.jobset_id JOIN projects p ON p.id = j.project_id
		LEFT JOIN jobsets pj ON pj.id = j.parent_jobset_id
		LEFT JOIN project_forges f ON f.project_id = p.id
		LEFT JOIN project_notifications n ON n.project_id = p.id
		LEFT JOIN LATERAL (SELECT count(*) AS total, count(*) FILTER (WHERE b.finished_at IS NULL) AS unfinished,
				count(*) FILTER (WHERE b.status = 'succeeded') AS succeeded,
				count(*) FILTER (WHERE b.status = 'cancelled' AND b.finished_at IS NOT NULL) AS cancelled
			FROM evaluation_builds eb JOIN builds b ON b.id = eb.build_id
			WHERE eb.evaluation_id = e.id AND f.project_id IS NOT NULL) c ON true
		WHERE e.id = ANY($1) ORDER BY e.id`, ids)
	if err != nil {
		return nil, fmt.Errorf("evaluations of outbox events: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (DeliveryEvaluation, error) {
		var e DeliveryEvaluation
		var forgeType *string
		var f ProjectForge
		var hasNotifications bool
		var n ProjectNotifications
		err := r.Scan(&e.ID, &e.Status, &e.Commit, &e.Error, &e.NrJobs, &e.NrErrors, &e.JobsetID, &e.Jobset,
			&e.StatusJobset, &e.ProjectID, &e.Project, &forgeType, &f.APIURL, &f.Repository, &f.StatusPerJob, &e.ForgeTokenSet,
			&hasNotifications, &n.Emails, &n.On, &n.WebhookURL,
			&e.Builds.Total, &e.Builds.Unfinished, &e.Builds.Succeeded, &e.Builds.Cancelled)
		if forgeType != nil {
			f.ProjectID, f.Type = e.ProjectID, *forgeType
			e.Forge = &f
		}
		if hasNotifications {
			n.ProjectID = e.ProjectID
			e.Notifications = &n
		}
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("evaluations of outbox events: %w", err)
	}
	return out, nil
}

const deliveryBuildColumns = `b.id, b.evaluation_id, b.jobset_id, b.job, b.system, b.drv_path, b.nix_name, b.status,
	b.status_code, b.finished_at IS NOT NULL, b.started_at, b.finished_at,
	coalesce((SELECT jsonb_object_agg(o.name, o.path) FROM build_outputs o WHERE o.build_id = b.id), '{}'),
	coalesce(prev.status, '')`

// previousBuild is the job's last finished build before b in its jobset: the job's
// builds newest first (builds_job), the first finished one. "finished_at + interval '0'
// IS NOT NULL" keeps the partial index builds_finished (jobset_id, finished_at) out of it:
// with statistics taken while few builds had finished, the planner took that index
// and walked every finished build of the jobset for each notified build (1.3 s a
// batch of 220 builds in issue 20's queue of 100,000).
const previousBuild = `LEFT JOIN LATERAL (SELECT pb.status FROM builds pb
		WHERE pb.jobset_id = b.jobset_id AND pb.job = b.job AND pb.id < b.id AND pb.finished_at + interval '0' IS NOT NULL
		ORDER BY pb.id DESC LIMIT 1) prev ON true`

func scanDeliveryBuild(r pgx.CollectableRow) (DeliveryBuild, error) {
	var b DeliveryBuild
	err := r.Scan(&b.ID, &b.EvaluationID, &b.JobsetID, &b.Job, &b.System, &b.DrvPath, &b.NixName, &b.Status,
		&b.StatusCode, &b.Finished, &b.StartedAt, &b.FinishedAt, &b.Outputs, &b.PreviousStatus)
	return b, err
}

// Builds reads the builds with these ids (those that still exist).
func (b *EventBatch) Builds(ctx context.Context, ids []int64) ([]DeliveryBuild, error) {
	rows, err := b.tx.Query(ctx, `SELECT `+deliveryBuildColumns+` FROM builds b `+previousBuild+`
		WHERE b.id = ANY($1) ORDER BY b.id`, ids)
	if err != nil {
		return nil, fmt.Errorf("builds of outbox events: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanDeliveryBuild)
	if err != nil {
		return nil, fmt.Errorf("builds of outbox events: %w", err)
	}
	return out, nil
}

// BuildsOfEvaluations reads every build of these evaluations.
func (b *EventBatch) BuildsOfEvaluations(ctx context.Context, evalIDs []int64) ([]DeliveryBuild, error) {
	rows, err := b.tx.Query(ctx, `SELECT `+deliveryBuildColumns+` FROM builds b `+previousBuild+`
		WHERE b.id IN (SELECT build_id FROM evaluation_builds WHERE evaluation_id = ANY($1)) ORDER BY b.id`, evalIDs)
	if err != nil {
		return nil, fmt.Errorf("builds of evaluations: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanDeliveryBuild)
	if err != nil {
		return nil, fmt.Errorf("builds of evaluations: %w", err)
	}
	return out, nil
}

// LastPayloads returns, for each ordering key that has deliveries, the payload of
// its newest one: what a commit status context said last.
func (b *EventBatch) LastPayloads(ctx context.Context, keys []string) (map[string][]byte, error) {
	rows, err := b.tx.Query(ctx, `SELECT DISTINCT ON (o.ordering_key) o.ordering_key, o.payload FROM outbox o
		WHERE o.ordering_key = ANY($1) ORDER BY o.ordering_key, o.id DESC`, keys)
	if err != nil {
		return nil, fmt.Errorf("last deliveries: %w", err)
	}
	out := map[string][]byte{}
	var key string
	var payload []byte
	if _, err := pgx.ForEachRow(rows, []any{&key, &payload}, func() error {
		out[key] = payload
		return nil
	}); err != nil {
		return nil, fmt.Errorf("last deliveries: %w", err)
	}
	return out, nil
}

// FailedStep is the step whose own failure made a build fail, with its log's key.
type FailedStep struct {
	ID         int64
	DrvPath    string
	Status     string
	Error      string
	LeaseEpoch int64
}

// FailedSteps finds, for each of these builds, the nearest step among those it needed
// (its own first) that failed by itself; builds without one are left out.
func (b *EventBatch) FailedSteps(ctx context.Context, buildIDs []int64) (map[int64]FailedStep, error) {
	rows, err := b.tx.Query(ctx, `WITH RECURSIVE down(build_id, id, depth) AS (
			SELECT id, step_id, 0 FROM builds WHERE id = ANY($1) AND step_id IS NOT NULL
			UNION SELECT down.build_id, e.depends_on, down.depth + 1 FROM step_edges e JOIN down ON e.step_id = down.id
			WHERE down.depth < 1000)
		SELECT DISTINCT ON (d.build_id) d.build_id, s.id, s.drv_path, s.status, s.error, s.lease_epoch
		FROM down d JOIN steps s ON s.id = d.id WHERE s.status IN `+ownFailures+`
		ORDER BY d.build_id, d.depth, s.id`, buildIDs)
	if err != nil {
		return nil, fmt.Errorf("failed steps of builds: %w", err)
	}
	out := map[int64]FailedStep{}
	var buildID int64
	var s FailedStep
	if _, err := pgx.ForEachRow(rows, []any{&buildID, &s.ID, &s.DrvPath, &s.Status, &s.Error, &s.LeaseEpoch}, func() error {
		out[buildID] = s
		return nil
	}); err != nil {
		return nil, fmt.Errorf("failed steps of builds: %w", err)
	}
	return out, nil
}
