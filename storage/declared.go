package storage

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Declarations are the objects a configuration file declares, already checked and
// with their secrets already hashed. ApplyDeclarations makes the database match them.
type Declarations struct {
	// Source names the file (an absolute path): the `declared` value of every object
	// applied, and what the API names when it refuses to change one.
	Source   string
	Users    []DeclaredUser
	APIKeys  []DeclaredAPIKey
	Agents   []DeclaredAgent
	Projects []DeclaredProject
}

// DeclaredUser is an account. PasswordHash "" keeps the account's current hash (its
// password file still verifies against it); a new account needs one.
type DeclaredUser struct {
	Username, Email, FullName, Role string
	PasswordHash                    string
}

// DeclaredAPIKey is an API key known by its SHA-256.
type DeclaredAPIKey struct {
	Name, Role string
	Hash       []byte
}

// DeclaredAgent is an agent's pinned public key (an authorized_keys line) and its
// fingerprint.
type DeclaredAgent struct {
	Name, PublicKey, Fingerprint string
	Push                         bool
}

// DeclaredProject is a project with its jobsets. Fields' secrets, FetchCredentials
// and OwnerKeyID are ignored; OwnerUser is the owning account's username ("": none).
type DeclaredProject struct {
	Fields            ProjectFields
	OwnerUser         string
	DeclarativeFile   string
	DeclarativeBranch string
	Jobsets           []JobsetFields
}

// DeclarationCounts count what one apply did to one kind of object.
type DeclarationCounts struct {
	Created, Updated, Removed int
}

// DeclarationReport is what ApplyDeclarations changed, per kind ("users", "api_keys",
// "agents", "projects", "jobsets"), and the agents it revoked (to disconnect them).
type DeclarationReport struct {
	Counts        map[string]*DeclarationCounts
	RevokedAgents []int64
}

// Changed says whether the apply changed anything.
func (r DeclarationReport) Changed() bool {
	for _, c := range r.Counts {
		if *c != (DeclarationCounts{}) {
			return true
		}
	}
	return false
}

func (r DeclarationReport) count(kind string) *DeclarationCounts {
	c, ok := r.Counts[kind]
	if !ok {
		c = &DeclarationCounts{}
		r.Counts[kind] = c
	}
	return c
}

// ApplyDeclarations makes the database hold d, in one transaction: objects are found
// by name (agents by key) and created or updated, and marked declared by d.Source.
// What d.Source declared before and declares no longer is undone: its API keys are
// deleted, its agents revoked, its users disabled (and signed out), and its projects
// and jobsets kept but no longer marked declared. Nothing changes when any of it fails.
func (db *DB) ApplyDeclarations(ctx context.Context, d Declarations) (DeclarationReport, error) {
	if d.Source == "" {
		return DeclarationReport{}, errors.New("apply declarations: no source")
	}
	var rep DeclarationReport
	var followers []int64
	err := pgx.BeginFunc(ctx, db.pool, func(tx pgx.Tx) error {
		rep, followers = DeclarationReport{Counts: map[string]*DeclarationCounts{}}, nil
		for _, step := range []func(context.Context, pgx.Tx, Declarations, DeclarationReport) error{applyUsers, applyAPIKeys} {
			if err := step(ctx, tx, d, rep); err != nil {
				return err
			}
		}
		if err := applyProjects(ctx, tx, d, rep, &followers); err != nil {
			return err
		}
		revoked, err := applyAgents(ctx, tx, d, rep)
		rep.RevokedAgents = revoked
		return err
	})
	if err != nil {
		return DeclarationReport{}, fmt.Errorf("apply declarations of %s: %w", d.Source, err)
	}
	if err := db.followParents(ctx, followers); err != nil {
		return rep, fmt.Errorf("apply declarations of %s: pull requests' jobsets: %w", d.Source, err)
	}
	return rep, nil
}

// upserted counts a row an upsert returned (inserted or updated) or did not (unchanged).
func upserted(c *DeclarationCounts, err error, inserted bool) error {
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil
	case err != nil:
		return err
	case inserted:
		c.Created++
	default:
		c.Updated++
	}
	return nil
}

func applyUsers(ctx context.Context, tx pgx.Tx, d Declarations, rep DeclarationReport) error {
	c := rep.count("users")
	names := make([]string, 0, len(d.Users))
	for _, u := range d.Users {
		names = append(names, u.Username)
		var id int64
		var inserted bool
		err := tx.QueryRow(ctx, `INSERT INTO users (username, email, full_name, role, password_hash, declared)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (username) DO UPDATE SET email = EXCLUDED.email, full_name = EXCLUDED.full_name,
				role = EXCLUDED.role, enabled = true, declared = EXCLUDED.declared,
				password_hash = coalesce(NULLIF($5, ''), users.password_hash)
			WHERE (users.email, users.full_name, users.role, users.enabled, users.declared) IS DISTINCT FROM
				(EXCLUDED.email, EXCLUDED.full_name, EXCLUDED.role, true, EXCLUDED.declared) OR $5 <> ''
			RETURNING id, xmax = 0`, u.Username, u.Email, u.FullName, u.Role, u.PasswordHash, d.Source).Scan(&id, &inserted)
		if err := upserted(c, err, inserted); err != nil {
			return fmt.Errorf("user %q: %w", u.Username, mapErr(err))
		}
		if err == nil && !inserted && u.PasswordHash != "" {
			// A new password signs the account out everywhere, as a change through the API does.
			if _, err := tx.Exec(ctx, `DELETE FROM sessions WHERE user_id = $1`, id); err != nil {
				return fmt.Errorf("user %q: %w", u.Username, err)
			}
		}
	}
	rows, err := tx.Query(ctx, `UPDATE users SET enabled = false, declared = NULL
		WHERE declared = $1 AND NOT (username = ANY($2)) RETURNING id`, d.Source, names)
	if err != nil {
		return fmt.Errorf("disable users no longer declared: %w", err)
	}
	gone, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return fmt.Errorf("disable users no longer declared: %w", err)
	}
	c.Removed += len(gone)
	if _, err := tx.Exec(ctx, `DELETE FROM sessions WHERE user_id = ANY($1)`, gone); err != nil {
		return fmt.Errorf("sign out users no longer declared: %w", err)
	}
	return nil
}

func applyAPIKeys(ctx context.Context, tx pgx.Tx, d Declarations, rep DeclarationReport) error {
	c := rep.count("api_keys")
	names := make([]string, 0, len(d.APIKeys))
	for _, k := range d.APIKeys {
		names = append(names, k.Name)
		var inserted bool
		err := tx.QueryRow(ctx, `INSERT INTO api_keys (name, role, key_hash, declared) VALUES ($1, $2, $3, $4)
			ON CONFLICT (name) WHERE declared IS NOT NULL DO UPDATE SET role = EXCLUDED.role,
				key_hash = EXCLUDED.key_hash, declared = EXCLUDED.declared
			WHERE (api_keys.role, api_keys.key_hash, api_keys.declared) IS DISTINCT FROM
				(EXCLUDED.role, EXCLUDED.key_hash, EXCLUDED.declared)
			RETURNING xmax = 0`, k.Name, k.Role, k.Hash, d.Source).Scan(&inserted)
		if err := upserted(c, err, inserted); err != nil {
			return fmt.Errorf("api key %q: %w", k.Name, mapErr(err))
		}
	}
	// A key removed from the configuration must stop working: it is deleted (its
	// sessions go with it).
	tag, err := tx.Exec(ctx, `DELETE FROM api_keys WHERE declared = $1 AND NOT (name = ANY($2))`, d.Source, names)
	if err != nil {
		return fmt.Errorf("delete api keys no longer declared: %w", err)
	}
	c.Removed += int(tag.RowsAffected())
	return nil
}

// applyAgents pins the declared keys. A key already pinned (even revoked) becomes
// the declared agent again; a declared agent whose key changed is revoked and the
// new key pinned; agents of d.Source no longer declared are revoked.
func applyAgents(ctx context.Context, tx pgx.Tx, d Declarations, rep DeclarationReport) ([]int64, error) {
	c := rep.count("agents")
	var revoked []int64
	fps := make([]string, 0, len(d.Agents))
	for _, a := range d.Agents {
		fps = append(fps, a.Fingerprint)
	}
	// First revoke what goes, so a renamed or re-keyed agent's name is free.
	rows, err := tx.Query(ctx, `UPDATE agents SET revoked_at = now(), connected = false, enabled = false,
		cache_token_hash = NULL, declared = NULL
		WHERE declared = $1 AND revoked_at IS NULL AND NOT (fingerprint = ANY($2)) RETURNING id`, d.Source, fps)
	if err != nil {
		return nil, fmt.Errorf("revoke agents no longer declared: %w", err)
	}
	if revoked, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
		return nil, fmt.Errorf("revoke agents no longer declared: %w", err)
	}
	c.Removed += len(revoked)
	for _, a := range d.Agents {
		var inserted bool
		err := tx.QueryRow(ctx, `INSERT INTO agents (name, public_key, fingerprint, push, declared) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (fingerprint) DO UPDATE SET name = EXCLUDED.name, push = EXCLUDED.push,
				declared = EXCLUDED.declared, revoked_at = NULL,
				enabled = agents.enabled OR agents.revoked_at IS NOT NULL
			WHERE (agents.name, agents.push, agents.declared, agents.revoked_at IS NULL) IS DISTINCT FROM
				(EXCLUDED.name, EXCLUDED.push, EXCLUDED.declared, true)
			RETURNING xmax = 0`, a.Name, a.PublicKey, a.Fingerprint, a.Push, d.Source).Scan(&inserted)
		if err := upserted(c, err, inserted); err != nil {
			var pe interface{ SQLState() string }
			if errors.As(err, &pe) && pe.SQLState() == "23505" {
				return nil, fmt.Errorf("agent %q: %w: another agent, not revoked, has this name (revoke it or rename one)",
					a.Name, ErrConflict)
			}
			return nil, fmt.Errorf("agent %q: %w", a.Name, mapErr(err))
		}
	}
	return revoked, nil
}
