package people_test

import (
	"fmt"
	"net/http"
	"net/url"
	"testing"

	"github.com/fc-ci/fc/storage"
)

type starOut struct {
	JobsetID    int64  `json:"jobset_id"`
	Project     string `json:"project"`
	Jobset      string `json:"jobset"`
	Job         string `json:"job"`
	LastBuildID *int64 `json:"last_build_id"`
	LastStatus  string `json:"last_status"`
}

func TestStarredJobs_StarListUnstar(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.do("POST", "/api/v1/projects", e.admin, obj{"name": "nixos", "repository_url": "https://example.org/r.git"})
	var proj struct{ ID int64 }
	p.decode(t, &proj)
	j := e.do("POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", proj.ID), e.admin, obj{"name": "trunk"})
	var js struct{ ID int64 }
	j.decode(t, &js)
	if p.Status != http.StatusCreated || j.Status != http.StatusCreated {
		t.Fatalf("fixtures: %d %s, %d %s", p.Status, p.Body, j.Status, j.Body)
	}
	_, name, pw := e.user(storage.RoleReadOnly)
	b := e.as(name, pw)

	for _, body := range []obj{
		{"jobset_id": js.ID, "job": "tests.boot"},
		{"jobset_id": "nixos/trunk", "job": "iso"},
		{"jobset_id": "nixos/trunk", "job": "iso"}, // again: nothing changes
	} {
		if a := b.write("POST", "/api/v1/me/starred-jobs", body); a.Status != http.StatusCreated {
			t.Errorf("star %v: %d %s", body, a.Status, a.Body)
		}
	}
	for _, c := range []struct {
		body  obj
		field string
	}{
		{obj{"jobset_id": 999999, "job": "x"}, "jobset_id"},
		{obj{"jobset_id": "nixos/nope", "job": "x"}, "jobset_id"},
		{obj{"jobset_id": "nixos", "job": "x"}, "jobset_id"},
		{obj{"jobset_id": true, "job": "x"}, "jobset_id"},
		{obj{"job": "x"}, "jobset_id"},
		{obj{"jobset_id": js.ID, "job": ""}, "job"},
		{obj{"jobset_id": js.ID, "job": "a b"}, "job"},
	} {
		if a := b.write("POST", "/api/v1/me/starred-jobs", c.body); a.Status != http.StatusUnprocessableEntity || a.field() != c.field {
			t.Errorf("star %v: %d %s, want 422 naming %s", c.body, a.Status, a.Body, c.field)
		}
	}
	if a := b.api("POST", "/api/v1/me/starred-jobs", obj{"jobset_id": js.ID, "job": "csrf"}, false); a.Status != http.StatusForbidden {
		t.Errorf("star without the CSRF token: %d", a.Status)
	}

	list := func() []starOut {
		t.Helper()
		a := b.get("/api/v1/me/starred-jobs")
		var l struct {
			Items []starOut
			Total int
		}
		a.decode(t, &l)
		if a.Status != http.StatusOK || l.Total != len(l.Items) {
			t.Fatalf("GET starred: %d %s", a.Status, a.Body)
		}
		return l.Items
	}
	got := list()
	if len(got) != 2 || got[0].Job != "iso" || got[1].Job != "tests.boot" || got[0].Project != "nixos" || got[0].Jobset != "trunk" ||
		got[0].JobsetID != js.ID || got[0].LastBuildID != nil {
		t.Fatalf("starred: %+v", got)
	}
	// Someone else's stars are their own.
	_, other, otherPW := e.user(storage.RoleReadOnly)
	if a := e.as(other, otherPW).get("/api/v1/me/starred-jobs"); a.Status != http.StatusOK || string(a.Body) == "" {
		t.Fatal(a.Status)
	} else {
		var l struct{ Total int }
		a.decode(t, &l)
		if l.Total != 0 {
			t.Errorf("another user sees %d stars", l.Total)
		}
	}

	if a := b.write("DELETE", "/api/v1/me/starred-jobs", obj{"jobset_id": "nixos/trunk", "job": "iso"}); a.Status != http.StatusNoContent {
		t.Errorf("unstar by body: %d %s", a.Status, a.Body)
	}
	q := url.Values{"jobset_id": {fmt.Sprint(js.ID)}, "job": {"tests.boot"}}
	if a := b.write("DELETE", "/api/v1/me/starred-jobs?"+q.Encode(), nil); a.Status != http.StatusNoContent {
		t.Errorf("unstar by query: %d %s", a.Status, a.Body)
	}
	if a := b.write("DELETE", "/api/v1/me/starred-jobs?"+url.Values{"jobset_id": {"nixos/trunk"}, "job": {"tests.boot"}}.Encode(), nil); a.Status != http.StatusNotFound {
		t.Errorf("unstar what is not starred: %d %s", a.Status, a.Body)
	}
	if got := list(); len(got) != 0 {
		t.Errorf("left after unstarring: %+v", got)
	}
}
