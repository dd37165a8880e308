package dashboard_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/storage"
)

const declaredFile = "/etc/fc/coordinator.toml"

// TestDeclared_PagesHideEditsAndShowTheAPIsRefusal: objects the config declares say
// so, offer no edit controls, and a form posted anyway shows the API's 409 naming
// the file; an object that is not declared keeps its controls.
func TestDeclared_PagesHideEditsAndShowTheAPIsRefusal(t *testing.T) {
	s := newSite(t)
	ctx := context.Background()
	hash, err := auth.HashPassword("a long enough password")
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.DB.ApplyDeclarations(ctx, storage.Declarations{Source: declaredFile,
		Users:   []storage.DeclaredUser{{Username: "carol", Role: storage.RoleReadOnly, PasswordHash: hash}},
		APIKeys: []storage.DeclaredAPIKey{{Name: "ci", Role: storage.RoleEvalJobset, Hash: auth.HashKey("fc_declared")}},
		Agents:  []storage.DeclaredAgent{{Name: "builder-decl", PublicKey: "ssh-ed25519 AAAAdecl", Fingerprint: "SHA256:decl"}},
		Projects: []storage.DeclaredProject{{
			Fields:  storage.ProjectFields{Name: "decl", RepositoryURL: "https://example.org/decl.git", Enabled: true},
			Jobsets: []storage.JobsetFields{{Name: "main", FlakeMode: true, NixExpression: "hydraJobs", CheckInterval: 60, SchedulingShares: 100, State: storage.JobsetEnabled, KeepNr: 3}},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.DB.CreateProject(ctx, storage.ProjectFields{Name: "free", RepositoryURL: "https://example.org/free.git", Enabled: true}); err != nil {
		t.Fatal(err)
	}
	admin := s.person(storage.RoleAdmin)

	code, body := s.get("/project/decl", admin)
	if code != 200 || !strings.Contains(body, declaredFile) || strings.Contains(body, "Edit project") || strings.Contains(body, "New jobset") {
		t.Errorf("declared project page: %d; want the file named and no edit controls:\n%s", code, body)
	}
	if _, body := s.get("/project/free", admin); !strings.Contains(body, "Edit project") || strings.Contains(body, "Declared in") {
		t.Errorf("a project not declared lost its edit controls")
	}
	if _, body := s.get("/jobset/decl/main", admin); strings.Contains(body, "Edit jobset") || !strings.Contains(body, declaredFile) {
		t.Errorf("declared jobset page offers an edit or does not name the file")
	}

	refused := "declared in " + declaredFile + "; change it there"
	for _, post := range []struct {
		path string
		form url.Values
	}{
		{"/project/decl/edit", url.Values{"name": {"decl"}, "repository_url": {"https://example.org/other.git"}}},
		{"/jobset/decl/main/edit", jobsetForm("main")},
		{"/project/decl/jobsets/new", jobsetForm("extra")},
	} {
		res, body := s.post(post.path, post.form, admin)
		if res.StatusCode != http.StatusConflict || !strings.Contains(body, refused) {
			t.Errorf("POST %s: %d; want 409 showing %q", post.path, res.StatusCode, refused)
		}
	}

	users, _, err := s.DB.ListUsers(ctx, storage.Page{Limit: 10})
	if err != nil || len(users) != 1 {
		t.Fatalf("users %v %v", users, err)
	}
	_, body = s.get("/admin", admin)
	if strings.Contains(body, "Delete carol") || !strings.Contains(body, "declared in "+declaredFile) {
		t.Errorf("admin page offers to delete the declared user or does not say she is declared")
	}
	if strings.Contains(body, "Delete the key ci") {
		t.Errorf("admin page offers to delete the declared key")
	}
	if _, body := s.get(fmt.Sprint("/admin/users/", users[0].ID), admin); strings.Contains(body, `action="/admin/users/`+fmt.Sprint(users[0].ID)+`"`) {
		t.Errorf("the declared user's page has the edit form")
	}
	res, body := s.post(fmt.Sprint("/admin/users/", users[0].ID, "/delete"), url.Values{"confirm": {"yes"}}, admin)
	if res.StatusCode != http.StatusConflict || !strings.Contains(body, refused) {
		t.Errorf("delete the declared user: %d; want 409 showing the refusal", res.StatusCode)
	}
	if _, err := s.DB.RegisterAgent(ctx, "builder-free", "ssh-ed25519 AAAAfree", "SHA256:free"); err != nil {
		t.Fatal(err)
	}
	_, body = s.get("/agents", admin)
	if n := strings.Count(body, "Revoke…"); n != 1 || !strings.Contains(body, "declared in "+declaredFile) {
		t.Errorf("agents page: %d revoke links, want 1 (for the agent not declared), and the declared one marked", n)
	}
	keys, _, err := s.DB.ListAPIKeys(ctx, storage.Page{Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if k.Name != "ci" {
			continue
		}
		res, body := s.post(fmt.Sprint("/admin/api-keys/", k.ID, "/delete"), nil, admin)
		if res.StatusCode != http.StatusConflict || !strings.Contains(body, refused) {
			t.Errorf("delete the declared key: %d; want 409 showing the refusal", res.StatusCode)
		}
	}
}

// jobsetForm is a complete jobset form, as the page sends it.
func jobsetForm(name string) url.Values {
	return url.Values{"name": {name}, "branch": {"other"}, "nix_expression": {"hydraJobs"}, "flake_mode": {"on"},
		"check_interval": {"60"}, "scheduling_shares": {"100"}, "keep_nr": {"3"}, "state": {"enabled"}}
}
