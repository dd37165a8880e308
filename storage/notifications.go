package storage

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// When a project's notifications are sent (ProjectNotifications.On).
const (
	NotifyOnFailure = "failure" // every build that failed
	NotifyOnChange  = "change"  // a job that went from success to failure or back
	NotifyOnAlways  = "always"  // every finished build
)

// ProjectNotifications is whom a project tells of its builds and evaluations, and
// when. WebhookSecret signs the outgoing webhooks (write-only through the API: never
// log it or show it).
type ProjectNotifications struct {
	ProjectID     int64
	Emails        []string
	On            string
	WebhookURL    string
	WebhookSecret string
}

// WebhookSecretSet says whether the webhook has a secret.
func (n ProjectNotifications) WebhookSecretSet() bool { return n.WebhookSecret != "" }

// ProjectNotificationsFields are the writable settings. WebhookSecret nil leaves the
// secret as it is; a pointer to "" clears it.
type ProjectNotificationsFields struct {
	Emails        []string
	On            string
	WebhookURL    string
	WebhookSecret *string
}

const notificationColumns = `n.project_id, n.emails, n.notify_on, n.webhook_url, coalesce(n.webhook_secret, '')`

func (n *ProjectNotifications) scanTargets() []any {
	return []any{&n.ProjectID, &n.Emails, &n.On, &n.WebhookURL, &n.WebhookSecret}
}

// ProjectNotifications returns a project's notification settings, secret included;
// ok is false when the project has none.
func (db *DB) ProjectNotifications(ctx context.Context, projectID int64) (n ProjectNotifications, ok bool, err error) {
	err = db.pool.QueryRow(ctx, `SELECT `+notificationColumns+` FROM project_notifications n WHERE n.project_id = $1`,
		projectID).Scan(n.scanTargets()...)
	if errors.Is(err, pgx.ErrNoRows) {
		return ProjectNotifications{}, false, nil
	}
	if err != nil {
		return ProjectNotifications{}, false, fmt.Errorf("notifications of project %d: %w", projectID, err)
	}
	return n, true, nil
}

// ProjectNotificationsOf returns the notification settings of several projects
// (those that have some), in one query.
func (db *DB) ProjectNotificationsOf(ctx context.Context, projectIDs []int64) (map[int64]ProjectNotifications, error) {
	rows, err := db.pool.Query(ctx, `SELECT `+notificationColumns+` FROM project_notifications n
		WHERE n.project_id = ANY($1)`, projectIDs)
	if err != nil {
		return nil, fmt.Errorf("notifications of projects: %w", err)
	}
	ns, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ProjectNotifications, error) {
		var n ProjectNotifications
		return n, r.Scan(n.scanTargets()...)
	})
	if err != nil {
		return nil, fmt.Errorf("notifications of projects: %w", err)
	}
	out := make(map[int64]ProjectNotifications, len(ns))
	for _, n := range ns {
		out[n.ProjectID] = n
	}
	return out, nil
}

// SetProjectNotifications creates or replaces a project's notification settings. An
// unknown project is ErrNotFound.
func (db *DB) SetProjectNotifications(ctx context.Context, projectID int64, f ProjectNotificationsFields) (ProjectNotifications, error) {
	emails := f.Emails
	if emails == nil {
		emails = []string{}
	}
	var out ProjectNotifications
	err := db.pool.QueryRow(ctx, `INSERT INTO project_notifications AS n (project_id, emails, notify_on, webhook_url, webhook_secret)
		VALUES ($1, $2, $3, $4, NULLIF($6, ''))
		ON CONFLICT (project_id) DO UPDATE SET emails = $2, notify_on = $3, webhook_url = $4,
			webhook_secret = CASE WHEN $5::boolean THEN NULLIF($6, '') ELSE n.webhook_secret END, updated_at = now()
		RETURNING `+notificationColumns,
		projectID, emails, f.On, f.WebhookURL, f.WebhookSecret != nil, deref(f.WebhookSecret)).Scan(out.scanTargets()...)
	if err != nil {
		return ProjectNotifications{}, fmt.Errorf("set the notifications of project %d: %w", projectID, mapErr(err))
	}
	return out, nil
}

// DeleteProjectNotifications removes a project's notification settings (none is no
// error).
func (db *DB) DeleteProjectNotifications(ctx context.Context, projectID int64) error {
	if _, err := db.pool.Exec(ctx, `DELETE FROM project_notifications WHERE project_id = $1`, projectID); err != nil {
		return fmt.Errorf("delete the notifications of project %d: %w", projectID, err)
	}
	return nil
}
