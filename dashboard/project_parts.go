package dashboard

import (
	"context"
	"net/http"
	"strings"

	"github.com/fc-ci/fc/storage"
)

// The project form's private and optional parts, as the projects API takes them:
// fetch_credentials, forge and notifications. Secrets are write-only: the form says
// whether one is set, a blank field keeps it, a "clear" box clears it, and what was
// typed is never rendered back, not even after an error.

// credsForm is the fetch credentials part as typed.
type credsForm struct {
	SSHKey, HTTPSToken string // write-only
	Clear              bool
}

// forgeForm is the forge part as typed; Type "" is "no forge".
type forgeForm struct {
	Type, APIURL, Repository string
	Token                    string // write-only
	ClearToken               bool
	StatusPerJob             bool
	PullRequestsFromForks    bool
}

// notifyForm is the notifications part as typed; Emails one address a line.
type notifyForm struct {
	Emails, On, WebhookURL string
	WebhookSecret          string // write-only
	ClearWebhookSecret     bool
}

// forgeTypes are the forges a project may name, for the form's choice.
func forgeTypes() []string {
	return []string{storage.ForgeGitHub, storage.ForgeGitea, storage.ForgeForgejo, storage.ForgeGitLab}
}

// notifyWhen are the choices of when notifications are sent.
func notifyWhen() []string {
	return []string{storage.NotifyOnFailure, storage.NotifyOnChange, storage.NotifyOnAlways}
}

// secretChange is what a write-only field asks of the API: a typed value sets it,
// else the "clear" box clears it (""), else nothing is sent and it stays.
func secretChange(typed string, clear bool) (value string, send bool) {
	if typed != "" {
		return typed, true
	}
	return "", clear
}

func credsFormFrom(r *http.Request) credsForm {
	key := strings.TrimSpace(strings.ReplaceAll(r.PostFormValue("ssh_key"), "\r\n", "\n"))
	if key != "" {
		key += "\n" // a browser sends CRLF and may drop the last newline; ssh wants the key as written
	}
	return credsForm{SSHKey: key, HTTPSToken: strings.TrimSpace(r.PostFormValue("https_token")),
		Clear: r.PostFormValue("fetch_credentials_clear") != ""}
}

// body is the request's fetch_credentials, send false to leave them. A blank field
// keeps its stored value (stored: the project's credentials, nil for none), as the
// API replaces both at once.
func (c credsForm) body(stored *storage.FetchCredentials) (creds map[string]string, send bool) {
	if c.SSHKey == "" && c.HTTPSToken == "" {
		return map[string]string{}, c.Clear
	}
	out := storage.FetchCredentials{SSHKey: c.SSHKey, HTTPSToken: c.HTTPSToken}
	if stored != nil && !c.Clear {
		if out.SSHKey == "" {
			out.SSHKey = stored.SSHKey
		}
		if out.HTTPSToken == "" {
			out.HTTPSToken = stored.HTTPSToken
		}
	}
	creds = map[string]string{}
	if out.SSHKey != "" {
		creds["ssh_key"] = out.SSHKey
	}
	if out.HTTPSToken != "" {
		creds["https_token"] = out.HTTPSToken
	}
	return creds, true
}

// needsStored reports whether body needs the stored credentials: one field typed,
// the other to keep.
func (c credsForm) needsStored() bool { return !c.Clear && (c.SSHKey == "") != (c.HTTPSToken == "") }

// forgeFormFrom reads the forge part; ok is false when the form had none (a post
// without its fields leaves the forge alone).
func forgeFormFrom(r *http.Request) (f forgeForm, ok bool) {
	if _, ok = r.PostForm["forge_type"]; !ok {
		return forgeForm{}, false
	}
	v := r.PostFormValue
	return forgeForm{Type: v("forge_type"), APIURL: strings.TrimSpace(v("forge_api_url")),
		Repository: strings.TrimSpace(v("forge_repository")), Token: strings.TrimSpace(v("forge_token")),
		ClearToken: v("forge_token_clear") != "", StatusPerJob: v("forge_status_per_job") != "",
		PullRequestsFromForks: v("forge_pull_requests_from_forks") != ""}, true
}

func forgeFormOf(f *storage.ProjectForge) forgeForm {
	if f == nil {
		return forgeForm{}
	}
	return forgeForm{Type: f.Type, APIURL: f.APIURL, Repository: f.Repository, StatusPerJob: f.StatusPerJob,
		PullRequestsFromForks: f.PullRequestsFromForks}
}

// body is the request's forge: nil (null) removes it.
func (f forgeForm) body() map[string]any {
	if f.Type == "" {
		return nil
	}
	b := map[string]any{"type": f.Type, "api_url": f.APIURL, "repository": f.Repository,
		"status_per_job": f.StatusPerJob, "pull_requests_from_forks": f.PullRequestsFromForks}
	if tok, send := secretChange(f.Token, f.ClearToken); send {
		b["token"] = tok
	}
	return b
}

// notifyFormFrom reads the notifications part; ok is false when the form had none.
func notifyFormFrom(r *http.Request) (f notifyForm, ok bool) {
	if _, ok = r.PostForm["notify_on"]; !ok {
		return notifyForm{}, false
	}
	v := r.PostFormValue
	return notifyForm{Emails: v("notify_email"), On: v("notify_on"), WebhookURL: strings.TrimSpace(v("notify_webhook_url")),
		WebhookSecret: v("notify_webhook_secret"), ClearWebhookSecret: v("notify_webhook_secret_clear") != ""}, true
}

func notifyFormOf(n *storage.ProjectNotifications) notifyForm {
	if n == nil {
		return notifyForm{On: storage.NotifyOnFailure}
	}
	return notifyForm{Emails: strings.Join(n.Emails, "\n"), On: n.On, WebhookURL: n.WebhookURL}
}

// emails are the addresses typed, one a line or separated by commas.
func (n notifyForm) emails() []string {
	out := []string{}
	for _, e := range strings.FieldsFunc(n.Emails, func(r rune) bool { return r == '\n' || r == '\r' || r == ',' }) {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}

// body is the request's notifications: nil (null) removes them, which is what a
// form without addresses, URL or new secret asks.
func (n notifyForm) body() map[string]any {
	emails := n.emails()
	secret, send := secretChange(n.WebhookSecret, n.ClearWebhookSecret)
	if len(emails) == 0 && n.WebhookURL == "" && secret == "" {
		return nil
	}
	b := map[string]any{"email": emails, "on": n.On, "webhook_url": n.WebhookURL}
	if send {
		b["webhook_secret"] = secret
	}
	return b
}

// forgeView is a project's forge as pages show it: never the token.
type forgeView struct {
	Type, APIURL, Repository            string
	TokenSet                            bool
	StatusPerJob, PullRequestsFromForks bool
}

// notifyView is a project's notifications as pages show them: never the secret.
type notifyView struct {
	Emails           []string
	On, WebhookURL   string
	WebhookSecretSet bool
}

// projectParts are a project's forge and notifications (nil: none), as stored (for
// the form) and as shown.
type projectParts struct {
	forge  *storage.ProjectForge
	notify *storage.ProjectNotifications
	Forge  *forgeView
	Notify *notifyView
}

// loadParts reads project id's forge and notifications, both at once.
func (d *Dashboard) loadParts(ctx context.Context, id int64) (projectParts, error) {
	var pp projectParts
	err := parallel(func() error {
		f, ok, err := d.db.ProjectForge(ctx, id)
		if ok {
			pp.forge = &f
			pp.Forge = &forgeView{Type: f.Type, APIURL: f.APIURL, Repository: f.Repository, TokenSet: f.TokenSet(),
				StatusPerJob: f.StatusPerJob, PullRequestsFromForks: f.PullRequestsFromForks}
		}
		return err
	}, func() error {
		n, ok, err := d.db.ProjectNotifications(ctx, id)
		if ok {
			pp.notify = &n
			pp.Notify = &notifyView{Emails: n.Emails, On: n.On, WebhookURL: n.WebhookURL, WebhookSecretSet: n.WebhookSecretSet()}
		}
		return err
	})
	return pp, err
}

// secretsSet says which of a project's secrets are set, for the form.
type secretsSet struct {
	WebhookSecret, FetchCredentials, ForgeToken, NotifySecret bool
}

func secretsOf(p *storage.Project, pp projectParts) secretsSet {
	if p == nil {
		return secretsSet{}
	}
	s := secretsSet{WebhookSecret: p.WebhookSecretSet, FetchCredentials: p.FetchCredentialsSet}
	if pp.Forge != nil {
		s.ForgeToken = pp.Forge.TokenSet
	}
	if pp.Notify != nil {
		s.NotifySecret = pp.Notify.WebhookSecretSet
	}
	return s
}
