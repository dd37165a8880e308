package storage

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Delivery kinds: what an outbox row sends.
const (
	DeliveryStatus  = "status"  // a commit status on the project's forge
	DeliveryEmail   = "email"   // a mail through the coordinator's SMTP server
	DeliveryWebhook = "webhook" // a signed POST to the project's webhook URL
	DeliveryCommand = "command" // the coordinator's run_command
)

// Delivery states.
const (
	DeliveryPending   = "pending"
	DeliveryDelivered = "delivered"
	DeliveryFailed    = "failed"
)

// NewDelivery is a row to add to the outbox. Target names where it goes without a
// secret; Payload is what is sent (JSON). Deliveries of one OrderingKey ("" for
// none) are sent in the order they were added.
type NewDelivery struct {
	Kind        string
	Target      string
	Payload     json.RawMessage
	ProjectID   int64 // 0: none (run_command)
	OrderingKey string
}

// Delivery is an outbox row.
type Delivery struct {
	ID          int64
	Kind        string
	Target      string
	Payload     json.RawMessage
	ProjectID   int64 // 0: none
	OrderingKey string
	Status      string
	Attempts    int
	LastError   string
	CreatedAt   time.Time
	DeliveredAt *time.Time
	// Claim fences a sender's answer: only the claim that is current may record it.
	Claim int64
}

const deliveryColumns = `o.id, o.kind, o.target, o.payload, coalesce(o.project_id, 0), coalesce(o.ordering_key, ''),
	o.status, o.attempts, o.last_error, o.created_at, o.delivered_at, o.claim`

func scanDelivery(r pgx.CollectableRow) (Delivery, error) {
	var d Delivery
	err := r.Scan(&d.ID, &d.Kind, &d.Target, &d.Payload, &d.ProjectID, &d.OrderingKey, &d.Status, &d.Attempts,
		&d.LastError, &d.CreatedAt, &d.DeliveredAt, &d.Claim)
	return d, err
}

// insertDeliveries adds rows in one statement and wakes the senders at commit.
const insertDeliveries = `WITH ins AS (
	INSERT INTO outbox (kind, target, payload, project_id, ordering_key)
	SELECT k, t, p, NULLIF(pr, 0), NULLIF(ok, '')
	FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::bigint[], $5::text[]) AS x(k, t, p, pr, ok)
	RETURNING 1)
	SELECT pg_notify('fc_outbox', '') FROM (SELECT count(*) FROM ins) c`

func deliveryArrays(ds []NewDelivery) []any {
	kinds, targets, payloads := make([]string, len(ds)), make([]string, len(ds)), make([]string, len(ds))
	projects, keys := make([]int64, len(ds)), make([]string, len(ds))
	for i, d := range ds {
		kinds[i], targets[i], payloads[i], projects[i], keys[i] = d.Kind, d.Target, string(d.Payload), d.ProjectID, d.OrderingKey
	}
	return []any{kinds, targets, payloads, projects, keys}
}

// EnqueueDeliveries adds rows to the outbox and wakes the senders of every
// coordinator.
func (db *DB) EnqueueDeliveries(ctx context.Context, ds []NewDelivery) error {
	if len(ds) == 0 {
		return nil
	}
	if _, err := db.pool.Exec(ctx, insertDeliveries, deliveryArrays(ds)...); err != nil {
		return fmt.Errorf("enqueue %d deliveries: %w", len(ds), err)
	}
	return nil
}

// ClaimDeliveries takes up to limit due deliveries for lease: a row is due when it
// is pending, its next attempt is not in the future, no live claim holds it, and no
// older row of its ordering key is still pending. Rows another sender is claiming
// right now are skipped, so one delivery goes to one sender. Each claim counts an
// attempt.
func (db *DB) ClaimDeliveries(ctx context.Context, limit int, lease time.Duration) ([]Delivery, error) {
	rows, err := db.pool.Query(ctx, `UPDATE outbox o SET attempts = o.attempts + 1, claim = o.claim + 1,
			claimed_until = now() + make_interval(secs => $2)
		WHERE o.id IN (SELECT c.id FROM outbox c
			WHERE c.status = 'pending' AND c.next_attempt_at <= now()
			  AND (c.claimed_until IS NULL OR c.claimed_until < now())
			  AND (c.ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM outbox b
			       WHERE b.ordering_key = c.ordering_key AND b.id < c.id AND b.status = 'pending'))
			ORDER BY c.next_attempt_at, c.id LIMIT $1 FOR UPDATE SKIP LOCKED)
		RETURNING `+deliveryColumns, limit, lease.Seconds())
	if err != nil {
		return nil, fmt.Errorf("claim deliveries: %w", err)
	}
	ds, err := pgx.CollectRows(rows, scanDelivery)
	if err != nil {
		return nil, fmt.Errorf("claim deliveries: %w", err)
	}
	return ds, nil
}

// MarkDelivered records that claim c of delivery id was sent. A claim that is no
// longer current (its lease ran out and another sender took the row, or its answer
// was recorded already) records nothing; ok says whether it did.
func (db *DB) MarkDelivered(ctx context.Context, id, claim int64) (ok bool, err error) {
	tag, err := db.pool.Exec(ctx, `UPDATE outbox SET status = 'delivered', delivered_at = now(), claimed_until = NULL
		WHERE id = $1 AND claim = $2 AND status = 'pending' AND claimed_until IS NOT NULL`, id, claim)
	if err != nil {
		return false, fmt.Errorf("mark delivery %d delivered: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}

// MarkAttemptFailed records a failed attempt of claim c of delivery id: tried again
// at retryAt, or failed for good when retryAt is nil.
func (db *DB) MarkAttemptFailed(ctx context.Context, id, claim int64, msg string, retryAt *time.Time) (ok bool, err error) {
	tag, err := db.pool.Exec(ctx, `UPDATE outbox SET last_error = $3, claimed_until = NULL,
			status = CASE WHEN $4::timestamptz IS NULL THEN 'failed' ELSE 'pending' END,
			next_attempt_at = coalesce($4, next_attempt_at)
		WHERE id = $1 AND claim = $2 AND status = 'pending' AND claimed_until IS NOT NULL`, id, claim, msg, retryAt)
	if err != nil {
		return false, fmt.Errorf("record a failed attempt of delivery %d: %w", id, err)
	}
	return tag.RowsAffected() == 1, nil
}

// ReleaseDelivery gives back claim c of delivery id unsent (the coordinator is
// stopping): any sender may take it at once.
func (db *DB) ReleaseDelivery(ctx context.Context, id, claim int64) error {
	if _, err := db.pool.Exec(ctx, `UPDATE outbox SET claimed_until = NULL WHERE id = $1 AND claim = $2 AND status = 'pending' AND claimed_until IS NOT NULL`,
		id, claim); err != nil {
		return fmt.Errorf("release delivery %d: %w", id, err)
	}
	return nil
}

// NextDeliveryDue is when the next pending delivery may be tried (a retry's time or
// a claim's end); ok is false when none is pending. A delivery that waits for an
// older one of its ordering key is not due before that one is done, so it is left out.
func (db *DB) NextDeliveryDue(ctx context.Context) (t time.Time, ok bool, err error) {
	var next *time.Time
	err = db.pool.QueryRow(ctx, `SELECT min(greatest(c.next_attempt_at, coalesce(c.claimed_until, c.next_attempt_at)))
		FROM outbox c WHERE c.status = 'pending'
		  AND (c.ordering_key IS NULL OR NOT EXISTS (SELECT 1 FROM outbox b
		       WHERE b.ordering_key = c.ordering_key AND b.id < c.id AND b.status = 'pending'))`).Scan(&next)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("next delivery due: %w", err)
	}
	if next == nil {
		return time.Time{}, false, nil
	}
	return *next, true, nil
}

// ListDeliveries returns a page of deliveries, newest first; status "" lists all.
func (db *DB) ListDeliveries(ctx context.Context, status string, page Page) ([]Delivery, int64, error) {
	var total int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM outbox o WHERE ($1 = '' OR o.status = $1)`, status).
		Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count deliveries: %w", err)
	}
	rows, err := db.pool.Query(ctx, `SELECT `+deliveryColumns+` FROM outbox o WHERE ($1 = '' OR o.status = $1)
		ORDER BY o.id DESC LIMIT $2 OFFSET $3`, status, page.Limit, page.Offset)
	if err != nil {
		return nil, 0, fmt.Errorf("list deliveries: %w", err)
	}
	ds, err := pgx.CollectRows(rows, scanDelivery)
	if err != nil {
		return nil, 0, fmt.Errorf("list deliveries: %w", err)
	}
	return ds, total, nil
}

// GetDelivery returns one delivery.
func (db *DB) GetDelivery(ctx context.Context, id int64) (Delivery, error) {
	rows, err := db.pool.Query(ctx, `SELECT `+deliveryColumns+` FROM outbox o WHERE o.id = $1`, id)
	if err != nil {
		return Delivery{}, fmt.Errorf("delivery %d: %w", id, err)
	}
	d, err := pgx.CollectExactlyOneRow(rows, scanDelivery)
	if err != nil {
		return Delivery{}, fmt.Errorf("delivery %d: %w", id, mapErr(err))
	}
	return d, nil
}

// PruneDeliveries deletes delivered and failed rows created before cutoff; it
// returns how many.
func (db *DB) PruneDeliveries(ctx context.Context, cutoff time.Time) (int64, error) {
	tag, err := db.pool.Exec(ctx, `DELETE FROM outbox WHERE status <> 'pending' AND created_at < $1`, cutoff)
	if err != nil {
		return 0, fmt.Errorf("prune deliveries: %w", err)
	}
	return tag.RowsAffected(), nil
}
