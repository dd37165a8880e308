package projectapi

import (
	"net/mail"
	"net/url"
	"strings"

	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

// notificationsJSON is a project's notifications as the API shows them; the
// webhook's secret only as "is set".
type notificationsJSON struct {
	Email            []string `json:"email"`
	On               string   `json:"on"`
	WebhookURL       string   `json:"webhook_url"`
	WebhookSecretSet bool     `json:"webhook_secret_set"`
}

func toNotificationsJSON(n storage.ProjectNotifications) *notificationsJSON {
	emails := n.Emails
	if emails == nil {
		emails = []string{}
	}
	return &notificationsJSON{Email: emails, On: n.On, WebhookURL: n.WebhookURL, WebhookSecretSet: n.WebhookSecretSet()}
}

// notificationsInput is the notifications of a create or update request; nil
// fields are left as they are (new settings: their defaults). The secret is
// write-only: "" clears it.
type notificationsInput struct {
	Email         *[]string `json:"email"`
	On            *string   `json:"on"`
	WebhookURL    *string   `json:"webhook_url"`
	WebhookSecret *string   `json:"webhook_secret"`
}

func (notificationsInput) part() (string, string) {
	return "notifications", `{"email": [...], "on": ...}`
}

// notificationsField is the "notifications" of a request: absent (leave them), null
// (remove them), or settings (parts.go).
type notificationsField struct{ optional[notificationsInput] }

// Bounds of the settings.
const (
	maxEmails        = 50
	maxWebhookURLLen = 2048
	minWebhookSecret = 16
	maxWebhookSecret = 4096
)

// fields is what a request makes of a project's notifications, over old (nil:
// none): remove is true for "notifications": null; set is false when the request
// leaves them alone.
func (f notificationsField) fields(old *storage.ProjectNotifications) (fields storage.ProjectNotificationsFields, set, remove bool, err error) {
	if !f.present {
		return fields, false, false, nil
	}
	if f.in == nil {
		return fields, false, true, nil
	}
	fields.On = storage.NotifyOnFailure
	if old != nil {
		fields = storage.ProjectNotificationsFields{Emails: old.Emails, On: old.On, WebhookURL: old.WebhookURL}
	}
	in := f.in
	if in.Email != nil {
		fields.Emails = *in.Email
	}
	if in.On != nil {
		fields.On = *in.On
	}
	if in.WebhookURL != nil {
		fields.WebhookURL = *in.WebhookURL
	}
	fields.WebhookSecret = in.WebhookSecret
	if err := validNotifications(&fields); err != nil {
		return storage.ProjectNotificationsFields{}, false, false, err
	}
	return fields, true, false, nil
}

// validNotifications checks the settings, keeping each e-mail's bare address;
// each error names its field.
func validNotifications(f *storage.ProjectNotificationsFields) error {
	switch f.On {
	case storage.NotifyOnFailure, storage.NotifyOnChange, storage.NotifyOnAlways:
	default:
		return httpkit.Unprocessable("notifications.on", "notifications.on %q must be failure, change or always", f.On)
	}
	if len(f.Emails) > maxEmails {
		return httpkit.Unprocessable("notifications.email", "notifications.email lists more than %d addresses", maxEmails)
	}
	emails := make([]string, 0, len(f.Emails))
	for _, e := range f.Emails {
		a, err := mail.ParseAddress(e)
		if err != nil || strings.ContainsAny(a.Address, "\r\n") {
			return httpkit.Unprocessable("notifications.email", "notifications.email: %q is not an e-mail address", e)
		}
		emails = append(emails, a.Address)
	}
	f.Emails = emails
	if u := f.WebhookURL; u != "" {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "https" && p.Scheme != "http") || p.Host == "" || p.Fragment != "" ||
			len(u) > maxWebhookURLLen || strings.ContainsAny(u, " \t\r\n") {
			return httpkit.Unprocessable("notifications.webhook_url", "notifications.webhook_url must be an http or https URL "+
				"with a host and no fragment, at most %d characters", maxWebhookURLLen)
		}
		if p.User != nil {
			// GET shows the URL: a password in it would not stay secret.
			return httpkit.Unprocessable("notifications.webhook_url", "notifications.webhook_url must not hold a user or "+
				"password; set notifications.webhook_secret and check the signature")
		}
	}
	if s := f.WebhookSecret; s != nil && *s != "" && (len(*s) < minWebhookSecret || len(*s) > maxWebhookSecret) {
		return httpkit.Unprocessable("notifications.webhook_secret", "notifications.webhook_secret must be %d to %d characters",
			minWebhookSecret, maxWebhookSecret)
	}
	return nil
}
