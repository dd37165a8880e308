package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/fc-ci/fc/coordinator/forge"
	"github.com/fc-ci/fc/storage"
)

// errPermanent marks a failure that trying again will not mend (no SMTP server
// configured, a webhook removed, a forge refusing the request).
var errPermanent = errors.New("will not be tried again")

// sendLoop claims and sends one delivery at a time; with nothing due it waits to be
// woken, for the next retry to come due, or for the sweep.
func (o *Outbox) sendLoop(ctx context.Context, wake <-chan struct{}) {
	for ctx.Err() == nil {
		ds, err := o.db.ClaimDeliveries(ctx, 1, o.cfg.Lease)
		if err != nil {
			if ctx.Err() == nil {
				o.log.Error("outbox: claiming deliveries failed", "err", err)
			}
			o.wait(ctx, wake, o.cfg.Sweep)
			continue
		}
		if len(ds) == 1 {
			o.deliver(ctx, ds[0])
			continue
		}
		wait := o.cfg.Sweep
		if next, ok, err := o.db.NextDeliveryDue(ctx); err == nil && ok {
			wait = min(max(time.Until(next), 10*time.Millisecond), wait)
		}
		o.wait(ctx, wake, wait)
	}
}

func (o *Outbox) wait(ctx context.Context, wake <-chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-wake:
		o.gather(ctx, wake)
	case <-t.C:
	}
}

// gather lets the notifications that follow a wake-up within cfg.Gather fold into it:
// the loop then looks once for what they all announced.
func (o *Outbox) gather(ctx context.Context, wake <-chan struct{}) {
	t := time.NewTimer(o.cfg.Gather)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return
	case <-t.C:
	}
	select {
	case <-wake: // announced during the wait: what is looked at next includes it
	default:
	}
}

// deliver sends d and records the outcome with its claim. When ctx ends mid-send,
// the claim is given back so the delivery goes out again later.
func (o *Outbox) deliver(ctx context.Context, d storage.Delivery) {
	err := o.send(ctx, d)
	// Recording must not be cut short by the shutdown that may have cut the send.
	rec, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	log := o.log.With("delivery", d.ID, "kind", d.Kind, "target", d.Target, "attempt", d.Attempts)
	switch {
	case err == nil:
		if ok, err := o.db.MarkDelivered(rec, d.ID, d.Claim); err != nil {
			log.Error("outbox: recording a delivery failed", "err", err)
		} else if ok {
			log.Debug("delivered") // the admins' list shows them; a status per job would flood the log
		}
	case ctx.Err() != nil:
		if err := o.db.ReleaseDelivery(rec, d.ID, d.Claim); err != nil {
			log.Warn("outbox: giving back a delivery cut short failed; it is retried once its lease ends", "err", err)
		}
	default:
		retry := o.retryAt(d.Attempts, err)
		if _, rerr := o.db.MarkAttemptFailed(rec, d.ID, d.Claim, err.Error(), retry); rerr != nil {
			log.Error("outbox: recording a failed delivery failed", "err", rerr)
		}
		if retry == nil {
			log.Warn("delivery failed for good", "err", err)
		} else {
			log.Warn("delivery failed; it will be tried again", "err", err, "retry_at", retry.UTC().Format(time.RFC3339))
		}
	}
}

// retryAt is when to try again after attempt number attempts failed with err; nil
// when it will not be: a permanent error, or the last attempt.
func (o *Outbox) retryAt(attempts int, err error) *time.Time {
	if errors.Is(err, errPermanent) || errors.Is(err, forge.ErrPermanent) || attempts >= o.cfg.MaxAttempts {
		return nil
	}
	wait := o.cfg.Backoff
	for i := 1; i < attempts && wait < o.cfg.MaxBackoff; i++ {
		wait *= 2
	}
	wait = min(wait, o.cfg.MaxBackoff)
	var ra *forge.RetryAfterError
	if errors.As(err, &ra) {
		wait = max(wait, min(ra.After, o.cfg.MaxBackoff))
	}
	t := time.Now().Add(wait)
	return &t
}

// send sends one delivery by its kind, reading the secrets it needs now.
func (o *Outbox) send(ctx context.Context, d storage.Delivery) error {
	switch d.Kind {
	case storage.DeliveryStatus:
		var s forge.Status
		if err := json.Unmarshal(d.Payload, &s); err != nil {
			return fmt.Errorf("read the status: %w: %w", err, errPermanent)
		}
		f, ok, err := o.db.ProjectForge(ctx, d.ProjectID)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("the project no longer has a forge: %w", errPermanent)
		}
		return forge.PostStatus(ctx, o.http, f, s)
	case storage.DeliveryEmail:
		var m email
		if err := json.Unmarshal(d.Payload, &m); err != nil {
			return fmt.Errorf("read the e-mail: %w: %w", err, errPermanent)
		}
		return o.sendMail(ctx, d.ID, m)
	case storage.DeliveryWebhook:
		return o.postWebhook(ctx, d)
	case storage.DeliveryCommand:
		return o.runCommand(ctx, d)
	}
	return fmt.Errorf("unknown delivery kind %q: %w", d.Kind, errPermanent)
}
