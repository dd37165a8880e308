package server_test

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
)

func TestProjects_CreateIs201WithLocationAndBody(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	r := e.do("POST", "/api/v1/projects", e.admin, obj{
		"name": "nixpkgs", "display_name": "Nix Packages", "description": "the collection",
		"repository_url": "https://github.com/NixOS/nixpkgs.git",
	}).want(t, http.StatusCreated)
	var p project
	r.decode(t, &p)
	if p.ID <= 0 || p.Name != "nixpkgs" || p.DisplayName != "Nix Packages" || p.Description != "the collection" ||
		p.RepositoryURL != "https://github.com/NixOS/nixpkgs.git" || !p.Enabled || p.WebhookSecretSet {
		t.Errorf("created project = %+v", p)
	}
	if p.CreatedAt.IsZero() || p.CreatedAt.Location().String() != "UTC" || p.UpdatedAt.IsZero() {
		t.Errorf("timestamps created_at=%v updated_at=%v, want set and in UTC", p.CreatedAt, p.UpdatedAt)
	}
	if !strings.Contains(string(r.Body), `"created_at":"`) || !strings.Contains(string(r.Body), `Z"`) {
		t.Errorf("body %s: times must be RFC 3339 in UTC", r.Body)
	}
	loc := r.Header.Get("Location")
	if want := fmt.Sprintf("/api/v1/projects/%d", p.ID); loc != want {
		t.Fatalf("Location %q, want %q", loc, want)
	}
	var got project
	e.do("GET", loc, "", nil).want(t, http.StatusOK).decode(t, &got)
	if got != p {
		t.Errorf("GET Location = %+v, want the created %+v", got, p)
	}
	if n := e.count(`SELECT count(*) FROM projects WHERE name = 'nixpkgs'`); n != 1 {
		t.Errorf("%d rows for the project, want 1", n)
	}
}

func TestProjects_GetByIDAndByName(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	p := e.createProject("hello.world_1-x", obj{"enabled": false})
	for _, ref := range []string{fmt.Sprint(p.ID), p.Name} {
		var got project
		e.do("GET", "/api/v1/projects/"+ref, "", nil).want(t, http.StatusOK).decode(t, &got)
		if got != p {
			t.Errorf("GET /projects/%s = %+v, want %+v", ref, got, p)
		}
	}
	for _, ref := range []string{fmt.Sprint(p.ID + 1000), "no-such-project"} {
		e.do("GET", "/api/v1/projects/"+ref, "", nil).apiErr(t, http.StatusNotFound)
	}
}

func TestProjects_ListIsNewestFirstAndPaginated(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	var all list[project]
	e.do("GET", "/api/v1/projects", "", nil).want(t, http.StatusOK).decode(t, &all)
	if all.Items == nil || len(all.Items) != 0 || all.Total != 0 || all.Limit != 50 || all.Offset != 0 {
		t.Fatalf("empty list = %+v, want items [] total 0 limit 50 offset 0", all)
	}
	for _, n := range []string{"a", "b", "c", "d"} {
		e.createProject(n, nil)
	}
	names := func(l list[project]) []string {
		var out []string
		for _, p := range l.Items {
			out = append(out, p.Name)
		}
		return out
	}
	e.do("GET", "/api/v1/projects", "", nil).want(t, http.StatusOK).decode(t, &all)
	if got := names(all); !slices.Equal(got, []string{"d", "c", "b", "a"}) || all.Total != 4 || all.Limit != 50 || all.Offset != 0 {
		t.Errorf("list = %v total %d limit %d offset %d, want [d c b a] 4 50 0", got, all.Total, all.Limit, all.Offset)
	}
	var page list[project]
	e.do("GET", "/api/v1/projects?limit=2&offset=1", "", nil).want(t, http.StatusOK).decode(t, &page)
	if got := names(page); !slices.Equal(got, []string{"c", "b"}) || page.Total != 4 || page.Limit != 2 || page.Offset != 1 {
		t.Errorf("?limit=2&offset=1 = %v total %d limit %d offset %d, want [c b] 4 2 1", got, page.Total, page.Limit, page.Offset)
	}
	e.do("GET", "/api/v1/projects?offset=10", "", nil).want(t, http.StatusOK).decode(t, &page)
	if len(page.Items) != 0 || page.Items == nil || page.Total != 4 {
		t.Errorf("past the end = %+v, want items [] and total 4", page)
	}
	e.do("GET", "/api/v1/projects?limit=500", "", nil).want(t, http.StatusOK).decode(t, &page)
	if page.Limit != 500 || len(page.Items) != 4 {
		t.Errorf("?limit=500 = %+v, want limit 500 and all 4 items", page)
	}
	for _, q := range []string{"limit=501", "limit=0", "limit=-1", "limit=ten"} {
		if ae := e.do("GET", "/api/v1/projects?"+q, "", nil).apiErr(t, http.StatusUnprocessableEntity); ae.Field != "limit" {
			t.Errorf("?%s: field %q, want limit", q, ae.Field)
		}
	}
	if ae := e.do("GET", "/api/v1/projects?offset=-1", "", nil).apiErr(t, http.StatusUnprocessableEntity); ae.Field != "offset" {
		t.Errorf("?offset=-1: field %q, want offset", ae.Field)
	}
}

func TestProjects_PutChangesOnlyGivenFields(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	p := e.createProject("p", obj{"display_name": "P", "description": "old", "enabled": false})
	var got project
	e.do("PUT", fmt.Sprintf("/api/v1/projects/%d", p.ID), e.admin, obj{"description": "new"}).
		want(t, http.StatusOK).decode(t, &got)
	want := p
	want.Description = "new"
	want.UpdatedAt = got.UpdatedAt
	if got != want {
		t.Errorf("after PUT {description} = %+v, want %+v", got, want)
	}
	if got.UpdatedAt.Before(p.UpdatedAt) {
		t.Errorf("updated_at went back: %v -> %v", p.UpdatedAt, got.UpdatedAt)
	}
	var reread project
	e.do("GET", "/api/v1/projects/p", "", nil).want(t, http.StatusOK).decode(t, &reread)
	if reread != got {
		t.Errorf("GET after PUT = %+v, want the PUT answer %+v", reread, got)
	}

	// Renaming by name; the old name is gone, the id stays.
	e.do("PUT", "/api/v1/projects/p", e.admin, obj{"name": "q", "enabled": true, "repository_url": "/srv/git/q"}).
		want(t, http.StatusOK).decode(t, &got)
	if got.ID != p.ID || got.Name != "q" || !got.Enabled || got.RepositoryURL != "/srv/git/q" ||
		got.DisplayName != "P" || got.Description != "new" {
		t.Errorf("after rename = %+v", got)
	}
	e.do("GET", "/api/v1/projects/p", "", nil).apiErr(t, http.StatusNotFound)
	e.do("GET", "/api/v1/projects/q", "", nil).want(t, http.StatusOK)
	e.do("PUT", "/api/v1/projects/no-such", e.admin, obj{"description": "x"}).apiErr(t, http.StatusNotFound)
}

func TestProjects_DeleteIs204ThenGone(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	p := e.createProject("doomed", nil)
	keep := e.createProject("kept", nil)
	e.createJobset(p.ID, "main", obj{"inputs": []obj{{"name": "x", "type": "string", "value": "1"}}})
	e.createJobset(p.ID, "staging", nil)
	e.createJobset(keep.ID, "main", nil)

	r := e.do("DELETE", fmt.Sprintf("/api/v1/projects/%d", p.ID), e.admin, nil).want(t, http.StatusNoContent)
	if len(r.Body) != 0 {
		t.Errorf("204 with a body: %q", r.Body)
	}
	e.do("GET", fmt.Sprintf("/api/v1/projects/%d", p.ID), "", nil).apiErr(t, http.StatusNotFound)
	e.do("GET", "/api/v1/projects/doomed/jobsets", "", nil).apiErr(t, http.StatusNotFound)
	e.do("DELETE", fmt.Sprintf("/api/v1/projects/%d", p.ID), e.admin, nil).apiErr(t, http.StatusNotFound)
	if n := e.count(`SELECT count(*) FROM jobsets WHERE project_id = $1`, p.ID); n != 0 {
		t.Errorf("%d jobsets of the deleted project remain, want 0 (cascade)", n)
	}
	if n := e.count(`SELECT count(*) FROM jobset_inputs`); n != 0 {
		t.Errorf("%d jobset inputs remain, want 0 (cascade)", n)
	}
	if n := e.count(`SELECT count(*) FROM jobsets WHERE project_id = $1`, keep.ID); n != 1 {
		t.Errorf("the other project has %d jobsets, want its 1 untouched", n)
	}
	// Deleting by name works too.
	e.do("DELETE", "/api/v1/projects/kept", e.admin, nil).want(t, http.StatusNoContent)
	if n := e.count(`SELECT count(*) FROM projects`); n != 0 {
		t.Errorf("%d projects remain, want 0", n)
	}
}

func TestProjects_WebhookSecretIsNeverReturned(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	const secret = "s3cret-webhook-Value-0123456789"
	r := e.do("POST", "/api/v1/projects", e.admin, obj{"name": "p", "repository_url": "https://e.org/p.git", "webhook_secret": secret}).
		want(t, http.StatusCreated)
	var p project
	r.decode(t, &p)
	bodies := map[string][]byte{"create": r.Body}
	if !p.WebhookSecretSet {
		t.Errorf("create answer: webhook_secret_set false, want true")
	}
	for _, path := range []string{fmt.Sprintf("/api/v1/projects/%d", p.ID), "/api/v1/projects/p", "/api/v1/projects"} {
		for _, key := range []string{"", e.admin} {
			r := e.do("GET", path, key, nil).want(t, http.StatusOK)
			bodies["GET "+path+" key="+key] = r.Body
			if !strings.Contains(string(r.Body), `"webhook_secret_set":true`) {
				t.Errorf("GET %s: %s, want \"webhook_secret_set\":true", path, r.Body)
			}
		}
	}
	// A PUT that does not mention the secret keeps it and does not show it either.
	r = e.do("PUT", "/api/v1/projects/p", e.admin, obj{"description": "d"}).want(t, http.StatusOK)
	bodies["PUT"] = r.Body
	for what, b := range bodies {
		if strings.Contains(string(b), secret) || strings.Contains(string(b), `"webhook_secret"`) {
			t.Errorf("%s answer shows the secret: %s", what, b)
		}
	}
	stored, err := e.db.ProjectWebhookSecret(context.Background(), p.ID)
	if err != nil || stored != secret {
		t.Errorf("stored secret %q (%v), want it kept after a PUT without it", stored, err)
	}

	// An empty secret clears it.
	r.decode(t, &p)
	e.do("PUT", "/api/v1/projects/p", e.admin, obj{"webhook_secret": ""}).want(t, http.StatusOK).decode(t, &p)
	if p.WebhookSecretSet {
		t.Errorf("after clearing: webhook_secret_set true, want false")
	}
	if stored, _ := e.db.ProjectWebhookSecret(context.Background(), p.ID); stored != "" {
		t.Errorf("stored secret %q after clearing, want none", stored)
	}
}
