// Package people serves accounts and their browser sessions: the users API and the
// signed-in user's own (/api/v1/users, /api/v1/me, starred jobs), signing in with a
// password or an API key and out again (the dashboard's /login calls Service), and
// the middleware that turns a session cookie into the request's principal.
//
// A session is a random 32-byte token in the fc_session cookie (HttpOnly,
// SameSite=Lax, Secure over TLS); PostgreSQL keeps only its SHA-256, with the
// session's CSRF token and a sliding expiry. The principal is read afresh on every
// request, so disabling or deleting a user, or revoking the key a session was signed
// in with, ends its sessions at once.
package people

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/storage"
)

// CookieName is the session cookie.
const CookieName = "fc_session"

// CSRFHeader is the header a cookie-authenticated API write carries the session's
// CSRF token in (scripts read it from the page).
const CSRFHeader = "X-CSRF-Token"

// Defaults.
const (
	// DefaultSessionTTL is how long a session lives after its last use.
	DefaultSessionTTL = 14 * 24 * time.Hour
	// extendEvery bounds the writes of sliding expiry: a session's expiry is moved at
	// most once per this interval, however many requests it makes.
	extendEvery = time.Minute
	// hashSlots is how many password hashes may run at once: each takes 19 MiB, and a
	// burst of sign-ins must not take the coordinator's memory.
	hashSlots = 4
)

// Config configures the service.
type Config struct {
	Logger *slog.Logger
	// SessionTTL is how long a session lives after its last use (default
	// DefaultSessionTTL).
	SessionTTL time.Duration
}

// Service signs people in and out and serves the accounts API.
type Service struct {
	db  *storage.DB
	log *slog.Logger
	ttl time.Duration
	// slots bounds concurrent password hashing (hashSlots).
	slots chan struct{}
	// dummy is a hash checked when no such user exists, so a sign-in takes as long
	// whether or not the username is known.
	dummyOnce sync.Once
	dummy     string
}

// New returns the service over db.
func New(cfg Config, db *storage.DB) *Service {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ttl := cfg.SessionTTL
	if ttl <= 0 {
		ttl = DefaultSessionTTL
	}
	return &Service{db: db, log: log, ttl: ttl, slots: make(chan struct{}, hashSlots)}
}

// hashPassword is auth.HashPassword within the hashing slots.
func (s *Service) hashPassword(ctx context.Context, password string) (string, error) {
	if err := s.acquire(ctx); err != nil {
		return "", err
	}
	defer func() { <-s.slots }()
	return auth.HashPassword(password)
}

// checkPassword is auth.CheckPassword within the hashing slots.
func (s *Service) checkPassword(ctx context.Context, hash, password string) (bool, error) {
	if err := s.acquire(ctx); err != nil {
		return false, err
	}
	defer func() { <-s.slots }()
	return auth.CheckPassword(hash, password)
}

func (s *Service) acquire(ctx context.Context) error {
	select {
	case s.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait to check a password: %w", ctx.Err())
	}
}

// SignIn checks a username and password and starts a session, returning the value
// of its cookie. Any wrong credential (no such user, a wrong password, a disabled
// account) is auth.ErrBadCredentials, in about the same time.
func (s *Service) SignIn(ctx context.Context, username, password string) (string, error) {
	s.sweep(ctx)
	u, hash, err := s.db.UserCredentials(ctx, username)
	if errors.Is(err, storage.ErrNotFound) {
		s.dummyOnce.Do(func() { s.dummy, _ = auth.HashPassword("not anybody's password") })
		_, _ = s.checkPassword(ctx, s.dummy, password)
		return "", auth.ErrBadCredentials
	}
	if err != nil {
		return "", err
	}
	ok, err := s.checkPassword(ctx, hash, password)
	if err != nil {
		return "", fmt.Errorf("check the password of %q: %w", username, err)
	}
	if !ok || !u.Enabled {
		return "", auth.ErrBadCredentials
	}
	value, err := s.start(ctx, &u.ID, nil)
	if err != nil {
		return "", err
	}
	if err := s.db.RecordLogin(ctx, u.ID); err != nil {
		s.log.Warn("record sign-in", "user", u.Username, "err", err)
	}
	s.log.Info("signed in", "user", u.Username)
	return value, nil
}

// SignInWithKey starts a session whose principal is the API key key (its name and
// role), returning the value of its cookie; an unknown key is auth.ErrBadCredentials.
func (s *Service) SignInWithKey(ctx context.Context, key string) (string, error) {
	s.sweep(ctx)
	key = strings.TrimSpace(key)
	if key == "" {
		return "", auth.ErrBadCredentials
	}
	k, err := s.db.APIKeyByHash(ctx, auth.HashKey(key))
	if errors.Is(err, storage.ErrNotFound) {
		return "", auth.ErrBadCredentials
	}
	if err != nil {
		return "", err
	}
	value, err := s.start(ctx, nil, &k.ID)
	if err != nil {
		return "", err
	}
	s.log.Info("signed in with an API key", "key", k.Name)
	return value, nil
}

// SignOut ends the session of a cookie value; an unknown or empty one is no error.
func (s *Service) SignOut(ctx context.Context, cookieValue string) error {
	if cookieValue == "" {
		return nil
	}
	return s.db.DeleteSession(ctx, tokenHash(cookieValue))
}

// Cookie is the session cookie to set for value on the answer to r; value "" makes
// the cookie that clears it. It is Secure when r came over TLS (directly, or through
// a proxy that says so: a false claim only makes the cookie stricter).
func (s *Service) Cookie(r *http.Request, value string) *http.Cookie {
	c := &http.Cookie{Name: CookieName, Value: value, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode,
		Secure: overTLS(r), MaxAge: int(s.ttl / time.Second)}
	if value == "" {
		c.MaxAge = -1
	}
	return c
}

// overTLS reports whether r reached the coordinator over TLS.
func overTLS(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

// start stores a new session for a user or a key and returns its cookie value.
func (s *Service) start(ctx context.Context, userID, keyID *int64) (string, error) {
	value, err := randomToken()
	if err != nil {
		return "", err
	}
	csrf, err := randomToken()
	if err != nil {
		return "", err
	}
	if err := s.db.CreateSession(ctx, tokenHash(value), userID, keyID, csrf, time.Now().Add(s.ttl)); err != nil {
		return "", err
	}
	return value, nil
}

// sweep deletes expired sessions (an indexed delete), on each sign-in: sessions are
// made only there, so they cannot pile up faster than they are swept.
func (s *Service) sweep(ctx context.Context) {
	if _, err := s.db.DeleteExpiredSessions(ctx); err != nil {
		s.log.Warn("delete expired sessions", "err", err)
	}
}

// randomToken is 32 random bytes, base64url without padding.
func randomToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate a session token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// tokenHash is what the database keeps of a cookie value.
func tokenHash(value string) []byte {
	h := sha256.Sum256([]byte(value))
	return h[:]
}
