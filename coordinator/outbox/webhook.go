package outbox

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/fc-ci/fc/storage"
)

// Headers of an outgoing webhook.
const (
	// HeaderSignature is "sha256=" and the hex HMAC-SHA256 of the body keyed with the
	// project's webhook secret (absent when it has none).
	HeaderSignature = "X-FC-Signature-256"
	// HeaderDelivery is the delivery's id: the same on every attempt, so a receiver
	// can ignore a delivery it already took (delivery is at least once).
	HeaderDelivery = "X-FC-Delivery"
	// HeaderEvent is what happened: build.finished or evaluation.finished.
	HeaderEvent = "X-FC-Event"
)

// Sign is the value of HeaderSignature for body under secret.
func Sign(secret string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// postWebhook POSTs the delivery's body to the project's webhook URL as it is now,
// signed with its secret. Redirects are not followed (the body and its signature are
// for the URL the project set); any 2xx answer delivers it.
func (o *Outbox) postWebhook(ctx context.Context, d storage.Delivery) error {
	n, ok, err := o.db.ProjectNotifications(ctx, d.ProjectID)
	if err != nil {
		return err
	}
	if !ok || n.WebhookURL == "" {
		return fmt.Errorf("the project no longer has a webhook: %w", errPermanent)
	}
	var event struct {
		Event string `json:"event"`
	}
	_ = json.Unmarshal(d.Payload, &event)
	where := "POST " + RedactURL(n.WebhookURL)
	ctx, cancel := context.WithTimeout(ctx, sendTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.WebhookURL, bytes.NewReader(d.Payload))
	if err != nil {
		return fmt.Errorf("%s: a malformed URL: %w", where, errPermanent)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "fc-ci")
	req.Header.Set(HeaderDelivery, strconv.FormatInt(d.ID, 10))
	req.Header.Set(HeaderEvent, event.Event)
	if n.WebhookSecret != "" {
		req.Header.Set(HeaderSignature, Sign(n.WebhookSecret, d.Payload))
	}
	hc := *o.http
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its text has the whole URL, which may hold a secret
		}
		return fmt.Errorf("%s: %w", where, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("%s: %s", where, resp.Status)
	}
	return nil
}

// RedactURL shows where a URL points without what may be a secret in it (a user,
// a path like Slack's, a query): scheme://host/… .
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "(a malformed URL)"
	}
	s := u.Scheme + "://" + u.Host
	if strings.Trim(u.Path, "/") != "" || u.RawQuery != "" {
		s += "/…"
	}
	return s
}
