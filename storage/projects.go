package storage

import (
	"context"
	"fmt"
	"time"
)

// Project is a repository FC builds.
type Project struct {
	ID               int64
	Name             string
	DisplayName      string
	Description      string
	RepositoryURL    string
	Enabled          bool
	WebhookSecretSet bool
	// FetchCredentialsSet says whether the project has fetch credentials; they are
	// never read back except to give them to the agent that evaluates.
	FetchCredentialsSet bool
	// OwnerKeyID is the API key that owns the project (the one that created it, unless
	// an admin gave it to another), nil when it has none: then only admins manage it.
	// OwnerKeyName is that key's name.
	OwnerKeyID   *int64
	OwnerKeyName string
	// OwnerUserID is the user who owns the project (who created it, signed in with a
	// password), nil when none does; OwnerUserName is their username. A project has
	// at most one owner, a key or a user.
	OwnerUserID   *int64
	OwnerUserName string
	CreatedAt     time.Time
	UpdatedAt     time.Time
	// Declared names the config file that declares the project ("": none, the API
	// manages it).
	Declared string
	// DeclarativeFile is the file in the repository that declares the project's
	// jobsets (.fc.toml; "": none), read from DeclarativeBranch ("": the default
	// branch); DeclarativeError is the last error reading it ("": none).
	DeclarativeFile   string
	DeclarativeBranch string
	DeclarativeError  string
}

// ProjectFields are the writable columns. WebhookSecret nil leaves the secret as it is;
// a pointer to "" clears it.
type ProjectFields struct {
	Name          string
	DisplayName   string
	Description   string
	RepositoryURL string
	Enabled       bool
	WebhookSecret *string
	// FetchCredentials nil leaves them as they are; empty ones clear them.
	FetchCredentials *FetchCredentials
	// OwnerKeyID is the owning API key: nil makes a project with none, and leaves an
	// updated project's owner as it is (giving the project to a key takes it from its
	// owning user). An unknown key is ErrNotFound.
	OwnerKeyID *int64
	// OwnerUserID is the owning user of a new project (nil: none); updates ignore it.
	OwnerUserID *int64
	// DeclarativeFile and DeclarativeBranch: see Project.
	DeclarativeFile   string
	DeclarativeBranch string
}

// FetchCredentials reach a private repository: an SSH deploy key or an HTTPS token.
type FetchCredentials struct {
	SSHKey     string `json:"ssh_key,omitempty"`
	HTTPSToken string `json:"https_token,omitempty"`
}

func (f *FetchCredentials) empty() bool { return f == nil || (f.SSHKey == "" && f.HTTPSToken == "") }

const projectColumns = `id, name, display_name, description, repository_url, enabled,
	webhook_secret IS NOT NULL AND webhook_secret <> '', fetch_credentials IS NOT NULL, owner_key_id,
	coalesce((SELECT k.name FROM api_keys k WHERE k.id = projects.owner_key_id), ''), owner_user_id,
	coalesce((SELECT u.username FROM users u WHERE u.id = projects.owner_user_id), ''), created_at, updated_at,
	coalesce(declared, ''), declarative_file, declarative_branch, declarative_error`

type scanner interface{ Scan(dest ...any) error }

func scanProject(row scanner) (Project, error) {
	var p Project
	err := row.Scan(&p.ID, &p.Name, &p.DisplayName, &p.Description, &p.RepositoryURL, &p.Enabled,
		&p.WebhookSecretSet, &p.FetchCredentialsSet, &p.OwnerKeyID, &p.OwnerKeyName, &p.OwnerUserID, &p.OwnerUserName, &p.CreatedAt, &p.UpdatedAt,
		&p.Declared, &p.DeclarativeFile, &p.DeclarativeBranch, &p.DeclarativeError)
	return p, err
}

// CreateProject inserts a project; a duplicate name is ErrConflict.
func (db *DB) CreateProject(ctx context.Context, f ProjectFields) (Project, error) {
	row := db.pool.QueryRow(ctx, `INSERT INTO projects (name, display_name, description, repository_url, enabled, webhook_secret,
		fetch_credentials, owner_key_id, owner_user_id, declarative_file, declarative_branch)
		VALUES ($1, $2, $3, $4, $5, NULLIF($6, ''), $7, $8, $9, $10, $11) RETURNING `+projectColumns,
		f.Name, f.DisplayName, f.Description, f.RepositoryURL, f.Enabled, deref(f.WebhookSecret), credsValue(f.FetchCredentials),
		f.OwnerKeyID, f.OwnerUserID, f.DeclarativeFile, f.DeclarativeBranch)
	p, err := scanProject(row)
	if err != nil {
		return Project{}, fmt.Errorf("create project %q: %w", f.Name, mapErr(err))
	}
	return p, nil
}

// GetProject finds a project by id.
func (db *DB) GetProject(ctx context.Context, id int64) (Project, error) {
	p, err := scanProject(db.pool.QueryRow(ctx, `SELECT `+projectColumns+` FROM projects WHERE id = $1`, id))
	if err != nil {
		return Project{}, fmt.Errorf("get project %d: %w", id, mapErr(err))
	}
	return p, nil
}

// GetProjectByName finds a project by its unique name.
func (db *DB) GetProjectByName(ctx context.Context, name string) (Project, error) {
	p, err := scanProject(db.pool.QueryRow(ctx, `SELECT `+projectColumns+` FROM projects WHERE name = $1`, name))
	if err != nil {
		return Project{}, fmt.Errorf("get project %q: %w", name, mapErr(err))
	}
	return p, nil
}

// ListProjects returns a page of projects, newest first, and the total count.
func (db *DB) ListProjects(ctx context.Context, page Page) ([]Project, int64, error) {
	var total int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM projects`).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count projects: %w", err)
	}
	rows, err := db.pool.Query(ctx, `SELECT `+projectColumns+` FROM projects ORDER BY id DESC LIMIT $1 OFFSET $2`,
		page.Limit, page.Offset)
	if err != nil {
		return nil, 0, fmt.Errorf("list projects: %w", err)
	}
	defer rows.Close()
	items := make([]Project, 0, page.Limit)
	for rows.Next() {
		p, err := scanProject(rows)
		if err != nil {
			return nil, 0, fmt.Errorf("list projects: %w", err)
		}
		items = append(items, p)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("list projects: %w", err)
	}
	return items, total, nil
}

// UpdateProject replaces the writable columns of project id.
func (db *DB) UpdateProject(ctx context.Context, id int64, f ProjectFields) (Project, error) {
	row := db.pool.QueryRow(ctx, `UPDATE projects SET name = $2, display_name = $3, description = $4,
		repository_url = $5, enabled = $6,
		webhook_secret = CASE WHEN $7::boolean THEN NULLIF($8, '') ELSE webhook_secret END,
		fetch_credentials = CASE WHEN $9::boolean THEN $10::jsonb ELSE fetch_credentials END,
		owner_key_id = coalesce($11, owner_key_id),
		owner_user_id = CASE WHEN $11::bigint IS NULL THEN owner_user_id END, declarative_file = $12,
		declarative_branch = $13, declarative_error = CASE WHEN declarative_file = $12 THEN declarative_error ELSE '' END,
		updated_at = now()
		WHERE id = $1 RETURNING `+projectColumns,
		id, f.Name, f.DisplayName, f.Description, f.RepositoryURL, f.Enabled, f.WebhookSecret != nil, deref(f.WebhookSecret),
		f.FetchCredentials != nil, credsValue(f.FetchCredentials), f.OwnerKeyID, f.DeclarativeFile, f.DeclarativeBranch)
	p, err := scanProject(row)
	if err != nil {
		return Project{}, fmt.Errorf("update project %d: %w", id, mapErr(err))
	}
	return p, nil
}

// DeleteProject removes a project and, by cascade, its jobsets, evaluations and builds.
func (db *DB) DeleteProject(ctx context.Context, id int64) error {
	tag, err := db.pool.Exec(ctx, `DELETE FROM projects WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("delete project %d: %w", id, mapErr(err))
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("delete project %d: %w", id, ErrNotFound)
	}
	return nil
}

// ProjectWebhookSecret returns a project's webhook secret (for verifying webhooks only).
func (db *DB) ProjectWebhookSecret(ctx context.Context, id int64) (string, error) {
	var s *string
	if err := db.pool.QueryRow(ctx, `SELECT webhook_secret FROM projects WHERE id = $1`, id).Scan(&s); err != nil {
		return "", fmt.Errorf("webhook secret of project %d: %w", id, mapErr(err))
	}
	return deref(s), nil
}

// credsValue is the jsonb column's value: NULL for none.
func credsValue(f *FetchCredentials) *FetchCredentials {
	if f.empty() {
		return nil
	}
	return f
}

// ProjectFetchCredentials returns a project's fetch credentials (for the evaluating
// agent only), or nil.
func (db *DB) ProjectFetchCredentials(ctx context.Context, id int64) (*FetchCredentials, error) {
	var f *FetchCredentials
	if err := db.pool.QueryRow(ctx, `SELECT fetch_credentials FROM projects WHERE id = $1`, id).Scan(&f); err != nil {
		return nil, fmt.Errorf("fetch credentials of project %d: %w", id, mapErr(err))
	}
	return f, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// Page bounds a list query.
type Page struct {
	Limit  int
	Offset int
}
