package projectapi

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// projectJSON is a project as the API shows it; secrets appear only as "is set".
type projectJSON struct {
	ID               int64  `json:"id"`
	Name             string `json:"name"`
	DisplayName      string `json:"display_name"`
	Description      string `json:"description"`
	RepositoryURL    string `json:"repository_url"`
	Enabled          bool   `json:"enabled"`
	WebhookSecretSet bool   `json:"webhook_secret_set"`
	// Fetch credentials are write-only: a GET says only whether they are set.
	FetchCredentialsSet bool `json:"fetch_credentials_set"`
	// The API key that owns the project (null: none, only admins manage it) and its
	// name; never the key itself.
	OwnerKeyID   *int64 `json:"owner_key_id"`
	OwnerKeyName string `json:"owner_key_name"`
	// The user who owns the project (null: none) and their username.
	OwnerUserID   *int64    `json:"owner_user_id"`
	OwnerUserName string    `json:"owner_user_name"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
	// Forge is where the repository is hosted (forge.go), null when unset.
	Forge *forgeJSON `json:"forge"`
	// Notifications are whom to tell of builds, and when (notifications.go), null
	// when unset.
	Notifications *notificationsJSON `json:"notifications"`
	// Declared: the project is declared in the coordinator's config file
	// (DeclaredIn), and the API refuses to change it (409).
	Declared   bool   `json:"declared"`
	DeclaredIn string `json:"declared_in,omitempty"`
	// DeclarativeFile is the file in the repository declaring jobsets (.fc.toml; ""
	// none), read from DeclarativeBranch ("" the default branch) on each check;
	// DeclarativeError is why it could not be applied last time ("" none).
	DeclarativeFile   string `json:"declarative_file"`
	DeclarativeBranch string `json:"declarative_branch"`
	DeclarativeError  string `json:"declarative_error"`
}

func toProjectJSON(p storage.Project) projectJSON {
	return projectJSON{ID: p.ID, Name: p.Name, DisplayName: p.DisplayName, Description: p.Description,
		RepositoryURL: p.RepositoryURL, Enabled: p.Enabled, WebhookSecretSet: p.WebhookSecretSet,
		FetchCredentialsSet: p.FetchCredentialsSet, OwnerKeyID: p.OwnerKeyID, OwnerKeyName: p.OwnerKeyName,
		OwnerUserID: p.OwnerUserID, OwnerUserName: p.OwnerUserName, CreatedAt: p.CreatedAt.UTC(), UpdatedAt: p.UpdatedAt.UTC(),
		Declared: p.Declared != "", DeclaredIn: p.Declared, DeclarativeFile: p.DeclarativeFile,
		DeclarativeBranch: p.DeclarativeBranch, DeclarativeError: p.DeclarativeError}
}

// projectInput is a create or update request; nil fields are left as they are.
type projectInput struct {
	Name          *string `json:"name"`
	DisplayName   *string `json:"display_name"`
	Description   *string `json:"description"`
	RepositoryURL *string `json:"repository_url"`
	Enabled       *bool   `json:"enabled"`
	WebhookSecret *string `json:"webhook_secret"`
	// FetchCredentials for a private repository: {"ssh_key": "...", "https_token": "..."};
	// {} clears them.
	FetchCredentials *storage.FetchCredentials `json:"fetch_credentials"`
	// OwnerKeyID gives the project to another API key (admins only).
	OwnerKeyID *int64 `json:"owner_key_id"`
	// Forge sets where the repository is hosted (forge.go); null removes it.
	Forge forgeField `json:"forge"`
	// Notifications sets whom to tell of builds (notifications.go); null removes them.
	Notifications notificationsField `json:"notifications"`
	// DeclarativeFile and DeclarativeBranch: see projectJSON.
	DeclarativeFile   *string `json:"declarative_file"`
	DeclarativeBranch *string `json:"declarative_branch"`
}

// maxNameLen bounds project, jobset and API key names.
const maxNameLen = 100

// ValidName checks a project, jobset or key name (protocol.CheckName's rule).
func ValidName(field, s string) error {
	if err := protocol.CheckName(field, s, maxNameLen); err != nil {
		return httpkit.Errorf(http.StatusUnprocessableEntity, field, "%v", err)
	}
	return nil
}

// validRepositoryURL accepts https, http, ssh, git and file URLs, and absolute paths.
func validRepositoryURL(s string) error {
	bad := func(why string) error {
		return httpkit.Errorf(http.StatusUnprocessableEntity, "repository_url", "repository_url %q: %s", s, why)
	}
	if s == "" {
		return bad("required")
	}
	if strings.ContainsAny(s, " \t\r\n") {
		return bad("must not contain whitespace")
	}
	if strings.HasPrefix(s, "/") {
		if filepath.Clean(s) != strings.TrimSuffix(s, "/") && filepath.Clean(s) != s {
			return bad("path must be clean (no '..' or '//')")
		}
		return nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return bad("not a URL")
	}
	if _, hasPassword := u.User.Password(); hasPassword {
		// Anything in the URL is shown by every GET; secrets are write-only.
		return bad("must not embed a password or token; set the project's fetch credentials instead")
	}
	switch u.Scheme {
	case "https", "http", "ssh", "git":
		if u.Host == "" {
			return bad("a " + u.Scheme + " URL needs a host")
		}
	case "file":
		if u.Path == "" || !strings.HasPrefix(u.Path, "/") {
			return bad("a file URL needs an absolute path")
		}
	default:
		return bad("use an https, http, ssh, git or file URL, or an absolute path")
	}
	return nil
}

// setsDeclared says whether the request changes what a config declares of a project;
// what it cannot declare (secrets, forge, notifications) stays the API's to set.
func (in projectInput) setsDeclared() bool {
	return in.Name != nil || in.DisplayName != nil || in.Description != nil || in.RepositoryURL != nil ||
		in.Enabled != nil || in.OwnerKeyID != nil || in.DeclarativeFile != nil || in.DeclarativeBranch != nil
}

func (in projectInput) apply(f *storage.ProjectFields) error {
	if in.Name != nil {
		f.Name = *in.Name
	}
	if in.DisplayName != nil {
		f.DisplayName = *in.DisplayName
	}
	if in.Description != nil {
		f.Description = *in.Description
	}
	if in.RepositoryURL != nil {
		f.RepositoryURL = *in.RepositoryURL
	}
	if in.Enabled != nil {
		f.Enabled = *in.Enabled
	}
	if in.DeclarativeFile != nil {
		f.DeclarativeFile = *in.DeclarativeFile
	}
	if in.DeclarativeBranch != nil {
		f.DeclarativeBranch = *in.DeclarativeBranch
	}
	if err := validDeclarativeFile(f.DeclarativeFile, f.DeclarativeBranch); err != nil {
		return err
	}
	f.WebhookSecret = in.WebhookSecret
	f.FetchCredentials = in.FetchCredentials
	if c := in.FetchCredentials; c != nil && c.SSHKey != "" && !strings.Contains(c.SSHKey, "PRIVATE KEY") {
		return httpkit.Errorf(http.StatusUnprocessableEntity, "fetch_credentials", "fetch_credentials.ssh_key must be a private key (OpenSSH or PEM)")
	}
	if in.OwnerKeyID != nil && *in.OwnerKeyID <= 0 {
		return httpkit.Errorf(http.StatusUnprocessableEntity, "owner_key_id", "owner_key_id must be an API key's id")
	}
	if err := ValidName("name", f.Name); err != nil {
		return err
	}
	if err := validRepositoryURL(f.RepositoryURL); err != nil {
		return err
	}
	if len(f.DisplayName) > 200 {
		return httpkit.Errorf(http.StatusUnprocessableEntity, "display_name", "display_name is longer than 200 characters")
	}
	if f.WebhookSecret != nil && len(*f.WebhookSecret) > 0 && len(*f.WebhookSecret) < 16 {
		return httpkit.Errorf(http.StatusUnprocessableEntity, "webhook_secret", "webhook_secret must be at least 16 characters")
	}
	return nil
}

// nameConflict turns a unique-name violation into a 409 that names the field.
func nameConflict(err error, what, name string) error {
	if errors.Is(err, storage.ErrConflict) {
		return httpkit.Errorf(http.StatusConflict, "name", "%s named %q already exists", what, name)
	}
	return err
}

func (a *API) listProjects(w http.ResponseWriter, r *http.Request) {
	page, err := httpkit.PageOf(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ps, total, err := a.db.ListProjects(r.Context(), page)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := make([]projectJSON, len(ps))
	for i, p := range ps {
		out[i] = toProjectJSON(p)
	}
	if err := a.withParts(r, out); err != nil {
		a.fail(w, r, err)
		return
	}
	httpkit.WriteJSON(w, http.StatusOK, httpkit.NewList(out, total, page))
}

func (a *API) createProject(w http.ResponseWriter, r *http.Request) {
	var in projectInput
	if err := httpkit.Decode(r, &in); err != nil {
		a.fail(w, r, err)
		return
	}
	f := storage.ProjectFields{Enabled: true}
	if err := in.apply(&f); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := projectWrite(r.Context(), storage.Project{}, true, in, &f); err != nil {
		a.fail(w, r, err)
		return
	}
	forge, setForge, _, err := in.Forge.fields(nil)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	notif, setNotif, _, err := in.Notifications.fields(nil)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	p, err := a.db.CreateProject(r.Context(), f)
	if err != nil {
		a.fail(w, r, nameConflict(unknownOwner(err, in), "a project", f.Name))
		return
	}
	if err := a.forges().save(r.Context(), p.ID, forge, setForge, false); err != nil {
		// Not a project without the forge it was asked to have.
		_ = a.db.DeleteProject(r.Context(), p.ID)
		a.fail(w, r, err)
		return
	}
	if err := a.notifications().save(r.Context(), p.ID, notif, setNotif, false); err != nil {
		_ = a.db.DeleteProject(r.Context(), p.ID)
		a.fail(w, r, err)
		return
	}
	a.writeProject(w, r, http.StatusCreated, p)
}

// writeProject answers with project p as it is now, with its forge.
func (a *API) writeProject(w http.ResponseWriter, r *http.Request, status int, p storage.Project) {
	out := []projectJSON{toProjectJSON(p)}
	if err := a.withParts(r, out); err != nil {
		a.fail(w, r, err)
		return
	}
	if status == http.StatusCreated {
		w.Header().Set("Location", "/api/v1/projects/"+strconv.FormatInt(p.ID, 10))
	}
	httpkit.WriteJSON(w, status, out[0])
}

// project resolves the {id} (or {pid}) URL parameter with httpkit.ProjectByRef.
func (a *API) project(ctx context.Context, r *http.Request, param string) (storage.Project, error) {
	return httpkit.ProjectByRef(ctx, a.db, chi.URLParam(r, param))
}

func (a *API) getProject(w http.ResponseWriter, r *http.Request) {
	p, err := a.project(r.Context(), r, "id")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.writeProject(w, r, http.StatusOK, p)
}

func (a *API) updateProject(w http.ResponseWriter, r *http.Request) {
	p, err := a.project(r.Context(), r, "id")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var in projectInput
	if err := httpkit.Decode(r, &in); err != nil {
		a.fail(w, r, err)
		return
	}
	if p.Declared != "" && in.setsDeclared() {
		a.fail(w, r, httpkit.Declared("project "+strconv.Quote(p.Name), p.Declared))
		return
	}
	f := storage.ProjectFields{Name: p.Name, DisplayName: p.DisplayName, Description: p.Description,
		RepositoryURL: p.RepositoryURL, Enabled: p.Enabled, DeclarativeFile: p.DeclarativeFile,
		DeclarativeBranch: p.DeclarativeBranch}
	if err := in.apply(&f); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := projectWrite(r.Context(), p, false, in, &f); err != nil {
		a.fail(w, r, err)
		return
	}
	old, err := a.forges().current(r.Context(), p.ID)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	forge, setForge, removeForge, err := in.Forge.fields(old)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	oldNotif, err := a.notifications().current(r.Context(), p.ID)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	notif, setNotif, removeNotif, err := in.Notifications.fields(oldNotif)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	p, err = a.db.UpdateProject(r.Context(), p.ID, f)
	if err != nil {
		a.fail(w, r, nameConflict(unknownOwner(err, in), "a project", f.Name))
		return
	}
	if err := a.forges().save(r.Context(), p.ID, forge, setForge, removeForge); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.notifications().save(r.Context(), p.ID, notif, setNotif, removeNotif); err != nil {
		a.fail(w, r, err)
		return
	}
	a.writeProject(w, r, http.StatusOK, p)
}

func (a *API) deleteProject(w http.ResponseWriter, r *http.Request) {
	p, err := a.project(r.Context(), r, "id")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if p.Declared != "" {
		a.fail(w, r, httpkit.Declared("project "+strconv.Quote(p.Name), p.Declared))
		return
	}
	if err := a.db.DeleteProject(r.Context(), p.ID); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
