package people_test

import (
	"fmt"
	"net/http"
	"net/url"
	"testing"

	"github.com/fc-ci/fc/storage"
)

type obj = map[string]any

type userOut struct {
	ID          int64
	Username    string
	Email       string
	FullName    string `json:"full_name"`
	Role        string
	Enabled     bool
	LastLoginAt *string `json:"last_login_at"`
}

// TestAccounts_CreateSignInMeChangePassword: an admin creates a user, who signs in,
// reads and changes their account, and changes their password: the old one is then
// refused, the new one works, and other sessions end while this one goes on.
func TestAccounts_CreateSignInMeChangePassword(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	created := e.do("POST", "/api/v1/users", e.admin, obj{"username": "jane", "password": "first-password",
		"role": storage.RoleCreateProjects, "email": "jane@example.org"})
	if created.Status != http.StatusCreated {
		t.Fatalf("create jane: %d %s", created.Status, created.Body)
	}
	mustNotLeak(t, "POST /users", created.Body, "first-password")
	var jane userOut
	created.decode(t, &jane)
	if jane.Username != "jane" || jane.Role != storage.RoleCreateProjects || jane.Email != "jane@example.org" || !jane.Enabled {
		t.Fatalf("created %+v", jane)
	}

	b := e.as("jane", "first-password")
	other := e.as("jane", "first-password") // another browser
	me := b.get("/api/v1/me")
	if me.Status != http.StatusOK {
		t.Fatalf("GET /me: %d %s", me.Status, me.Body)
	}
	mustNotLeak(t, "GET /me", me.Body, "first-password")
	var got userOut
	me.decode(t, &got)
	if got.ID != jane.ID || got.LastLoginAt == nil {
		t.Errorf("me: %+v (want jane with a last sign-in)", got)
	}

	put := b.write("PUT", "/api/v1/me", obj{"full_name": "Jane Doe", "email": "jd@example.org"})
	put.decode(t, &got)
	if put.Status != http.StatusOK || got.FullName != "Jane Doe" || got.Email != "jd@example.org" || got.Role != storage.RoleCreateProjects {
		t.Fatalf("PUT /me: %d %s", put.Status, put.Body)
	}
	if a := b.write("PUT", "/api/v1/me", obj{"role": storage.RoleAdmin}); a.Status != http.StatusUnprocessableEntity || a.field() != "role" {
		t.Errorf("PUT /me with a role: %d %s, want 422 naming role", a.Status, a.Body)
	}
	if a := b.write("PUT", "/api/v1/me", obj{"email": "not an address"}); a.Status != http.StatusUnprocessableEntity || a.field() != "email" {
		t.Errorf("PUT /me with a bad email: %d %s", a.Status, a.Body)
	}

	if a := b.write("POST", "/api/v1/me/password", obj{"current": "wrong-password", "new": "second-password"}); a.Status != http.StatusForbidden || a.field() != "current" {
		t.Errorf("wrong current password: %d %s, want 403 naming current", a.Status, a.Body)
	}
	if a := b.write("POST", "/api/v1/me/password", obj{"current": "first-password", "new": "short"}); a.Status != http.StatusUnprocessableEntity || a.field() != "new" {
		t.Errorf("short new password: %d %s, want 422 naming new", a.Status, a.Body)
	}
	if a := b.write("POST", "/api/v1/me/password", obj{"current": "first-password", "new": "second-password"}); a.Status != http.StatusNoContent {
		t.Fatalf("change password: %d %s", a.Status, a.Body)
	}
	if a := b.get("/api/v1/me"); a.Status != http.StatusOK {
		t.Errorf("the session that changed the password ended: %d", a.Status)
	}
	if a := other.get("/api/v1/me"); a.Status != http.StatusUnauthorized {
		t.Errorf("another session goes on after a password change: %d", a.Status)
	}
	if s := e.browser().signIn(url.Values{"username": {"jane"}, "password": {"first-password"}}); s != http.StatusUnauthorized {
		t.Errorf("sign in with the old password: %d, want 401", s)
	}
	e.as("jane", "second-password")
}

// TestAccounts_AdminOnlyAndValidation: only admins manage accounts (keys and users
// alike); inputs are checked with errors naming the field; no answer carries a
// password or hash.
func TestAccounts_AdminOnlyAndValidation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	body := obj{"username": "kim", "password": "long-enough", "role": storage.RoleReadOnly}
	for _, role := range []string{storage.RoleReadOnly, storage.RoleCreateProjects} {
		if a := e.do("POST", "/api/v1/users", e.key(role), body); a.Status != http.StatusForbidden {
			t.Errorf("a %s key creates a user: %d", role, a.Status)
		}
	}
	if a := e.do("POST", "/api/v1/users", "", body); a.Status != http.StatusUnauthorized {
		t.Errorf("nobody creates a user: %d", a.Status)
	}
	_, name, pw := e.user(storage.RoleCreateProjects)
	if a := e.as(name, pw).write("POST", "/api/v1/users", body); a.Status != http.StatusForbidden {
		t.Errorf("a create-projects user creates a user: %d", a.Status)
	}

	for _, c := range []struct {
		body   obj
		status int
		field  string
	}{
		{obj{"username": "lee", "password": "long-enough", "role": "superuser"}, 422, "role"},
		{obj{"username": "lee", "password": "long-enough"}, 422, "role"},
		{obj{"username": "lee", "password": "short", "role": "admin"}, 422, "password"},
		{obj{"username": "le e", "password": "long-enough", "role": "admin"}, 422, "username"},
		{obj{"username": "", "password": "long-enough", "role": "admin"}, 422, "username"},
		{obj{"username": "lee", "password": "long-enough", "role": "admin", "email": "lee"}, 422, "email"},
		{obj{"username": "lee", "password": "long-enough", "role": "admin", "password_hash": "x"}, 422, "password_hash"},
		{obj{"username": name, "password": "long-enough", "role": "admin"}, 409, "username"},
	} {
		if a := e.do("POST", "/api/v1/users", e.admin, c.body); a.Status != c.status || a.field() != c.field {
			t.Errorf("POST /users %v: %d %s, want %d naming %s", c.body, a.Status, a.Body, c.status, c.field)
		}
	}

	list := e.do("GET", "/api/v1/users?limit=1", e.admin, nil)
	var l struct {
		Items []userOut
		Total int
		Limit int
	}
	list.decode(t, &l)
	if list.Status != http.StatusOK || l.Total != 1 || len(l.Items) != 1 || l.Limit != 1 {
		t.Fatalf("GET /users: %d %s", list.Status, list.Body)
	}
	mustNotLeak(t, "GET /users", list.Body, pw)
	id := l.Items[0].ID
	one := e.do("GET", fmt.Sprintf("/api/v1/users/%d", id), e.admin, nil)
	mustNotLeak(t, "GET /users/{id}", one.Body, pw)
	if one.Status != http.StatusOK {
		t.Errorf("GET /users/%d: %d", id, one.Status)
	}
	if a := e.do("GET", "/api/v1/users/999999", e.admin, nil); a.Status != http.StatusNotFound {
		t.Errorf("GET an unknown user: %d", a.Status)
	}
	if a := e.do("PUT", fmt.Sprintf("/api/v1/users/%d", id), e.admin, obj{"role": "superuser"}); a.Status != 422 || a.field() != "role" {
		t.Errorf("PUT a bad role: %d %s", a.Status, a.Body)
	}
	upd := e.do("PUT", fmt.Sprintf("/api/v1/users/%d", id), e.admin, obj{"role": storage.RoleEvalJobset, "full_name": "Lee"})
	mustNotLeak(t, "PUT /users/{id}", upd.Body, pw)
	var u userOut
	upd.decode(t, &u)
	if upd.Status != http.StatusOK || u.Role != storage.RoleEvalJobset || u.FullName != "Lee" {
		t.Errorf("PUT /users/%d: %d %s", id, upd.Status, upd.Body)
	}
}

// TestAccounts_AdminChangesEndSessions: an admin disabling a user, changing their
// password or deleting them ends their sessions at once; an admin user may not
// disable, demote or delete themselves.
func TestAccounts_AdminChangesEndSessions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	id, name, pw := e.user(storage.RoleReadOnly)
	b := e.as(name, pw)
	if a := e.do("PUT", fmt.Sprintf("/api/v1/users/%d", id), e.admin, obj{"enabled": false}); a.Status != http.StatusOK {
		t.Fatalf("disable: %d %s", a.Status, a.Body)
	}
	if a := b.get("/api/v1/me"); a.Status != http.StatusUnauthorized {
		t.Errorf("a disabled user's session: %d, want 401", a.Status)
	}
	if s := e.browser().signIn(url.Values{"username": {name}, "password": {pw}}); s != http.StatusUnauthorized {
		t.Errorf("a disabled user signs in: %d", s)
	}
	if a := e.do("PUT", fmt.Sprintf("/api/v1/users/%d", id), e.admin, obj{"enabled": true}); a.Status != http.StatusOK {
		t.Fatal(a.Status)
	}
	if a := b.get("/api/v1/me"); a.Status != http.StatusUnauthorized {
		t.Errorf("re-enabling brings an old session back: %d", a.Status)
	}
	b = e.as(name, pw)
	if a := e.do("PUT", fmt.Sprintf("/api/v1/users/%d", id), e.admin, obj{"password": "a-new-password"}); a.Status != http.StatusOK {
		t.Fatal(a.Status)
	}
	if a := b.get("/api/v1/me"); a.Status != http.StatusUnauthorized {
		t.Errorf("a session after an admin set a new password: %d", a.Status)
	}
	b = e.as(name, "a-new-password")
	if a := e.do("DELETE", fmt.Sprintf("/api/v1/users/%d", id), e.admin, nil); a.Status != http.StatusNoContent {
		t.Fatal(a.Status)
	}
	if a := b.get("/api/v1/me"); a.Status != http.StatusUnauthorized {
		t.Errorf("a deleted user's session: %d", a.Status)
	}

	adminID, adminName, adminPW := e.user(storage.RoleAdmin)
	boss := e.as(adminName, adminPW)
	self := fmt.Sprintf("/api/v1/users/%d", adminID)
	if a := boss.write("PUT", self, obj{"enabled": false}); a.Status != 422 || a.field() != "enabled" {
		t.Errorf("disable oneself: %d %s", a.Status, a.Body)
	}
	if a := boss.write("PUT", self, obj{"role": storage.RoleReadOnly}); a.Status != 422 || a.field() != "role" {
		t.Errorf("demote oneself: %d %s", a.Status, a.Body)
	}
	if a := boss.write("DELETE", self, nil); a.Status != http.StatusConflict {
		t.Errorf("delete oneself: %d %s", a.Status, a.Body)
	}
	if a := boss.get("/api/v1/me"); a.Status != http.StatusOK {
		t.Errorf("the admin after refused changes: %d", a.Status)
	}
}

// TestMe_NeedsASignedInUser: /me is a user's; an API key, or a session signed in with
// one, gets a 403 that says so, and nobody a 401.
func TestMe_NeedsASignedInUser(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	key := e.key(storage.RoleCreateProjects)
	for _, path := range []string{"/api/v1/me", "/api/v1/me/starred-jobs"} {
		if a := e.do("GET", path, key, nil); a.Status != http.StatusForbidden {
			t.Errorf("GET %s with a key: %d %s", path, a.Status, a.Body)
		}
		if a := e.do("GET", path, "", nil); a.Status != http.StatusUnauthorized {
			t.Errorf("GET %s as nobody: %d %s", path, a.Status, a.Body)
		}
	}
	b := e.browser()
	if s := b.signIn(url.Values{"key": {key}}); s != http.StatusSeeOther {
		t.Fatalf("sign in with a key: %d", s)
	}
	if a := b.get("/api/v1/me"); a.Status != http.StatusForbidden {
		t.Errorf("GET /me in a key's session: %d %s", a.Status, a.Body)
	}
	// The key's session acts as the key: its projects are the key's.
	p := b.write("POST", "/api/v1/projects", obj{"name": "keyed", "repository_url": "https://example.org/r.git"})
	var proj struct {
		OwnerKeyID  *int64 `json:"owner_key_id"`
		OwnerUserID *int64 `json:"owner_user_id"`
	}
	p.decode(t, &proj)
	if p.Status != http.StatusCreated || proj.OwnerKeyID == nil || proj.OwnerUserID != nil {
		t.Errorf("a project made in a key's session: %d %s", p.Status, p.Body)
	}
}
