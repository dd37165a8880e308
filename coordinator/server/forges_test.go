package server_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/fc-ci/fc/storage"
)

type forgeView struct {
	Type                  string `json:"type"`
	APIURL                string `json:"api_url"`
	Repository            string `json:"repository"`
	TokenSet              bool   `json:"token_set"`
	StatusPerJob          bool   `json:"status_per_job"`
	PullRequestsFromForks bool   `json:"pull_requests_from_forks"`
}

type projectWithForge struct {
	ID    int64      `json:"id"`
	Forge *forgeView `json:"forge"`
}

// A project's forge is set on create and update, shown by every GET without its token
// (only whether one is set), changed field by field, and removed with null; the
// token reaches storage for the code that talks to the forge.
func TestProjects_ForgeSettings(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	const token = "ghp_0123456789abcdefSECRET"
	r := e.do("POST", "/api/v1/projects", e.admin, obj{"name": "hello", "repository_url": "https://github.com/octo/hello.git",
		"forge": obj{"type": "github", "repository": "octo/hello", "token": token, "status_per_job": true}}).want(t, http.StatusCreated)
	if strings.Contains(string(r.Body), token) {
		t.Fatalf("the token is shown: %s", r.Body)
	}
	var p projectWithForge
	r.decode(t, &p)
	want := forgeView{Type: "github", APIURL: "https://api.github.com", Repository: "octo/hello", TokenSet: true, StatusPerJob: true}
	if p.Forge == nil || *p.Forge != want {
		t.Fatalf("created forge %+v, want %+v", p.Forge, want)
	}
	for _, path := range []string{fmt.Sprintf("/api/v1/projects/%d", p.ID), "/api/v1/projects/hello", "/api/v1/projects"} {
		got := e.do("GET", path, "", nil).want(t, http.StatusOK)
		if strings.Contains(string(got.Body), token) || !strings.Contains(string(got.Body), `"token_set":true`) ||
			!strings.Contains(string(got.Body), `"api_url":"https://api.github.com"`) {
			t.Errorf("GET %s: %s", path, got.Body)
		}
	}
	f, ok, err := e.db.ProjectForge(context.Background(), p.ID)
	if err != nil || !ok || f.Token != token || f.Type != storage.ForgeGitHub || f.Repository != "octo/hello" || !f.StatusPerJob || f.PullRequestsFromForks {
		t.Fatalf("stored forge %+v %v %v", f, ok, err)
	}

	// Changing one field leaves the others, the token included.
	e.do("PUT", fmt.Sprintf("/api/v1/projects/%d", p.ID), e.admin, obj{"forge": obj{"pull_requests_from_forks": true}}).
		want(t, http.StatusOK).decode(t, &p)
	want.PullRequestsFromForks = true
	if p.Forge == nil || *p.Forge != want {
		t.Fatalf("after changing pull_requests_from_forks: %+v, want %+v", p.Forge, want)
	}
	if f, _, _ := e.db.ProjectForge(context.Background(), p.ID); f.Token != token {
		t.Errorf("the token changed to %q", f.Token)
	}
	// A PUT without "forge" leaves it alone.
	e.do("PUT", fmt.Sprintf("/api/v1/projects/%d", p.ID), e.admin, obj{"description": "x"}).want(t, http.StatusOK).decode(t, &p)
	if p.Forge == nil || *p.Forge != want {
		t.Fatalf("a PUT without forge changed it: %+v", p.Forge)
	}
	// Another type takes its own default API URL; "" clears the token.
	e.do("PUT", fmt.Sprintf("/api/v1/projects/%d", p.ID), e.admin, obj{"forge": obj{"type": "gitlab",
		"repository": "group/subgroup/hello", "token": ""}}).want(t, http.StatusOK).decode(t, &p)
	want = forgeView{Type: "gitlab", APIURL: "https://gitlab.com/api/v4", Repository: "group/subgroup/hello", StatusPerJob: true, PullRequestsFromForks: true}
	if p.Forge == nil || *p.Forge != want {
		t.Fatalf("after moving to GitLab: %+v, want %+v", p.Forge, want)
	}
	// null removes it.
	r = e.do("PUT", fmt.Sprintf("/api/v1/projects/%d", p.ID), e.admin, obj{"forge": nil}).want(t, http.StatusOK)
	if !strings.Contains(string(r.Body), `"forge":null`) {
		t.Fatalf("after forge null: %s", r.Body)
	}
	if _, ok, _ := e.db.ProjectForge(context.Background(), p.ID); ok {
		t.Error("the forge is still stored")
	}
	// A project made without one shows null.
	r = e.do("POST", "/api/v1/projects", e.admin, obj{"name": "plain", "repository_url": "https://example.org/p.git"}).want(t, http.StatusCreated)
	if !strings.Contains(string(r.Body), `"forge":null`) {
		t.Errorf("a project without a forge: %s", r.Body)
	}
}

// Forge settings are checked, each error naming its field, and a refused create
// leaves no project behind.
func TestProjects_ForgeValidation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	cases := []struct {
		forge any
		field string
	}{
		{obj{"repository": "octo/hello"}, "forge.type"},
		{obj{"type": "bitbucket", "repository": "octo/hello"}, "forge.type"},
		{obj{"type": "gitea", "repository": "octo/hello"}, "forge.api_url"},
		{obj{"type": "forgejo", "repository": "octo/hello"}, "forge.api_url"},
		{obj{"type": "github", "api_url": "ftp://api.github.com", "repository": "octo/hello"}, "forge.api_url"},
		{obj{"type": "github", "api_url": "api.github.com", "repository": "octo/hello"}, "forge.api_url"},
		{obj{"type": "github", "api_url": "https://user:pw@api.github.com", "repository": "octo/hello"}, "forge.api_url"},
		{obj{"type": "github", "api_url": "https://api.github.com/?x=1", "repository": "octo/hello"}, "forge.api_url"},
		{obj{"type": "github"}, "forge.repository"},
		{obj{"type": "github", "repository": "hello"}, "forge.repository"},
		{obj{"type": "github", "repository": "a/b/c"}, "forge.repository"},
		{obj{"type": "github", "repository": "../etc"}, "forge.repository"},
		{obj{"type": "gitea", "api_url": "https://codeberg.org", "repository": "octo/hello world"}, "forge.repository"},
		{obj{"type": "gitlab", "repository": "hello"}, "forge.repository"},
		{obj{"type": "gitlab", "repository": "group/../x"}, "forge.repository"},
		{obj{"type": "github", "repository": "octo/hello", "token": "two words"}, "forge.token"},
		{obj{"type": "github", "repository": "octo/hello", "token": "line\r\nX-Injected: 1"}, "forge.token"},
		{obj{"type": "github", "repository": "octo/hello", "tokn": "x"}, "forge.tokn"},
		{obj{"type": 7, "repository": "octo/hello"}, "forge.type"},
		{"github", "forge"},
	}
	for i, tc := range cases {
		name := fmt.Sprintf("p%d", i)
		got := e.do("POST", "/api/v1/projects", e.admin, obj{"name": name, "repository_url": "https://example.org/x.git", "forge": tc.forge}).
			apiErr(t, http.StatusUnprocessableEntity)
		if got.Field != tc.field {
			t.Errorf("forge %v: field %q (%s), want %q", tc.forge, got.Field, got.Error, tc.field)
		}
		e.do("GET", "/api/v1/projects/"+name, "", nil).apiErr(t, http.StatusNotFound)
	}
	// Those accepted: GitLab by id and by a path with groups, Gitea with its /api/v1.
	for i, f := range []obj{
		{"type": "gitlab", "repository": "278964"},
		{"type": "gitlab", "api_url": "https://gitlab.example.org/api/v4/", "repository": "a/b.c/d-e_f"},
		{"type": "gitea", "api_url": "https://codeberg.org/api/v1", "repository": "forgejo/forgejo"},
		{"type": "forgejo", "api_url": "http://10.0.0.2:3000", "repository": "me/x.y"},
	} {
		var p projectWithForge
		e.do("POST", "/api/v1/projects", e.admin, obj{"name": fmt.Sprintf("ok%d", i), "repository_url": "https://example.org/x.git", "forge": f}).
			want(t, http.StatusCreated).decode(t, &p)
		if p.Forge == nil || p.Forge.Repository != f["repository"] || strings.HasSuffix(p.Forge.APIURL, "/") {
			t.Errorf("forge %v: %+v", f, p.Forge)
		}
	}
	// An update that fails validation changes nothing.
	p := e.createProject("keep", obj{"forge": obj{"type": "github", "repository": "octo/keep"}})
	e.do("PUT", fmt.Sprintf("/api/v1/projects/%d", p.ID), e.admin, obj{"description": "changed", "forge": obj{"repository": "x"}}).
		apiErr(t, http.StatusUnprocessableEntity)
	var after projectWithForge
	r := e.do("GET", fmt.Sprintf("/api/v1/projects/%d", p.ID), "", nil).want(t, http.StatusOK)
	r.decode(t, &after)
	if after.Forge == nil || after.Forge.Repository != "octo/keep" || strings.Contains(string(r.Body), "changed") {
		t.Errorf("a refused update changed the project: %s", r.Body)
	}
}

// A jobset's pull request settings round-trip; the default list leaves hidden
// jobsets (closed pull requests') out and ?all=true shows them; a pull request's
// jobset cannot follow pull requests itself, and follows its parent's changes.
func TestJobsets_PullRequestSettingsAndHiddenJobsets(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	p := e.createProject("prs", nil)
	var parent struct {
		ID                int64 `json:"id"`
		PullRequests      bool  `json:"pull_requests"`
		PullRequestDrafts bool  `json:"pull_request_drafts"`
	}
	e.do("POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", p.ID), e.admin, obj{"name": "main", "branch": "main",
		"pull_requests": true, "pull_request_drafts": true}).want(t, http.StatusCreated).decode(t, &parent)
	if !parent.PullRequests || !parent.PullRequestDrafts {
		t.Fatalf("created %+v", parent)
	}
	ctx := context.Background()
	pj, err := e.db.GetJobset(ctx, p.ID, parent.ID)
	if err != nil {
		t.Fatal(err)
	}
	open, err := e.db.OpenPullRequestJobset(ctx, pj, storage.PullRequestHead{Number: 5, Ref: "refs/pull/5/head",
		HeadSHA: strings.Repeat("a", 40), HeadBranch: "feature", HeadRepository: "octo/prs", Title: "A change"})
	if err != nil || !open.Created || !open.Triggered || open.Name != "main-pr-5" {
		t.Fatalf("open: %+v %v", open, err)
	}
	closed, err := e.db.OpenPullRequestJobset(ctx, pj, storage.PullRequestHead{Number: 6, Ref: "refs/pull/6/head", HeadSHA: strings.Repeat("b", 40)})
	if err != nil {
		t.Fatal(err)
	}
	if ch, err := e.db.ClosePullRequestJobset(ctx, parent.ID, 6); err != nil || !ch.Closed {
		t.Fatalf("close: %+v %v", ch, err)
	}
	names := func(query string) []string {
		var l struct {
			Items []struct {
				Name        string `json:"name"`
				Hidden      bool   `json:"hidden"`
				State       string `json:"state"`
				Branch      string `json:"branch"`
				PullRequest *struct {
					Number  int64  `json:"number"`
					HeadSHA string `json:"head_sha"`
				} `json:"pull_request"`
			} `json:"items"`
			Total int `json:"total"`
		}
		e.do("GET", fmt.Sprintf("/api/v1/projects/%d/jobsets%s", p.ID, query), "", nil).want(t, http.StatusOK).decode(t, &l)
		var out []string
		for _, j := range l.Items {
			s := fmt.Sprintf("%s:%s:%v", j.Name, j.State, j.Hidden)
			if j.PullRequest != nil {
				s += fmt.Sprintf(":#%d@%s:%s", j.PullRequest.Number, j.PullRequest.HeadSHA[:1], j.Branch)
			}
			out = append(out, s)
		}
		if l.Total != len(out) {
			t.Errorf("total %d for %d items", l.Total, len(out))
		}
		return out
	}
	if got, want := strings.Join(names(""), " "), "main-pr-5:enabled:false:#5@a:refs/pull/5/head main:enabled:false"; got != want {
		t.Errorf("default list %q, want %q", got, want)
	}
	if got, want := strings.Join(names("?all=true"), " "), "main-pr-6:disabled:true:#6@b:refs/pull/6/head main-pr-5:enabled:false:#5@a:refs/pull/5/head main:enabled:false"; got != want {
		t.Errorf("?all=true %q, want %q", got, want)
	}
	e.do("GET", fmt.Sprintf("/api/v1/projects/%d/jobsets?all=maybe", p.ID), "", nil).apiErr(t, http.StatusUnprocessableEntity)

	// The child cannot follow pull requests.
	if got := e.do("PUT", fmt.Sprintf("/api/v1/projects/%d/jobsets/%d", p.ID, open.JobsetID), e.admin, obj{"pull_requests": true}).
		apiErr(t, http.StatusUnprocessableEntity); got.Field != "pull_requests" {
		t.Errorf("field %q", got.Field)
	}
	// A change to the parent reaches its open child, not the closed one.
	e.do("PUT", fmt.Sprintf("/api/v1/projects/%d/jobsets/%d", p.ID, parent.ID), e.admin, obj{"keep_nr": 9,
		"inputs": []obj{{"name": "x", "type": "string", "value": "1"}}}).want(t, http.StatusOK)
	child, _ := e.db.GetJobset(ctx, p.ID, open.JobsetID)
	old, _ := e.db.GetJobset(ctx, p.ID, closed.JobsetID)
	if child.KeepNr != 9 || len(child.Inputs) != 1 || child.Inputs[0].Value != "1" || old.KeepNr == 9 || len(old.Inputs) != 0 {
		t.Errorf("after changing the parent: child %+v, closed child %+v", child, old)
	}
	// Disabling the parent disables its open children; turning pull_requests off
	// closes them.
	e.do("PUT", fmt.Sprintf("/api/v1/projects/%d/jobsets/%d", p.ID, parent.ID), e.admin, obj{"state": "disabled"}).want(t, http.StatusOK)
	if child, _ = e.db.GetJobset(ctx, p.ID, open.JobsetID); child.State != "disabled" || child.Hidden {
		t.Errorf("child of a disabled parent: %s hidden %v", child.State, child.Hidden)
	}
	e.do("PUT", fmt.Sprintf("/api/v1/projects/%d/jobsets/%d", p.ID, parent.ID), e.admin, obj{"state": "enabled"}).want(t, http.StatusOK)
	if child, _ = e.db.GetJobset(ctx, p.ID, open.JobsetID); child.State != "enabled" {
		t.Errorf("child of a re-enabled parent: %s", child.State)
	}
	e.do("PUT", fmt.Sprintf("/api/v1/projects/%d/jobsets/%d", p.ID, parent.ID), e.admin, obj{"pull_requests": false}).want(t, http.StatusOK)
	if got, want := strings.Join(names(""), " "), "main:enabled:false"; got != want {
		t.Errorf("after pull_requests off: %q, want %q", got, want)
	}
}
