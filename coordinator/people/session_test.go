package people_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage"
)

// TestSession_CookieAuthenticatesAndAPIWritesNeedCSRF: the cookie signs in reads of
// the API; a write with the cookie alone is refused (403) and changes nothing, with
// the session's token in X-CSRF-Token it passes; an Authorization header wins over
// the cookie.
func TestSession_CookieAuthenticatesAndAPIWritesNeedCSRF(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, name, pw := e.user(storage.RoleCreateProjects)
	b := e.as(name, pw)
	if b.csrf == "" {
		t.Fatal("the signed-in pages carry no CSRF token")
	}
	if a := b.get("/api/v1/me"); a.Status != http.StatusOK {
		t.Fatalf("GET with the cookie: %d %s", a.Status, a.Body)
	}
	body := obj{"name": "web", "repository_url": "https://example.org/r.git"}
	if a := b.api("POST", "/api/v1/projects", body, false); a.Status != http.StatusForbidden {
		t.Errorf("a cookie write without X-CSRF-Token: %d %s, want 403", a.Status, a.Body)
	}
	b2 := *b
	b2.csrf = "forged"
	if a := b2.api("POST", "/api/v1/projects", body, true); a.Status != http.StatusForbidden {
		t.Errorf("a cookie write with a wrong X-CSRF-Token: %d %s, want 403", a.Status, a.Body)
	}
	if a := e.do("GET", "/api/v1/projects/web", e.admin, nil); a.Status != http.StatusNotFound {
		t.Fatalf("a refused write made the project: %d", a.Status)
	}
	if a := b.write("POST", "/api/v1/projects", body); a.Status != http.StatusCreated {
		t.Errorf("a cookie write with X-CSRF-Token: %d %s", a.Status, a.Body)
	}
	// A read-only key in the Authorization header is who the request is, cookie or not.
	h := http.Header{"Authorization": {"Bearer " + e.key(storage.RoleReadOnly)}}
	if a := send(t, b.c, "GET", e.srv.URL+"/api/v1/me", h, nil); a.Status != http.StatusForbidden {
		t.Errorf("GET /me with a key and a user's cookie: %d, want 403 (the key's)", a.Status)
	}
}

// TestSession_SlidingExpiry: using a session moves its end to a full lifetime from
// now, writing at most once a minute; an expired session signs nobody in and is
// deleted.
func TestSession_SlidingExpiry(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	_, name, pw := e.user(storage.RoleReadOnly)
	b := e.as(name, pw)
	expiry := func() time.Time {
		var at time.Time
		if err := e.db.Pool().QueryRow(ctx, `SELECT expires_at FROM sessions`).Scan(&at); err != nil {
			t.Fatal(err)
		}
		return at
	}
	set := func(sql string) {
		if _, err := e.db.Pool().Exec(ctx, `UPDATE sessions SET expires_at = `+sql); err != nil {
			t.Fatal(err)
		}
	}
	const ttl = 14 * 24 * time.Hour
	if d := time.Until(expiry()); d < ttl-time.Minute || d > ttl {
		t.Fatalf("a new session ends in %v, want 14 days", d)
	}
	// Used within the last minute (its end 30 s short of a full lifetime): no write.
	set(`now() + interval '14 days' - interval '30 seconds'`)
	before := expiry()
	if a := b.get("/api/v1/me"); a.Status != http.StatusOK {
		t.Fatal(a.Status)
	}
	if after := expiry(); !after.Equal(before) {
		t.Errorf("a session used within the minute was written again: %v to %v", before, after)
	}
	// An hour from its end: a use extends it.
	set(`now() + interval '1 hour'`)
	res, err := b.c.Get(e.srv.URL + "/api/v1/me")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if d := time.Until(expiry()); res.StatusCode != http.StatusOK || d < ttl-time.Minute {
		t.Errorf("after a use an hour before its end, the session ends in %v (%d)", d, res.StatusCode)
	}
	renewed := false
	for _, c := range res.Cookies() {
		renewed = renewed || (c.Name == "fc_session" && c.MaxAge == int(ttl/time.Second))
	}
	if !renewed {
		t.Errorf("the extension did not renew the cookie: %v", res.Cookies())
	}
	// Expired: nobody, and the row is gone.
	set(`now() - interval '1 second'`)
	if a := b.get("/api/v1/me"); a.Status != http.StatusUnauthorized {
		t.Errorf("an expired session: %d, want 401", a.Status)
	}
	var n int
	if err := e.db.Pool().QueryRow(ctx, `SELECT count(*) FROM sessions`).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d sessions after an expired one was used", n)
	}
}

// TestSession_SignInSweepsExpired: signing in deletes the sessions that expired.
func TestSession_SignInSweepsExpired(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	_, name, pw := e.user(storage.RoleReadOnly)
	e.as(name, pw)
	e.as(name, pw)
	if _, err := e.db.Pool().Exec(ctx, `UPDATE sessions SET expires_at = now() - interval '1 hour'`); err != nil {
		t.Fatal(err)
	}
	e.as(name, pw)
	var n int
	if err := e.db.Pool().QueryRow(ctx, `SELECT count(*) FROM sessions`).Scan(&n); err != nil || n != 1 {
		t.Errorf("%d sessions after a sign-in, want only the new one", n)
	}
}

// TestOwnership_UserOwnsWhatTheyCreate: a project a create-projects user creates is
// theirs: they manage it, another create-projects user does not, an admin does.
func TestOwnership_UserOwnsWhatTheyCreate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ownerID, owner, ownerPW := e.user(storage.RoleCreateProjects)
	_, rival, rivalPW := e.user(storage.RoleCreateProjects)
	_, boss, bossPW := e.user(storage.RoleAdmin)
	o := e.as(owner, ownerPW)
	p := o.write("POST", "/api/v1/projects", obj{"name": "owned", "repository_url": "https://example.org/r.git"})
	var proj struct {
		ID            int64
		OwnerUserID   *int64 `json:"owner_user_id"`
		OwnerUserName string `json:"owner_user_name"`
		OwnerKeyID    *int64 `json:"owner_key_id"`
	}
	p.decode(t, &proj)
	if p.Status != http.StatusCreated || proj.OwnerUserID == nil || *proj.OwnerUserID != ownerID || proj.OwnerUserName != owner || proj.OwnerKeyID != nil {
		t.Fatalf("create as a user: %d %s", p.Status, p.Body)
	}
	path := fmt.Sprintf("/api/v1/projects/%d", proj.ID)
	if a := o.write("PUT", path, obj{"description": "mine"}); a.Status != http.StatusOK {
		t.Errorf("the owner changes it: %d %s", a.Status, a.Body)
	}
	if a := o.write("POST", path+"/jobsets", obj{"name": "main"}); a.Status != http.StatusCreated {
		t.Errorf("the owner adds a jobset: %d %s", a.Status, a.Body)
	}
	r := e.as(rival, rivalPW)
	if a := r.write("PUT", path, obj{"description": "theirs"}); a.Status != http.StatusForbidden {
		t.Errorf("another create-projects user changes it: %d %s", a.Status, a.Body)
	}
	if a := r.write("DELETE", path, nil); a.Status != http.StatusForbidden {
		t.Errorf("another create-projects user deletes it: %d %s", a.Status, a.Body)
	}
	if a := e.do("PUT", path, e.key(storage.RoleCreateProjects), obj{"description": "a key's"}); a.Status != http.StatusForbidden {
		t.Errorf("a create-projects key changes it: %d %s", a.Status, a.Body)
	}
	if a := e.as(boss, bossPW).write("PUT", path, obj{"description": "the admin's"}); a.Status != http.StatusOK {
		t.Errorf("an admin user changes it: %d %s", a.Status, a.Body)
	}
	if a := o.write("DELETE", path, nil); a.Status != http.StatusNoContent {
		t.Errorf("the owner deletes it: %d %s", a.Status, a.Body)
	}
}

// TestLogin_PasswordAndKeyThroughTheForm: the wrong password and an unknown key are
// refused alike.
func TestLogin_PasswordAndKeyThroughTheForm(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, name, pw := e.user(storage.RoleReadOnly)
	for _, f := range []url.Values{
		{"username": {name}, "password": {pw + "x"}},
		{"username": {"nobody"}, "password": {pw}},
		{"key": {"fc_00000000000000000000000000000000"}},
	} {
		if s := e.browser().signIn(f); s != http.StatusUnauthorized {
			t.Errorf("sign in with %v: %d, want 401", f, s)
		}
	}
}
