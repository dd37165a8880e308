package storage

import (
	"context"
	"fmt"
	"time"
)

// Roles, as seeded by the first migration.
const (
	RoleAdmin          = "admin"
	RoleReadOnly       = "read-only"
	RoleCreateProjects = "create-projects"
	RoleEvalJobset     = "eval-jobset"
	RoleCancelBuild    = "cancel-build"
	RoleRestartJobs    = "restart-jobs"
	RoleBumpToFront    = "bump-to-front"
)

// APIKey is a stored key; the key itself is never stored, only its SHA-256.
type APIKey struct {
	ID         int64
	Name       string
	Role       string
	CreatedAt  time.Time
	LastUsedAt *time.Time
	// Declared names the config file that declares the key ("": none).
	Declared string
}

const apiKeyColumns = `id, name, role, created_at, last_used_at, coalesce(declared, '')`

func scanAPIKey(row scanner) (APIKey, error) {
	var k APIKey
	err := row.Scan(&k.ID, &k.Name, &k.Role, &k.CreatedAt, &k.LastUsedAt, &k.Declared)
	return k, err
}

// CreateAPIKey stores the hash of a new key. An unknown role is ErrNotFound.
func (db *DB) CreateAPIKey(ctx context.Context, name, role string, hash []byte) (APIKey, error) {
	k, err := scanAPIKey(db.pool.QueryRow(ctx, `INSERT INTO api_keys (name, role, key_hash) VALUES ($1, $2, $3)
		RETURNING `+apiKeyColumns, name, role, hash))
	if err != nil {
		return APIKey{}, fmt.Errorf("create api key %q: %w", name, mapErr(err))
	}
	return k, nil
}

// APIKeyByHash finds the key with this hash and records its use (at most once a minute,
// so reads do not turn into a write per request).
func (db *DB) APIKeyByHash(ctx context.Context, hash []byte) (APIKey, error) {
	k, err := scanAPIKey(db.pool.QueryRow(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE key_hash = $1`, hash))
	if err != nil {
		return APIKey{}, fmt.Errorf("look up api key: %w", mapErr(err))
	}
	if k.LastUsedAt == nil || time.Since(*k.LastUsedAt) > time.Minute {
		if _, err := db.pool.Exec(ctx, `UPDATE api_keys SET last_used_at = now() WHERE id = $1`, k.ID); err != nil {
			db.log.Warn("record api key use", "key", k.ID, "err", err)
		}
	}
	return k, nil
}

// GetAPIKey finds a key by id.
func (db *DB) GetAPIKey(ctx context.Context, id int64) (APIKey, error) {
	k, err := scanAPIKey(db.pool.QueryRow(ctx, `SELECT `+apiKeyColumns+` FROM api_keys WHERE id = $1`, id))
	if err != nil {
		return APIKey{}, fmt.Errorf("get api key %d: %w", id, mapErr(err))
	}
	return k, nil
}

// ListAPIKeys returns a page of keys, newest first.
func (db *DB) ListAPIKeys(ctx context.Context, page Page) ([]APIKey, int64, error) {
	var total int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM api_keys`).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count api keys: %w", err)
	}
	rows, err := db.pool.Query(ctx, `SELECT `+apiKeyColumns+` FROM api_keys ORDER BY id DESC LIMIT $1 OFFSET $2`,
		page.Limit, page.Offset)
	if err != nil {
		return nil, 0, fmt.Errorf("list api keys: %w", err)
	}
	defer rows.Close()
	var items []APIKey
	for rows.Next() {
		k, err := scanAPIKey(rows)
		if err != nil {
			return nil, 0, fmt.Errorf("list api keys: %w", err)
		}
		items = append(items, k)
	}
	return items, total, rows.Err()
}

// DeleteAPIKey revokes a key.
func (db *DB) DeleteAPIKey(ctx context.Context, id int64) error {
	tag, err := db.pool.Exec(ctx, `DELETE FROM api_keys WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("delete api key %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("delete api key %d: %w", id, ErrNotFound)
	}
	return nil
}
