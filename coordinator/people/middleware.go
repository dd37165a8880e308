package people

import (
	"context"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

type sessionKey struct{}

// currentSession is the hash of the session that authenticated ctx's request, nil if
// none did (a password change keeps that one session).
func currentSession(ctx context.Context) []byte {
	h, _ := ctx.Value(sessionKey{}).([]byte)
	return h
}

// Middleware runs on every route (dashboard and API): a request with a live session
// cookie gets the session's principal (auth.WithPrincipal) with its CSRF token. A
// request with an Authorization header is left to the API key middleware, and one
// that already has a principal (the dashboard's in-process submits) is left as it is.
//
// A cookie-authenticated write to the API must carry the session's CSRF token in
// X-CSRF-Token, or it is refused (403): a browser sends the cookie with requests other
// sites make it send. The dashboard's forms carry theirs in a field, checked there.
func (s *Service) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			next.ServeHTTP(w, r)
			return
		}
		if _, ok := auth.FromContext(r.Context()); ok {
			next.ServeHTTP(w, r)
			return
		}
		c, err := r.Cookie(CookieName)
		if err != nil || c.Value == "" {
			next.ServeHTTP(w, r)
			return
		}
		hash := tokenHash(c.Value)
		sess, err := s.db.SessionByHash(r.Context(), hash)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			// Ended, expired or its account disabled: the browser may forget it.
			http.SetCookie(w, s.Cookie(r, ""))
			next.ServeHTTP(w, r)
			return
		case err != nil:
			// Anonymous is the safe side: pages that need nobody still answer.
			s.log.Warn("look up a session", "err", err)
			next.ServeHTTP(w, r)
			return
		}
		if writes(r) && strings.HasPrefix(r.URL.Path, "/api/") &&
			subtle.ConstantTimeCompare([]byte(r.Header.Get(CSRFHeader)), []byte(sess.CSRFToken)) != 1 {
			httpkit.WriteError(w, r, http.StatusForbidden,
				"a request signed in by a session cookie must carry the session's CSRF token in the "+CSRFHeader+" header")
			return
		}
		s.slide(w, r, hash, sess)
		p := auth.Principal{Name: sess.Name, Role: sess.Role, CSRF: sess.CSRFToken}
		if sess.UserID != nil {
			p.UserID = *sess.UserID
		}
		if sess.APIKeyID != nil {
			p.KeyID = *sess.APIKeyID
		}
		ctx := context.WithValue(auth.WithPrincipal(r.Context(), p), sessionKey{}, hash)
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// slide moves a used session's expiry to a full TTL from now, at most once per
// extendEvery, and renews the cookie's lifetime with it.
func (s *Service) slide(w http.ResponseWriter, r *http.Request, hash []byte, sess storage.Session) {
	now := time.Now()
	if sess.ExpiresAt.After(now.Add(s.ttl - extendEvery)) {
		return
	}
	if err := s.db.ExtendSession(r.Context(), hash, now.Add(s.ttl)); err != nil {
		s.log.Warn("extend a session", "err", err)
		return
	}
	c, _ := r.Cookie(CookieName)
	http.SetCookie(w, s.Cookie(r, c.Value))
}

// writes reports whether r may change something (anything but GET, HEAD, OPTIONS).
func writes(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}
