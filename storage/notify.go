package storage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Channel is a PostgreSQL NOTIFY channel through which coordinators sharing a
// database tell each other what changed.
type Channel string

// The channels FC uses.
const (
	// StepsChannel says steps may have become runnable (an evaluation was stored, a
	// step finished, work was restarted): every coordinator wakes its scheduler.
	StepsChannel Channel = stepsChannel
	// NarinfoDeletedChannel carries, comma-separated, the hash parts retention
	// deleted: every coordinator forgets the narinfo answers it cached for them.
	NarinfoDeletedChannel Channel = "fc_narinfo_deleted"
	// OutboxChannel says deliveries or outbox events were added (by the outbox's
	// triggers and EnqueueDeliveries): every coordinator wakes its producer and sender.
	OutboxChannel Channel = "fc_outbox"
)

// stepsChannel is StepsChannel's name, for a statement that notifies it itself.
const stepsChannel = "fc_steps"

// listenStatement is the LISTEN for a channel. LISTEN takes no parameters, so each
// channel has its own constant statement rather than a name spliced into SQL.
func (c Channel) listenStatement() (string, error) {
	switch c {
	case StepsChannel:
		return `LISTEN fc_steps`, nil
	case NarinfoDeletedChannel:
		return `LISTEN fc_narinfo_deleted`, nil
	case OutboxChannel:
		return `LISTEN fc_outbox`, nil
	}
	return "", fmt.Errorf("unknown notification channel %q", c)
}

// notifySteps announces on StepsChannel, at the commit of tx, that steps may have
// become runnable.
func notifySteps(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, string(StepsChannel))
	return err
}

// Notification is one NOTIFY received.
type Notification struct {
	Channel Channel
	Payload string
}

// Listener receives the notifications sent on its channels, on a connection of its
// own (not the pool's: a coordinator keeps several listening for as long as it runs,
// and they must never starve the pool its queries need) until Close.
type Listener struct {
	conn *pgx.Conn
}

// Listen opens a connection to the database and listens on channels there; what is
// sent from then on arrives through Next. Close the listener when done.
func (db *DB) Listen(ctx context.Context, channels ...Channel) (*Listener, error) {
	if len(channels) == 0 {
		return nil, errors.New("listen: no channel")
	}
	stmts := make([]string, len(channels))
	for i, c := range channels {
		s, err := c.listenStatement()
		if err != nil {
			return nil, err
		}
		stmts[i] = s
	}
	conn, err := pgx.ConnectConfig(ctx, db.pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, fmt.Errorf("listen on %v: %w", channels, err)
	}
	l := &Listener{conn: conn}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			l.Close()
			return nil, fmt.Errorf("listen on %v: %w", channels, err)
		}
	}
	return l, nil
}

// Next waits for the next notification until ctx ends. After an error, Close the
// listener (and Listen again to go on: notifications may have been missed).
func (l *Listener) Next(ctx context.Context) (Notification, error) {
	n, err := l.conn.WaitForNotification(ctx)
	if err != nil {
		return Notification{}, fmt.Errorf("wait for a notification: %w", err)
	}
	return Notification{Channel: Channel(n.Channel), Payload: n.Payload}, nil
}

// Close stops listening and closes the connection.
func (l *Listener) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = l.conn.Close(ctx)
}

// ListenNarinfoDeletions calls deleted with each batch of deleted hash parts until ctx
// ends or the connection fails (the caller then reconnects and assumes it missed
// some). ready is called once the listener is in place.
func (db *DB) ListenNarinfoDeletions(ctx context.Context, ready func(), deleted func([]string)) error {
	l, err := db.Listen(ctx, NarinfoDeletedChannel)
	if err != nil {
		return fmt.Errorf("listen for deleted narinfos: %w", err)
	}
	defer l.Close()
	ready()
	for {
		n, err := l.Next(ctx)
		if err != nil {
			return fmt.Errorf("wait for deleted narinfos: %w", err)
		}
		deleted(strings.Split(n.Payload, ","))
	}
}

// Follow listens on channels until ctx ends: connected runs after each (re)connect
// (notifications may have been missed meanwhile; nil for nothing), notified on each
// notification. When the connection fails, failed is told why and Follow listens
// again after retry.
func (db *DB) Follow(ctx context.Context, retry time.Duration, connected, notified func(), failed func(error), channels ...Channel) {
	for ctx.Err() == nil {
		err := func() error {
			l, err := db.Listen(ctx, channels...)
			if err != nil {
				return err
			}
			defer l.Close()
			if connected != nil {
				connected()
			}
			for {
				if _, err := l.Next(ctx); err != nil {
					return err
				}
				notified()
			}
		}()
		if ctx.Err() != nil {
			return
		}
		failed(err)
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
