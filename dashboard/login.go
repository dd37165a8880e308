package dashboard

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
)

// Accounts signs people in and out: coordinator/people implements it.
type Accounts interface {
	// SignIn checks a username and password and starts a session; it returns the
	// value of the session cookie, or auth.ErrBadCredentials.
	SignIn(ctx context.Context, username, password string) (cookieValue string, err error)
	// SignInWithKey starts a session for an API key, or returns auth.ErrBadCredentials.
	SignInWithKey(ctx context.Context, key string) (cookieValue string, err error)
	// SignOut ends the session of a cookie value.
	SignOut(ctx context.Context, cookieValue string) error
	// Cookie is the session cookie holding value on the answer to r; "" clears it.
	Cookie(r *http.Request, value string) *http.Cookie
}

// Login CSRF: the sign-in form has no session to carry a token from, so it is
// protected by a double-submit token (a random value both in the fc_login cookie and
// in the form's loginField, which another site can neither read nor set) and by the
// Origin header when the browser sends one.
const (
	loginCookie = "fc_login"
	loginField  = "login_csrf"
	// loginTokenAge is how long a sign-in form stays usable.
	loginTokenAge = 3600
)

// signInFailed is the one message of every failed sign-in: it must not say whether
// the user exists.
const signInFailed = "Sign-in failed: wrong username or password, or an API key that is not valid."

// loginRoutes serves /login and /logout.
func (d *Dashboard) loginRoutes(r chi.Router) {
	r.Get("/login", d.loginPage)
	r.Post("/login", d.login)
	r.With(d.forms).Post("/logout", d.logout)
}

// loginPage shows the sign-in forms with a fresh login token.
func (d *Dashboard) loginPage(w http.ResponseWriter, r *http.Request) {
	d.showLogin(w, r, http.StatusOK, "", r.URL.Query().Get("next"), "")
}

// showLogin renders the sign-in forms (with msg as the error, if any) and sets the
// login token's cookie; the token stays the one the browser has, so two open sign-in
// tabs both work.
func (d *Dashboard) showLogin(w http.ResponseWriter, r *http.Request, status int, msg, next, username string) {
	token := ""
	if c, err := r.Cookie(loginCookie); err == nil && len(c.Value) == 43 {
		token = c.Value
	} else if token, err = loginToken(); err != nil {
		d.fail(w, r, err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Value: token, Path: "/login", MaxAge: loginTokenAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: overTLS(r)})
	v := view{"Title": "Sign in", "Crumbs": []Crumb{{Name: "Sign in"}}, "LoginToken": token,
		"Next": safeNext(next), "Username": username, "Enabled": d.cfg.Accounts != nil}
	if msg != "" {
		v["Error"] = msg
	}
	d.render(w, r, status, "login", v)
}

// login signs in with a username and password, or with an API key (the "key" field),
// and sends the browser on to next.
func (d *Dashboard) login(w http.ResponseWriter, r *http.Request) {
	next, username := r.PostFormValue("next"), r.PostFormValue("username")
	if d.cfg.Accounts == nil {
		d.refuse(w, r, http.StatusServiceUnavailable, "Signing in is not available here.")
		return
	}
	if !d.sameOrigin(r) || !loginTokenOK(r) {
		d.showLogin(w, r, http.StatusForbidden, "This sign-in form was stale or came from another site: send it again.", next, username)
		return
	}
	var value string
	var err error
	if key := r.PostFormValue("key"); key != "" {
		value, err = d.cfg.Accounts.SignInWithKey(r.Context(), key)
	} else {
		value, err = d.cfg.Accounts.SignIn(r.Context(), username, r.PostFormValue("password"))
	}
	if errors.Is(err, auth.ErrBadCredentials) {
		d.showLogin(w, r, http.StatusUnauthorized, signInFailed, next, username)
		return
	}
	if err != nil {
		d.log.Error("sign in", "err", err)
		d.showLogin(w, r, http.StatusServiceUnavailable, "Signing in failed on the server's side; try again shortly.", next, username)
		return
	}
	http.SetCookie(w, d.cfg.Accounts.Cookie(r, value))
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Path: "/login", MaxAge: -1, HttpOnly: true, Secure: overTLS(r)})
	http.Redirect(w, r, safeNext(next), http.StatusSeeOther)
}

// logout ends the session on the server and in the browser.
func (d *Dashboard) logout(w http.ResponseWriter, r *http.Request) {
	if d.cfg.Accounts != nil {
		clear := d.cfg.Accounts.Cookie(r, "")
		if c, err := r.Cookie(clear.Name); err == nil {
			if err := d.cfg.Accounts.SignOut(r.Context(), c.Value); err != nil {
				d.fail(w, r, err)
				return
			}
		}
		http.SetCookie(w, clear)
	}
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// loginTokenOK reports whether the form's login token is the one of the browser's
// fc_login cookie.
func loginTokenOK(r *http.Request) bool {
	c, err := r.Cookie(loginCookie)
	form := r.PostFormValue(loginField)
	return err == nil && c.Value != "" && subtle.ConstantTimeCompare([]byte(c.Value), []byte(form)) == 1
}

// sameOrigin is false when the browser says the form was sent from another site: its
// Origin's host is neither the request's Host nor the host a proxy forwarded (nor
// PublicURL's). Only hosts are compared: behind a proxy that ends TLS the scheme the
// coordinator sees is not the browser's. Browsers that send no Origin are left to the
// login token.
func (d *Dashboard) sameOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	o, err := url.Parse(origin)
	if err != nil || o.Host == "" {
		return false // "null": a sandboxed or privacy-sensitive context, never our form
	}
	hosts := []string{r.Host, r.Header.Get("X-Forwarded-Host")}
	if u, err := url.Parse(d.cfg.PublicURL); err == nil {
		hosts = append(hosts, u.Host)
	}
	for _, h := range hosts {
		if h != "" && strings.EqualFold(o.Host, h) {
			return true
		}
	}
	return false
}

// safeNext is where to go after signing in: a path of this site, never another site
// ("//host", "/\host" and absolute URLs are refused) nor the sign-in pages; "/" else.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") ||
		strings.ContainsAny(next, "\r\n\t\\") {
		return "/"
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.Path == "/login" || u.Path == "/logout" {
		return "/"
	}
	return next
}

// overTLS reports whether r reached the coordinator over TLS (directly, or through a
// proxy that says so).
func overTLS(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

// loginToken is 32 random bytes, base64url without padding (43 characters).
func loginToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}
