package server_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/fc-ci/fc/storage"
)

// Ownership (issue 14, Hydra's model): a project belongs to the key that created it;
// a create-projects key manages its own projects and their jobsets, never another's;
// admins manage all; local repositories are for admins only.

// wantForbidden checks a 403 whose message contains every one of parts.
func wantForbidden(t *testing.T, r response, parts ...string) apiError {
	t.Helper()
	e := r.apiErr(t, http.StatusForbidden)
	for _, p := range parts {
		if !strings.Contains(e.Error, p) {
			t.Errorf("403 message %q does not say %q", e.Error, p)
		}
	}
	return e
}

func TestOwnership_CreateProjectsKeyManagesItsOwnProjectAndNoOther(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	aliceID, alice := e.keyWithID(storage.RoleCreateProjects)
	_, bob := e.keyWithID(storage.RoleCreateProjects)

	// Alice creates a project: it is hers, and its JSON says so (id and name, never
	// the key itself).
	r := e.do("POST", "/api/v1/projects", alice, obj{"name": "alices", "repository_url": "https://example.org/a.git"}).
		want(t, http.StatusCreated)
	if strings.Contains(string(r.Body), alice) {
		t.Fatalf("the project's JSON shows the owner's key: %s", r.Body)
	}
	var p project
	r.decode(t, &p)
	if p.OwnerKeyID != aliceID || !strings.HasPrefix(p.OwnerKeyName, storage.RoleCreateProjects+"-") {
		t.Fatalf("created project owner = %d %q, want key %d (create-projects-N)", p.OwnerKeyID, p.OwnerKeyName, aliceID)
	}
	var ps list[project]
	e.do("GET", "/api/v1/projects", "", nil).want(t, http.StatusOK).decode(t, &ps)
	if len(ps.Items) != 1 || ps.Items[0].OwnerKeyID != aliceID || ps.Items[0].OwnerKeyName != p.OwnerKeyName {
		t.Errorf("listed projects = %+v, want the one owned by %d", ps.Items, aliceID)
	}

	// Alice manages it: settings, jobsets.
	proj := fmt.Sprintf("/api/v1/projects/%d", p.ID)
	e.do("PUT", proj, alice, obj{"description": "mine", "webhook_secret": "0123456789abcdef"}).want(t, http.StatusOK)
	var j jobset
	e.do("POST", proj+"/jobsets", alice, obj{"name": "main"}).want(t, http.StatusCreated).decode(t, &j)
	e.do("PUT", jobsetPath(p.ID, j.ID), alice, obj{"description": "her jobset"}).want(t, http.StatusOK)
	// By name as well as by id.
	e.do("PUT", jobsetPath(p.Name, j.Name), alice, obj{"check_interval": 300}).want(t, http.StatusOK)

	// Bob, with the same role, may touch none of it.
	before := e.snapshot()
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"PUT", proj, obj{"description": "bob was here"}},
		{"PUT", "/api/v1/projects/" + p.Name, obj{"repository_url": "https://evil.example/x.git"}},
		{"DELETE", proj, nil},
		{"POST", proj + "/jobsets", obj{"name": "bobs"}},
		{"PUT", jobsetPath(p.ID, j.ID), obj{"nix_expression": "evil"}},
		{"DELETE", jobsetPath(p.ID, j.ID), nil},
		// Refused before the body is even read: no hint from validation either.
		{"PUT", jobsetPath(p.ID, j.ID), obj{"state": "nonsense"}},
	} {
		wantForbidden(t, e.do(c.method, c.path, bob, c.body), `project "alices" belongs to someone else`)
	}
	if after := e.snapshot(); after != before {
		t.Errorf("another key's refused requests changed the database")
	}

	// An admin manages any project; the owner stays.
	var got project
	e.do("PUT", proj, e.admin, obj{"description": "admin's"}).want(t, http.StatusOK).decode(t, &got)
	if got.OwnerKeyID != aliceID || got.Description != "admin's" {
		t.Errorf("after an admin's change: %+v, want still owned by %d", got, aliceID)
	}
	var j2 jobset
	e.do("POST", proj+"/jobsets", e.admin, obj{"name": "admins"}).want(t, http.StatusCreated).decode(t, &j2)

	// And Alice deletes what is hers, the admin's jobset included.
	e.do("DELETE", jobsetPath(p.ID, j2.ID), alice, nil).want(t, http.StatusNoContent)
	e.do("DELETE", jobsetPath(p.ID, j.ID), alice, nil).want(t, http.StatusNoContent)
	e.do("DELETE", proj, alice, nil).want(t, http.StatusNoContent)
	e.do("GET", proj, "", nil).apiErr(t, http.StatusNotFound)
}

func TestOwnership_ProjectsWithNoOwnerAreForAdminsOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	aliceID, alice := e.keyWithID(storage.RoleCreateProjects)
	_, carol := e.keyWithID(storage.RoleCreateProjects)

	// A project from before ownership has none.
	old, err := e.db.CreateProject(context.Background(), storage.ProjectFields{Name: "old", RepositoryURL: "https://example.org/o.git", Enabled: true})
	if err != nil {
		t.Fatal(err)
	}
	var o project
	e.do("GET", fmt.Sprintf("/api/v1/projects/%d", old.ID), "", nil).want(t, http.StatusOK).decode(t, &o)
	if o.OwnerKeyID != 0 || o.OwnerKeyName != "" {
		t.Errorf("a project made without an owner shows owner %d %q", o.OwnerKeyID, o.OwnerKeyName)
	}
	if !strings.Contains(string(e.do("GET", fmt.Sprintf("/api/v1/projects/%d", old.ID), "", nil).Body), `"owner_key_id":null`) {
		t.Errorf("a project with no owner must show \"owner_key_id\": null")
	}
	wantForbidden(t, e.do("POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", old.ID), carol, obj{"name": "main"}),
		`project "old" has no owner`, "only an admin")
	e.do("POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", old.ID), e.admin, obj{"name": "main"}).want(t, http.StatusCreated)

	// Alice's project loses its owner when her key is deleted (ON DELETE SET NULL):
	// it stays, and only admins manage it from then on.
	var p project
	e.do("POST", "/api/v1/projects", alice, obj{"name": "alices", "repository_url": "https://example.org/a.git"}).
		want(t, http.StatusCreated).decode(t, &p)
	if p.OwnerKeyID != aliceID {
		t.Fatalf("created project owner %d, want %d", p.OwnerKeyID, aliceID)
	}
	e.do("DELETE", fmt.Sprintf("/api/v1/api-keys/%d", aliceID), e.admin, nil).want(t, http.StatusNoContent)
	var after project // fresh: null leaves a decoded number as it was
	e.do("GET", fmt.Sprintf("/api/v1/projects/%d", p.ID), "", nil).want(t, http.StatusOK).decode(t, &after)
	if after.OwnerKeyID != 0 || after.OwnerKeyName != "" {
		t.Errorf("after its key was deleted the project shows owner %d %q, want none", after.OwnerKeyID, after.OwnerKeyName)
	}
	e.do("PUT", fmt.Sprintf("/api/v1/projects/%d", p.ID), alice, obj{"description": "x"}).apiErr(t, http.StatusUnauthorized)
	wantForbidden(t, e.do("PUT", fmt.Sprintf("/api/v1/projects/%d", p.ID), carol, obj{"description": "x"}), "has no owner")
	e.do("PUT", fmt.Sprintf("/api/v1/projects/%d", p.ID), e.admin, obj{"description": "x"}).want(t, http.StatusOK)
}

func TestOwnership_LocalRepositoriesAreForAdminsOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	_, alice := e.keyWithID(storage.RoleCreateProjects)

	for i, u := range []string{"file:///srv/git/r.git", "FILE:///srv/git/r.git", "/srv/git/r.git", "/var/lib/fc-agent/"} {
		before := e.snapshot()
		ae := wantForbidden(t, e.do("POST", "/api/v1/projects", alice, obj{"name": fmt.Sprintf("local%d", i), "repository_url": u}),
			"local repository", "only an admin")
		if ae.Field != "repository_url" {
			t.Errorf("%s: field %q, want repository_url", u, ae.Field)
		}
		if e.snapshot() != before {
			t.Errorf("%s: the refused create changed the database", u)
		}
		e.do("POST", "/api/v1/projects", e.admin, obj{"name": fmt.Sprintf("adminlocal%d", i), "repository_url": u}).
			want(t, http.StatusCreated)
	}

	var p project
	e.do("POST", "/api/v1/projects", alice, obj{"name": "alices", "repository_url": "https://example.org/a.git"}).
		want(t, http.StatusCreated).decode(t, &p)
	proj := fmt.Sprintf("/api/v1/projects/%d", p.ID)
	wantForbidden(t, e.do("PUT", proj, alice, obj{"repository_url": "/srv/git/r.git"}), "local repository")

	// Git inputs are repositories too.
	local := []obj{{"name": "nixpkgs", "type": "git", "value": "file:///srv/git/nixpkgs main"}}
	ae := wantForbidden(t, e.do("POST", proj+"/jobsets", alice, obj{"name": "main", "inputs": local}), `git input "nixpkgs"`, "local repository")
	if ae.Field != "inputs" {
		t.Errorf("field %q, want inputs", ae.Field)
	}
	remote := []obj{{"name": "nixpkgs", "type": "git", "value": "https://example.org/nixpkgs.git main"}}
	var j jobset
	e.do("POST", proj+"/jobsets", alice, obj{"name": "main", "inputs": remote}).want(t, http.StatusCreated).decode(t, &j)
	wantForbidden(t, e.do("PUT", jobsetPath(p.ID, j.ID), alice, obj{"inputs": []obj{{"name": "x", "type": "git", "value": "/srv/x"}}}),
		"local repository")

	// What an admin set stays usable by the owner: resending it is no new local
	// repository, changing other fields is allowed.
	e.do("PUT", proj, e.admin, obj{"repository_url": "/srv/git/a.git"}).want(t, http.StatusOK)
	e.do("PUT", proj, alice, obj{"description": "still mine", "repository_url": "/srv/git/a.git"}).want(t, http.StatusOK)
	wantForbidden(t, e.do("PUT", proj, alice, obj{"repository_url": "/srv/git/other.git"}), "local repository")
	e.do("PUT", jobsetPath(p.ID, j.ID), e.admin, obj{"inputs": local}).want(t, http.StatusOK)
	e.do("PUT", jobsetPath(p.ID, j.ID), alice, obj{"inputs": local, "check_interval": 600}).want(t, http.StatusOK)
	e.do("PUT", jobsetPath(p.ID, j.ID), alice, obj{"description": "x"}).want(t, http.StatusOK)
}

func TestOwnership_AdminGivesAProjectToAnotherKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	_, alice := e.keyWithID(storage.RoleCreateProjects)
	bobID, bob := e.keyWithID(storage.RoleCreateProjects)

	var p project
	e.do("POST", "/api/v1/projects", alice, obj{"name": "alices", "repository_url": "https://example.org/a.git"}).
		want(t, http.StatusCreated).decode(t, &p)
	proj := fmt.Sprintf("/api/v1/projects/%d", p.ID)

	// Not even the owner may give it away (nor a key take it).
	wantForbidden(t, e.do("PUT", proj, alice, obj{"owner_key_id": bobID}), "only an admin")
	wantForbidden(t, e.do("PUT", proj, bob, obj{"owner_key_id": bobID}), "belongs to someone else")
	// Naming the current owner changes nothing and is allowed.
	e.do("PUT", proj, alice, obj{"owner_key_id": p.OwnerKeyID}).want(t, http.StatusOK)

	if ae := e.do("PUT", proj, e.admin, obj{"owner_key_id": bobID + 1000}).apiErr(t, http.StatusUnprocessableEntity); ae.Field != "owner_key_id" {
		t.Errorf("unknown key: field %q, want owner_key_id", ae.Field)
	}
	if ae := e.do("PUT", proj, e.admin, obj{"owner_key_id": 0}).apiErr(t, http.StatusUnprocessableEntity); ae.Field != "owner_key_id" {
		t.Errorf("owner 0: field %q, want owner_key_id", ae.Field)
	}
	var got project
	e.do("PUT", proj, e.admin, obj{"owner_key_id": bobID}).want(t, http.StatusOK).decode(t, &got)
	if got.OwnerKeyID != bobID {
		t.Fatalf("after the admin gave it to bob, owner %d, want %d", got.OwnerKeyID, bobID)
	}
	e.do("PUT", proj, bob, obj{"description": "bob's now"}).want(t, http.StatusOK)
	wantForbidden(t, e.do("PUT", proj, alice, obj{"description": "mine?"}), "belongs to someone else")

	// An admin may create a project for a key.
	e.do("POST", "/api/v1/projects", e.admin, obj{"name": "forbob", "repository_url": "https://example.org/b.git", "owner_key_id": bobID}).
		want(t, http.StatusCreated).decode(t, &got)
	if got.OwnerKeyID != bobID {
		t.Errorf("created for bob: owner %d, want %d", got.OwnerKeyID, bobID)
	}
	e.do("DELETE", "/api/v1/projects/forbob", bob, nil).want(t, http.StatusNoContent)
}
