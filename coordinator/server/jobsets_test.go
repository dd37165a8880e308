package server_test

import (
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"testing"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/storage/storagetest"
)

func jobsetPath(pid, id any) string { return fmt.Sprintf("/api/v1/projects/%v/jobsets/%v", pid, id) }

func TestJobsets_CreateIs201WithLocationDefaultsAndInputs(t *testing.T) {
	t.Parallel()
	e := newEnvConfig(t, storagetest.New(t), func(c *config.Config) { c.Eval.AllowedInputPaths = []string{"/srv"} })
	p := e.createProject("proj", nil)
	r := e.do("POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", p.ID), e.admin, obj{
		"name": "main", "branch": "release/24.05",
		"inputs": []obj{
			{"name": "nixpkgs", "type": "git", "value": "https://github.com/NixOS/nixpkgs.git nixos-unstable"},
			{"name": "debug", "type": "boolean", "value": "false"},
			{"name": "system", "type": "string", "value": "x86_64-linux"},
			{"name": "src", "type": "path", "value": "/srv/src"},
		},
	}).want(t, http.StatusCreated)
	var j jobset
	r.decode(t, &j)
	if want := jobsetPath(p.ID, j.ID); r.Header.Get("Location") != want {
		t.Errorf("Location %q, want %q", r.Header.Get("Location"), want)
	}
	if j.ID <= 0 || j.ProjectID != p.ID || j.Project != "proj" || j.Name != "main" || j.Branch != "release/24.05" {
		t.Errorf("created jobset = %+v", j)
	}
	// Defaults of a jobset created without them.
	if !j.FlakeMode || j.NixExpression != "hydraJobs" || j.CheckInterval != 60 || j.SchedulingShares != 100 ||
		j.State != "enabled" || j.KeepNr != 3 || j.LastCheckedAt != nil || j.LastCheckError != "" {
		t.Errorf("defaults: %+v", j)
	}
	// Inputs come back sorted by name, each with name, type and value.
	wantInputs := []input{
		{"debug", "boolean", "false"},
		{"nixpkgs", "git", "https://github.com/NixOS/nixpkgs.git nixos-unstable"},
		{"src", "path", "/srv/src"},
		{"system", "string", "x86_64-linux"},
	}
	if !slices.Equal(j.Inputs, wantInputs) {
		t.Errorf("inputs = %+v, want %+v", j.Inputs, wantInputs)
	}
	var got jobset
	e.do("GET", r.Header.Get("Location"), "", nil).want(t, http.StatusOK).decode(t, &got)
	if !reflect.DeepEqual(got, j) {
		t.Errorf("GET Location = %+v, want the created %+v", got, j)
	}
	if n := e.count(`SELECT count(*) FROM jobset_inputs WHERE jobset_id = $1`, j.ID); n != 4 {
		t.Errorf("%d input rows, want 4", n)
	}
}

func TestJobsets_GetByIDAndByNameWithinTheirProject(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	a := e.createProject("a", nil)
	b := e.createProject("b", nil)
	j := e.createJobset(a.ID, "main", obj{"inputs": []obj{{"name": "x", "type": "string", "value": "1"}}})
	for _, path := range []string{jobsetPath(a.ID, j.ID), jobsetPath("a", j.ID), jobsetPath(a.ID, "main"), jobsetPath("a", "main")} {
		var got jobset
		e.do("GET", path, "", nil).want(t, http.StatusOK).decode(t, &got)
		if !reflect.DeepEqual(got, j) {
			t.Errorf("GET %s = %+v, want %+v", path, got, j)
		}
	}
	// A jobset is only found under its own project.
	for _, path := range []string{jobsetPath(b.ID, j.ID), jobsetPath("b", "main"), jobsetPath("a", "nope"),
		jobsetPath("a", j.ID+100), jobsetPath("nope", "main")} {
		e.do("GET", path, "", nil).apiErr(t, http.StatusNotFound)
	}
	e.do("PUT", jobsetPath(b.ID, j.ID), e.admin, obj{"description": "x"}).apiErr(t, http.StatusNotFound)
	e.do("DELETE", jobsetPath(b.ID, j.ID), e.admin, nil).apiErr(t, http.StatusNotFound)
	if n := e.count(`SELECT count(*) FROM jobsets WHERE id = $1 AND description = ''`, j.ID); n != 1 {
		t.Errorf("jobset changed through another project's URL")
	}
}

func TestJobsets_ListIsNewestFirstAndPaginated(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	p := e.createProject("p", nil)
	other := e.createProject("other", nil)
	e.createJobset(other.ID, "elsewhere", nil)
	for _, n := range []string{"a", "b", "c"} {
		e.createJobset(p.ID, n, obj{"inputs": []obj{{"name": "in_" + n, "type": "string", "value": n}}})
	}
	names := func(l list[jobset]) []string {
		var out []string
		for _, j := range l.Items {
			out = append(out, j.Name)
			if len(j.Inputs) != 1 || j.Inputs[0].Name != "in_"+j.Name {
				t.Errorf("listed jobset %s has inputs %+v, want its own one input", j.Name, j.Inputs)
			}
		}
		return out
	}
	var l list[jobset]
	e.do("GET", "/api/v1/projects/p/jobsets", "", nil).want(t, http.StatusOK).decode(t, &l)
	if got := names(l); !slices.Equal(got, []string{"c", "b", "a"}) || l.Total != 3 || l.Limit != 50 || l.Offset != 0 {
		t.Errorf("list = %v total %d limit %d offset %d, want [c b a] 3 50 0", got, l.Total, l.Limit, l.Offset)
	}
	e.do("GET", fmt.Sprintf("/api/v1/projects/%d/jobsets?limit=1&offset=1", p.ID), "", nil).want(t, http.StatusOK).decode(t, &l)
	if got := names(l); !slices.Equal(got, []string{"b"}) || l.Total != 3 || l.Limit != 1 || l.Offset != 1 {
		t.Errorf("?limit=1&offset=1 = %v total %d limit %d offset %d, want [b] 3 1 1", got, l.Total, l.Limit, l.Offset)
	}
	for _, q := range []string{"limit=501", "limit=0"} {
		if ae := e.do("GET", "/api/v1/projects/p/jobsets?"+q, "", nil).apiErr(t, http.StatusUnprocessableEntity); ae.Field != "limit" {
			t.Errorf("?%s: field %q, want limit", q, ae.Field)
		}
	}
	var empty list[jobset]
	e.createProject("bare", nil)
	e.do("GET", "/api/v1/projects/bare/jobsets", "", nil).want(t, http.StatusOK).decode(t, &empty)
	if empty.Items == nil || len(empty.Items) != 0 || empty.Total != 0 {
		t.Errorf("jobsets of a project without any = %+v, want items [] total 0", empty)
	}
}

func TestJobsets_PutChangesOnlyGivenFields(t *testing.T) {
	t.Parallel()
	e := newEnvConfig(t, storagetest.New(t), func(c *config.Config) { c.Eval.AllowedInputPaths = []string{"/nix/store"} })
	p := e.createProject("p", nil)
	j := e.createJobset(p.ID, "main", obj{"description": "d", "branch": "main", "check_interval": 300,
		"scheduling_shares": 7, "state": "one_shot", "keep_nr": 9, "flake_mode": false, "nix_expression": "ci/release.nix",
		"inputs": []obj{{"name": "a", "type": "string", "value": "1"}, {"name": "b", "type": "boolean", "value": "true"}}})

	var got jobset
	e.do("PUT", jobsetPath(p.ID, j.ID), e.admin, obj{"scheduling_shares": 42}).want(t, http.StatusOK).decode(t, &got)
	want := j
	want.SchedulingShares = 42
	want.UpdatedAt = got.UpdatedAt
	if !reflect.DeepEqual(got, want) {
		t.Errorf("after PUT {scheduling_shares} =\n%+v\nwant\n%+v", got, want)
	}
	var reread jobset
	e.do("GET", jobsetPath("p", "main"), "", nil).want(t, http.StatusOK).decode(t, &reread)
	if !reflect.DeepEqual(reread, got) {
		t.Errorf("GET after PUT = %+v, want the PUT answer %+v", reread, got)
	}

	// inputs, when given, replace the old ones entirely.
	e.do("PUT", jobsetPath("p", "main"), e.admin, obj{"inputs": []obj{{"name": "c", "type": "path", "value": "/nix/store"}}}).
		want(t, http.StatusOK).decode(t, &got)
	if want := []input{{"c", "path", "/nix/store"}}; !slices.Equal(got.Inputs, want) {
		t.Errorf("inputs after replacing = %+v, want %+v", got.Inputs, want)
	}
	if got.SchedulingShares != 42 || got.Description != "d" || got.NixExpression != "ci/release.nix" {
		t.Errorf("replacing inputs changed other fields: %+v", got)
	}
	if n := e.count(`SELECT count(*) FROM jobset_inputs WHERE jobset_id = $1`, j.ID); n != 1 {
		t.Errorf("%d input rows after replacing, want 1", n)
	}
	// An empty list clears them.
	e.do("PUT", jobsetPath("p", "main"), e.admin, obj{"inputs": []obj{}}).want(t, http.StatusOK).decode(t, &got)
	if got.Inputs == nil || len(got.Inputs) != 0 {
		t.Errorf("inputs after clearing = %#v, want []", got.Inputs)
	}
	if n := e.count(`SELECT count(*) FROM jobset_inputs WHERE jobset_id = $1`, j.ID); n != 0 {
		t.Errorf("%d input rows after clearing, want 0", n)
	}

	// Rename, by name in the URL.
	e.do("PUT", jobsetPath("p", "main"), e.admin, obj{"name": "trunk"}).want(t, http.StatusOK).decode(t, &got)
	if got.ID != j.ID || got.Name != "trunk" {
		t.Errorf("after rename = %+v", got)
	}
	e.do("GET", jobsetPath("p", "main"), "", nil).apiErr(t, http.StatusNotFound)
	e.do("PUT", jobsetPath("p", "nope"), e.admin, obj{"description": "x"}).apiErr(t, http.StatusNotFound)
}

func TestJobsets_SwitchingFlakeModeSwapsTheDefaultExpression(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	p := e.createProject("p", nil)
	j := e.createJobset(p.ID, "main", nil)
	var got jobset
	e.do("PUT", jobsetPath(p.ID, j.ID), e.admin, obj{"flake_mode": false}).want(t, http.StatusOK).decode(t, &got)
	if got.FlakeMode || got.NixExpression != "release.nix" {
		t.Errorf("flake_mode false from the default: flake_mode %v nix_expression %q, want false release.nix", got.FlakeMode, got.NixExpression)
	}
	// A chosen expression is kept when the mode changes.
	e.do("PUT", jobsetPath(p.ID, j.ID), e.admin, obj{"nix_expression": "ci.nix"}).want(t, http.StatusOK)
	e.do("PUT", jobsetPath(p.ID, j.ID), e.admin, obj{"flake_mode": true}).want(t, http.StatusOK).decode(t, &got)
	if !got.FlakeMode || got.NixExpression != "ci.nix" {
		t.Errorf("flake_mode true with a chosen expression: %v %q, want true ci.nix", got.FlakeMode, got.NixExpression)
	}
}

func TestJobsets_DeleteIs204ThenGone(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	p := e.createProject("p", nil)
	j := e.createJobset(p.ID, "main", obj{"inputs": []obj{{"name": "x", "type": "string", "value": "1"}}})
	k := e.createJobset(p.ID, "other", nil)
	r := e.do("DELETE", jobsetPath(p.ID, j.ID), e.admin, nil).want(t, http.StatusNoContent)
	if len(r.Body) != 0 {
		t.Errorf("204 with a body: %q", r.Body)
	}
	e.do("GET", jobsetPath(p.ID, j.ID), "", nil).apiErr(t, http.StatusNotFound)
	e.do("DELETE", jobsetPath(p.ID, j.ID), e.admin, nil).apiErr(t, http.StatusNotFound)
	if n := e.count(`SELECT count(*) FROM jobset_inputs WHERE jobset_id = $1`, j.ID); n != 0 {
		t.Errorf("%d inputs of the deleted jobset remain", n)
	}
	e.do("DELETE", jobsetPath("p", "other"), e.admin, nil).want(t, http.StatusNoContent)
	e.do("GET", jobsetPath(p.ID, k.ID), "", nil).apiErr(t, http.StatusNotFound)
	e.do("GET", "/api/v1/projects/p", "", nil).want(t, http.StatusOK) // the project stays
}

func TestJobsets_SameNameInAnotherProjectIsAllowed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	a := e.createProject("a", nil)
	b := e.createProject("b", nil)
	ja := e.createJobset(a.ID, "main", nil)
	jb := e.createJobset(b.ID, "main", nil)
	if ja.ID == jb.ID || jb.ProjectID != b.ID {
		t.Errorf("second main = %+v, want its own jobset in project b", jb)
	}
	e.do("POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", a.ID), e.admin, obj{"name": "main"}).apiErr(t, http.StatusConflict)
}
