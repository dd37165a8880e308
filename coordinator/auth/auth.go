// Package auth owns who may do what: API keys (generation and hashing), roles and the
// permissions they grant, and the HTTP middleware that enforces them.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/fc-ci/fc/storage"
)

// Permission names one kind of write (or admin read).
type Permission string

// Permissions checked by routes.
const (
	PermAdmin          Permission = "admin"           // anything, including admin-only reads
	PermCreateProjects Permission = "create-projects" // create projects and jobsets
	PermEvalJobset     Permission = "eval-jobset"     // trigger evaluations
	PermCancelBuild    Permission = "cancel-build"
	PermRestartJobs    Permission = "restart-jobs"
	PermBumpToFront    Permission = "bump-to-front"
)

// Allows reports whether role grants perm. admin grants everything; read-only nothing;
// every other role grants the permission of the same name.
func Allows(role string, perm Permission) bool {
	switch role {
	case storage.RoleAdmin:
		return true
	case storage.RoleReadOnly:
		return false
	}
	return perm != PermAdmin && string(perm) == role
}

// ManagesProject reports whether p may manage (change, delete, add and change jobsets
// of) a project owned by the key ownerKeyID or, when given, by the user ownerUserID
// (nil: no owner of that kind; a project has at most one). This is Hydra's model:
// admins manage every project; a create-projects key or user manages the projects it
// owns and no others; nobody else manages any. A project with no owner (made before
// projects had owners, or whose owner was deleted) is for admins only.
func ManagesProject(p Principal, ownerKeyID *int64, ownerUserID ...*int64) bool {
	if Allows(p.Role, PermAdmin) {
		return true
	}
	if !Allows(p.Role, PermCreateProjects) {
		return false
	}
	if p.KeyID != 0 && ownerKeyID != nil && *ownerKeyID == p.KeyID {
		return true
	}
	for _, u := range ownerUserID {
		if p.UserID != 0 && u != nil && *u == p.UserID {
			return true
		}
	}
	return false
}

// Roles are the names a key may be given.
var roles = []string{storage.RoleAdmin, storage.RoleReadOnly, storage.RoleCreateProjects,
	storage.RoleEvalJobset, storage.RoleCancelBuild, storage.RoleRestartJobs, storage.RoleBumpToFront}

// ValidRole reports whether name is a known role.
func ValidRole(name string) bool {
	for _, r := range roles {
		if r == name {
			return true
		}
	}
	return false
}

// RoleNames lists the known roles.
func RoleNames() []string { return append([]string(nil), roles...) }

// KeyPrefix starts every API key, so leaked keys are easy to recognise.
const KeyPrefix = "fc_"

// NewKey returns a fresh key ("fc_" + 32 hex characters) and its hash.
func NewKey() (key string, hash []byte, err error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", nil, fmt.Errorf("generate api key: %w", err)
	}
	key = KeyPrefix + hex.EncodeToString(b)
	return key, HashKey(key), nil
}

// HashKey is the SHA-256 stored for a key. Keys are 128 random bits, so a fast hash is
// enough; passwords, which people choose, use argon2id instead.
func HashKey(key string) []byte {
	h := sha256.Sum256([]byte(key))
	return h[:]
}

// CreateKey makes a new key with role and stores its hash. The key is returned once
// and never again: only its hash is kept.
func CreateKey(ctx context.Context, db *storage.DB, name, role string) (storage.APIKey, string, error) {
	if !ValidRole(role) {
		return storage.APIKey{}, "", fmt.Errorf("role %q is not one of %v", role, roles)
	}
	key, hash, err := NewKey()
	if err != nil {
		return storage.APIKey{}, "", err
	}
	k, err := db.CreateAPIKey(ctx, name, role, hash)
	if err != nil {
		return storage.APIKey{}, "", err
	}
	return k, key, nil
}

// CacheTokenPrefix starts every agent's cache read token (unlike an API key's
// KeyPrefix), so a private cache looks a presented secret up in one place only.
const CacheTokenPrefix = "fcc_"

// NewCacheToken returns a fresh cache read token for an agent ("fcc_" + 64 hex
// characters) and its hash (HashKey). The coordinator gives one to each agent
// session (protocol.Welcome.CacheToken) and keeps only the hash.
func NewCacheToken() (token string, hash []byte, err error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", nil, fmt.Errorf("generate cache token: %w", err)
	}
	token = CacheTokenPrefix + hex.EncodeToString(b)
	return token, HashKey(token), nil
}

// KeyStore finds keys by hash.
type KeyStore interface {
	APIKeyByHash(ctx context.Context, hash []byte) (storage.APIKey, error)
}

type ctxKey struct{}

// Principal is who made a request: an API key (KeyID), or a person signed in to the
// dashboard (UserID, with their session's CSRF token).
type Principal struct {
	KeyID  int64
	UserID int64
	Name   string
	Role   string
	// CSRF is the token a form of this principal's browser session must carry; empty
	// when the request was not authenticated by a session cookie.
	CSRF string
}

// FromContext returns the request's principal, if it presented valid credentials.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(ctxKey{}).(Principal)
	return p, ok
}

// WithPrincipal attaches a principal to ctx (used by sessions and tests).
func WithPrincipal(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, ctxKey{}, p)
}

// ErrorWriter writes a JSON error with an HTTP status.
type ErrorWriter func(w http.ResponseWriter, r *http.Request, status int, msg string)

// PresentedKey is the API key r carries: a bearer token, or the password of HTTP basic
// authentication (how Nix and curl send a netrc entry, and what a browser's login
// prompt sends); basic says which. key is "" when r carries neither, or a malformed one.
func PresentedKey(r *http.Request) (key string, basic bool) {
	if _, pass, ok := r.BasicAuth(); ok {
		return pass, true
	}
	if scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " "); ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(tok), false
	}
	return "", false
}

// basicAllowed reports whether r may authenticate with HTTP basic credentials: reads
// only. A browser sends basic credentials it was once given to every request to the
// site by itself, so they must never authorise a write (or open a WebSocket, which
// cross-site pages may do).
func basicAllowed(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) && r.Header.Get("Upgrade") == ""
}

// Middleware authenticates requests that carry an API key: a bearer key, or on reads
// the password of HTTP basic authentication (PresentedKey). A request without one
// passes anonymously (public reads); a request with an unknown or malformed key is
// refused with 401, so a typo is never silently treated as anonymous.
func Middleware(keys KeyStore, fail ErrorWriter) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") == "" {
				next.ServeHTTP(w, r)
				return
			}
			key, basic := PresentedKey(r)
			if key == "" || (basic && !basicAllowed(r)) {
				fail(w, r, http.StatusUnauthorized, "Authorization header must be \"Bearer <api key>\" (HTTP basic with the key as password is accepted for reads only)")
				return
			}
			k, err := keys.APIKeyByHash(r.Context(), HashKey(key))
			if errors.Is(err, storage.ErrNotFound) {
				fail(w, r, http.StatusUnauthorized, "unknown API key")
				return
			}
			if err != nil {
				fail(w, r, http.StatusServiceUnavailable, "cannot check the API key: database unavailable")
				return
			}
			ctx := WithPrincipal(r.Context(), Principal{KeyID: k.ID, Name: k.Name, Role: k.Role})
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}

// AgentTokens finds the agent whose current cache read token has a hash; any other
// hash, and the token of a revoked agent, is storage.ErrNotFound.
type AgentTokens interface {
	AgentByCacheToken(ctx context.Context, hash []byte) (id int64, name string, err error)
}

// Readers are who may read a private binary cache: holders of an API key, and agents
// with their current cache read token (they substitute from the cache they build for).
type Readers interface {
	KeyStore
	AgentTokens
}

// RequireKey lets a request through only when it presents a valid API key of any role
// (PresentedKey): what a private cache asks of its readers (cache.private). A request
// Middleware already authenticated passes without a second lookup. deny answers the
// others: err is nil when no key or an unknown one was presented, the lookup's failure
// otherwise.
func RequireKey(keys KeyStore, deny func(w http.ResponseWriter, r *http.Request, err error)) func(http.Handler) http.Handler {
	return requireSecret(keys, nil, deny)
}

// RequireReader is RequireKey for the binary cache itself: it also lets through an
// agent presenting its current cache read token (Nix sends it from a netrc file, as
// the basic password; the login is not checked).
func RequireReader(readers Readers, deny func(w http.ResponseWriter, r *http.Request, err error)) func(http.Handler) http.Handler {
	return requireSecret(readers, readers, deny)
}

// requireSecret is RequireKey, and with agents RequireReader.
func requireSecret(keys KeyStore, agents AgentTokens, deny func(w http.ResponseWriter, r *http.Request, err error)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, ok := FromContext(r.Context()); ok {
				next.ServeHTTP(w, r)
				return
			}
			key, _ := PresentedKey(r)
			if key == "" {
				deny(w, r, nil)
				return
			}
			var err error
			if agents != nil && strings.HasPrefix(key, CacheTokenPrefix) {
				_, _, err = agents.AgentByCacheToken(r.Context(), HashKey(key))
			} else {
				_, err = keys.APIKeyByHash(r.Context(), HashKey(key))
			}
			switch {
			case err == nil:
				next.ServeHTTP(w, r)
			case errors.Is(err, storage.ErrNotFound):
				deny(w, r, nil)
			default:
				deny(w, r, err)
			}
		})
	}
}

// Require lets a request through only if its principal's role grants perm:
// 401 without credentials, 403 with a role that does not allow it.
func Require(perm Permission, fail ErrorWriter) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p, ok := FromContext(r.Context())
			if !ok {
				fail(w, r, http.StatusUnauthorized, "this request needs an API key (Authorization: Bearer <key>)")
				return
			}
			if !Allows(p.Role, perm) {
				fail(w, r, http.StatusForbidden, fmt.Sprintf("role %q may not do this (needs %s)", p.Role, perm))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}
