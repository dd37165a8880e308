package people_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/fc-ci/fc/storage"
)

// TestMe_DeclaredAccountIsChangedInTheConfig: a user the config declares may sign in
// and read /me, which says so, but not change their details or password there (409
// naming the file); an account that is not declared still may.
func TestMe_DeclaredAccountIsChangedInTheConfig(t *testing.T) {
	e := newEnv(t)
	_, name, pw := e.user(storage.RoleReadOnly)
	const file = "/etc/fc/coordinator.toml"
	b := e.as(name, pw)
	if a := b.write("PUT", "/api/v1/me", map[string]string{"full_name": "Before"}); a.Status != http.StatusOK {
		t.Fatalf("change an account not declared: %d", a.Status)
	}
	// Declaring the account takes it over (its hash kept: PasswordHash "").
	if _, err := e.db.ApplyDeclarations(context.Background(), storage.Declarations{Source: file,
		Users: []storage.DeclaredUser{{Username: name, Role: storage.RoleReadOnly}}}); err != nil {
		t.Fatal(err)
	}
	var me struct {
		Declared   bool   `json:"declared"`
		DeclaredIn string `json:"declared_in"`
	}
	b.get("/api/v1/me").decode(t, &me)
	if !me.Declared || me.DeclaredIn != file {
		t.Errorf("/me = %+v, want declared in %s", me, file)
	}
	for _, w := range []struct {
		method, path string
		body         any
	}{
		{"PUT", "/api/v1/me", map[string]string{"full_name": "After"}},
		{"POST", "/api/v1/me/password", map[string]string{"current": pw, "new": "another-password"}},
	} {
		a := b.write(w.method, w.path, w.body)
		if a.Status != http.StatusConflict || !strings.Contains(string(a.Body), "declared in "+file+"; change it there") {
			t.Errorf("%s %s: %d %s, want 409 naming the file", w.method, w.path, a.Status, a.Body)
		}
	}
}
