package storage

import (
	"context"
	"fmt"
	"time"
)

// Session is a browser's sign-in: a user's, or one made with an API key. Only the
// SHA-256 of the cookie value is stored (the key sessions are found by).
type Session struct {
	UserID    *int64
	APIKeyID  *int64
	CSRFToken string
	CreatedAt time.Time
	ExpiresAt time.Time
	// Name and Role are the signed-in principal's now: the user's username and role, or
	// the key's name and role.
	Name string
	Role string
}

// CreateSession stores a session for a user or an API key (exactly one non-nil).
func (db *DB) CreateSession(ctx context.Context, tokenHash []byte, userID, apiKeyID *int64, csrf string, expires time.Time) error {
	_, err := db.pool.Exec(ctx, `INSERT INTO sessions (token_hash, user_id, api_key_id, csrf_token, expires_at)
		VALUES ($1, $2, $3, $4, $5)`, tokenHash, userID, apiKeyID, csrf, expires)
	if err != nil {
		return fmt.Errorf("create session: %w", mapErr(err))
	}
	return nil
}

// SessionByHash finds a live session with the principal it signs in. A session that
// has expired is deleted and, like one whose user is disabled, is ErrNotFound.
func (db *DB) SessionByHash(ctx context.Context, tokenHash []byte) (Session, error) {
	var s Session
	var enabled, expired bool
	// The database's clock decides expiry, as it does for the sweep.
	err := db.pool.QueryRow(ctx, `SELECT s.user_id, s.api_key_id, s.csrf_token, s.created_at, s.expires_at,
			coalesce(u.username, k.name, ''), coalesce(u.role, k.role, ''), coalesce(u.enabled, k.id IS NOT NULL),
			s.expires_at <= now()
		FROM sessions s LEFT JOIN users u ON u.id = s.user_id LEFT JOIN api_keys k ON k.id = s.api_key_id
		WHERE s.token_hash = $1`, tokenHash).
		Scan(&s.UserID, &s.APIKeyID, &s.CSRFToken, &s.CreatedAt, &s.ExpiresAt, &s.Name, &s.Role, &enabled, &expired)
	if err != nil {
		return Session{}, fmt.Errorf("look up session: %w", mapErr(err))
	}
	if expired {
		if err := db.DeleteSession(ctx, tokenHash); err != nil {
			db.log.Warn("delete expired session", "err", err)
		}
		return Session{}, fmt.Errorf("look up session: expired: %w", ErrNotFound)
	}
	if !enabled {
		return Session{}, fmt.Errorf("look up session: account disabled: %w", ErrNotFound)
	}
	return s, nil
}

// ExtendSession moves a session's expiry to expires (sliding expiry).
func (db *DB) ExtendSession(ctx context.Context, tokenHash []byte, expires time.Time) error {
	if _, err := db.pool.Exec(ctx, `UPDATE sessions SET expires_at = $2 WHERE token_hash = $1`, tokenHash, expires); err != nil {
		return fmt.Errorf("extend session: %w", err)
	}
	return nil
}

// DeleteSession ends a session; ending one that does not exist is not an error.
func (db *DB) DeleteSession(ctx context.Context, tokenHash []byte) error {
	if _, err := db.pool.Exec(ctx, `DELETE FROM sessions WHERE token_hash = $1`, tokenHash); err != nil {
		return fmt.Errorf("delete session: %w", err)
	}
	return nil
}

// DeleteUserSessions ends every session of a user but the one whose hash is keep
// (nil: all of them), and returns how many it ended.
func (db *DB) DeleteUserSessions(ctx context.Context, userID int64, keep []byte) (int64, error) {
	tag, err := db.pool.Exec(ctx, `DELETE FROM sessions WHERE user_id = $1 AND ($2::bytea IS NULL OR token_hash <> $2)`,
		userID, keep)
	if err != nil {
		return 0, fmt.Errorf("delete sessions of user %d: %w", userID, err)
	}
	return tag.RowsAffected(), nil
}

// DeleteExpiredSessions deletes every expired session and returns how many.
func (db *DB) DeleteExpiredSessions(ctx context.Context) (int64, error) {
	tag, err := db.pool.Exec(ctx, `DELETE FROM sessions WHERE expires_at <= now()`)
	if err != nil {
		return 0, fmt.Errorf("delete expired sessions: %w", err)
	}
	return tag.RowsAffected(), nil
}
