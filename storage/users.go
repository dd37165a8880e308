package storage

import (
	"context"
	"fmt"
	"time"
)

// User is a person's account. The password hash is deliberately not a field: it is
// read only by UserCredentials, so no answer built from a User can carry it.
type User struct {
	ID          int64
	Username    string
	Email       string
	FullName    string
	Role        string
	Enabled     bool
	CreatedAt   time.Time
	LastLoginAt *time.Time
	// Declared names the config file that declares the account ("": none).
	Declared string
}

// NewUser is an account to create; PasswordHash is already hashed (auth.HashPassword).
type NewUser struct {
	Username     string
	Email        string
	FullName     string
	Role         string
	PasswordHash string
}

// UserChanges are the columns an update sets; nil leaves one as it is.
type UserChanges struct {
	Email        *string
	FullName     *string
	Role         *string
	Enabled      *bool
	PasswordHash *string
}

const userColumns = `id, username, email, full_name, role, enabled, created_at, last_login_at, coalesce(declared, '')`

func scanUser(row scanner) (User, error) {
	var u User
	err := row.Scan(&u.ID, &u.Username, &u.Email, &u.FullName, &u.Role, &u.Enabled, &u.CreatedAt, &u.LastLoginAt, &u.Declared)
	return u, err
}

// CreateUser stores a new account: a taken username is ErrConflict, an unknown role
// ErrNotFound.
func (db *DB) CreateUser(ctx context.Context, n NewUser) (User, error) {
	u, err := scanUser(db.pool.QueryRow(ctx, `INSERT INTO users (username, email, full_name, role, password_hash)
		VALUES ($1, $2, $3, $4, $5) RETURNING `+userColumns, n.Username, n.Email, n.FullName, n.Role, n.PasswordHash))
	if err != nil {
		return User{}, fmt.Errorf("create user %q: %w", n.Username, mapErr(err))
	}
	return u, nil
}

// GetUser finds an account by id.
func (db *DB) GetUser(ctx context.Context, id int64) (User, error) {
	u, err := scanUser(db.pool.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE id = $1`, id))
	if err != nil {
		return User{}, fmt.Errorf("get user %d: %w", id, mapErr(err))
	}
	return u, nil
}

// UserCredentials finds an account by username with its password hash, for signing
// in.
func (db *DB) UserCredentials(ctx context.Context, username string) (User, string, error) {
	var u User
	var hash string
	err := db.pool.QueryRow(ctx, `SELECT `+userColumns+`, password_hash FROM users WHERE username = $1`, username).
		Scan(&u.ID, &u.Username, &u.Email, &u.FullName, &u.Role, &u.Enabled, &u.CreatedAt, &u.LastLoginAt, &u.Declared, &hash)
	if err != nil {
		return User{}, "", fmt.Errorf("get user %q: %w", username, mapErr(err))
	}
	return u, hash, nil
}

// UserPasswordHash is the password hash of account id (to check a current password).
func (db *DB) UserPasswordHash(ctx context.Context, id int64) (string, error) {
	var hash string
	if err := db.pool.QueryRow(ctx, `SELECT password_hash FROM users WHERE id = $1`, id).Scan(&hash); err != nil {
		return "", fmt.Errorf("get user %d: %w", id, mapErr(err))
	}
	return hash, nil
}

// ListUsers returns a page of accounts by username, and their number.
func (db *DB) ListUsers(ctx context.Context, page Page) ([]User, int64, error) {
	var total int64
	if err := db.pool.QueryRow(ctx, `SELECT count(*) FROM users`).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count users: %w", err)
	}
	rows, err := db.pool.Query(ctx, `SELECT `+userColumns+` FROM users ORDER BY username LIMIT $1 OFFSET $2`,
		page.Limit, page.Offset)
	if err != nil {
		return nil, 0, fmt.Errorf("list users: %w", err)
	}
	defer rows.Close()
	items := make([]User, 0, page.Limit)
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, 0, fmt.Errorf("list users: %w", err)
		}
		items = append(items, u)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("list users: %w", err)
	}
	return items, total, nil
}

// UpdateUser sets the columns c names. An unknown role is ErrNotFound.
func (db *DB) UpdateUser(ctx context.Context, id int64, c UserChanges) (User, error) {
	u, err := scanUser(db.pool.QueryRow(ctx, `UPDATE users SET email = coalesce($2, email),
		full_name = coalesce($3, full_name), role = coalesce($4, role), enabled = coalesce($5, enabled),
		password_hash = coalesce($6, password_hash) WHERE id = $1 RETURNING `+userColumns,
		id, c.Email, c.FullName, c.Role, c.Enabled, c.PasswordHash))
	if err != nil {
		return User{}, fmt.Errorf("update user %d: %w", id, mapErr(err))
	}
	return u, nil
}

// DeleteUser deletes an account; its sessions and stars go with it, and the projects
// it owned lose their owner.
func (db *DB) DeleteUser(ctx context.Context, id int64) error {
	tag, err := db.pool.Exec(ctx, `DELETE FROM users WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("delete user %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("delete user %d: %w", id, ErrNotFound)
	}
	return nil
}

// RecordLogin sets the account's last sign-in time to now.
func (db *DB) RecordLogin(ctx context.Context, id int64) error {
	if _, err := db.pool.Exec(ctx, `UPDATE users SET last_login_at = now() WHERE id = $1`, id); err != nil {
		return fmt.Errorf("record sign-in of user %d: %w", id, err)
	}
	return nil
}
