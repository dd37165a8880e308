package forge

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/fc-ci/fc/storage"
)

// request is what a fake forge saw of one request.
type request struct {
	Method, Path, RawPath string
	Query                 url.Values
	Header                http.Header
}

// fakeForge answers each request with the next of pages (body, extra headers), and
// records what it saw.
type fakeForge struct {
	*httptest.Server
	mu    sync.Mutex
	seen  []request
	pages []page
}

type page struct {
	body   string
	header map[string]string
	status int
}

func newFakeForge(t *testing.T, pages ...page) *fakeForge {
	t.Helper()
	f := &fakeForge{pages: pages}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		n := len(f.seen)
		f.seen = append(f.seen, request{Method: r.Method, Path: r.URL.Path, RawPath: r.URL.EscapedPath(), Query: r.URL.Query(), Header: r.Header.Clone()})
		f.mu.Unlock()
		if n >= len(f.pages) {
			http.Error(w, `{"message":"no such page"}`, http.StatusNotFound)
			return
		}
		p := f.pages[n]
		for k, v := range p.header {
			w.Header().Set(k, strings.ReplaceAll(v, "{url}", f.URL))
		}
		w.Header().Set("Content-Type", "application/json")
		if p.status != 0 {
			w.WriteHeader(p.status)
		}
		fmt.Fprint(w, p.body)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeForge) requests() []request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]request(nil), f.seen...)
}

// checkHeaders fails unless r carries every header of want exactly, and none of
// absent.
func checkHeaders(t *testing.T, r request, want map[string]string, absent ...string) {
	t.Helper()
	for k, v := range want {
		if got := r.Header.Values(k); len(got) != 1 || got[0] != v {
			t.Errorf("%s %s: header %s = %q, want exactly %q", r.Method, r.Path, k, got, v)
		}
	}
	for _, k := range absent {
		if v := r.Header.Get(k); v != "" {
			t.Errorf("%s %s: header %s = %q, want none", r.Method, r.Path, k, v)
		}
	}
}

const githubPulls1 = `[
 {"number": 12, "state": "open", "title": "Fix the frobnicator", "draft": false,
  "head": {"label": "octo:fix", "ref": "fix", "sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e", "repo": {"id": 1296269, "full_name": "octo/hello"}},
  "base": {"label": "octo:main", "ref": "main", "sha": "9049f1265b7d61be4a8904a9a27120d2064dab3b", "repo": {"id": 1296269, "full_name": "octo/hello"}}},
 {"number": 13, "state": "open", "title": "From a fork", "draft": true,
  "head": {"label": "someone:feature", "ref": "feature", "sha": "aa218f56b14c9653891f9e74264a383fa43fefbd", "repo": {"id": 99, "full_name": "someone/hello"}},
  "base": {"label": "octo:main", "ref": "main", "sha": "9049f1265b7d61be4a8904a9a27120d2064dab3b", "repo": {"id": 1296269, "full_name": "octo/hello"}}}
]`

const githubPulls2 = `[
 {"number": 14, "state": "open", "title": "Fork deleted", "draft": false,
  "head": {"label": "gone:x", "ref": "x", "sha": "bb218f56b14c9653891f9e74264a383fa43fefbd", "repo": null},
  "base": {"label": "octo:main", "ref": "main", "sha": "9049f1265b7d61be4a8904a9a27120d2064dab3b", "repo": {"id": 1296269, "full_name": "octo/hello"}}}
]`

// GitHub: GET /repos/{owner}/{repo}/pulls?state=open&base=…&per_page=100 with a
// bearer token and GitHub's media type, every page of the Link header followed.
func TestListGitHubPullRequests(t *testing.T) {
	t.Parallel()
	f := newFakeForge(t,
		page{body: githubPulls1, header: map[string]string{"Link": `<{url}/repositories/1296269/pulls?state=open&base=main&per_page=100&page=2>; rel="next", <{url}/repositories/1296269/pulls?state=open&base=main&per_page=100&page=2>; rel="last"`}},
		page{body: githubPulls2, header: map[string]string{"Link": `<{url}/repositories/1296269/pulls?state=open&base=main&per_page=100&page=1>; rel="prev", <{url}/repositories/1296269/pulls?state=open&base=main&per_page=100&page=1>; rel="first"`}})
	got, err := ListPullRequests(context.Background(), f.Client(), storage.ProjectForge{Type: storage.ForgeGitHub,
		APIURL: f.URL, Repository: "octo/hello", Token: "ghp_secret"}, "main")
	if err != nil {
		t.Fatal(err)
	}
	want := []PullRequest{
		{Number: 12, Title: "Fix the frobnicator", BaseBranch: "main", HeadSHA: "6dcb09b5b57875f334f61aebed695e2e4193db5e", HeadBranch: "fix", HeadRepository: "octo/hello", Open: true},
		{Number: 13, Title: "From a fork", BaseBranch: "main", HeadSHA: "aa218f56b14c9653891f9e74264a383fa43fefbd", HeadBranch: "feature", HeadRepository: "someone/hello", FromFork: true, Draft: true, Open: true},
		{Number: 14, Title: "Fork deleted", BaseBranch: "main", HeadSHA: "bb218f56b14c9653891f9e74264a383fa43fefbd", HeadBranch: "x", FromFork: true, Open: true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("pull requests\n got %+v\nwant %+v", got, want)
	}
	reqs := f.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests, want 2 (both pages)", len(reqs))
	}
	first := reqs[0]
	if first.Method != "GET" || first.Path != "/repos/octo/hello/pulls" ||
		!reflect.DeepEqual(first.Query, url.Values{"state": {"open"}, "base": {"main"}, "per_page": {"100"}}) {
		t.Errorf("first request %s %s ?%v", first.Method, first.Path, first.Query)
	}
	if second := reqs[1]; second.Path != "/repositories/1296269/pulls" || second.Query.Get("page") != "2" {
		t.Errorf("second request %s ?%v, want the Link header's next page", second.Path, second.Query)
	}
	for _, r := range reqs {
		checkHeaders(t, r, map[string]string{"Authorization": "Bearer ghp_secret", "Accept": "application/vnd.github+json",
			"X-GitHub-Api-Version": "2022-11-28", "User-Agent": "fc-ci"}, "PRIVATE-TOKEN")
	}

	// No token: no Authorization header (public repositories).
	f2 := newFakeForge(t, page{body: `[]`})
	if _, err := ListGitHubPullRequests(context.Background(), f2.Client(), f2.URL, "octo/hello", "", "dev"); err != nil {
		t.Fatal(err)
	}
	checkHeaders(t, f2.requests()[0], map[string]string{"Accept": "application/vnd.github+json"}, "Authorization")
	if q := f2.requests()[0].Query.Get("base"); q != "dev" {
		t.Errorf("base=%q, want dev", q)
	}
}

// A next page elsewhere than the API would get the token: refused.
func TestListGitHubPullRequests_NextLinkElsewhereIsRefused(t *testing.T) {
	t.Parallel()
	f := newFakeForge(t, page{body: `[]`, header: map[string]string{"Link": `<https://evil.example.org/pulls?page=2>; rel="next"`}})
	_, err := ListGitHubPullRequests(context.Background(), f.Client(), f.URL, "octo/hello", "tok", "main")
	if err == nil || !strings.Contains(err.Error(), "is not under") {
		t.Fatalf("err = %v, want the next page refused", err)
	}
	if n := len(f.requests()); n != 1 {
		t.Errorf("%d requests, want 1", n)
	}
}

func giteaPull(n int, base string, headRepo int, title string, extra string) string {
	return fmt.Sprintf(`{"id": %[1]d0, "number": %[1]d, "title": %[4]q, "state": "open", "merged": false %[5]s,
	  "head": {"label": "feature-%[1]d", "ref": "feature-%[1]d", "sha": "%040[1]x", "repo_id": %[3]d, "repo": {"id": %[3]d, "full_name": "user%[3]d/hello"}},
	  "base": {"label": %[2]q, "ref": %[2]q, "sha": "9049f1265b7d61be4a8904a9a27120d2064dab3b", "repo_id": 1, "repo": {"id": 1, "full_name": "org/hello"}}}`,
		n, base, headRepo, title, extra)
}

// Gitea and Forgejo: GET /api/v1/repos/{owner}/{repo}/pulls?state=open&page=N&limit=50
// with "Authorization: token …", until a page comes back short; only those based on
// the branch are kept, drafts by the field or the WIP prefix.
func TestListGiteaPullRequests(t *testing.T) {
	t.Parallel()
	var full []string
	for i := 1; i <= 50; i++ {
		base := "main"
		if i%2 == 0 {
			base = "dev"
		}
		full = append(full, giteaPull(i, base, 1, fmt.Sprintf("change %d", i), ""))
	}
	second := []string{giteaPull(51, "main", 7, "WIP: from a fork", ""), giteaPull(52, "main", 1, "drafted", `, "draft": true`)}
	for _, typ := range []string{storage.ForgeGitea, storage.ForgeForgejo} {
		t.Run(typ, func(t *testing.T) {
			t.Parallel()
			f := newFakeForge(t, page{body: "[" + strings.Join(full, ",") + "]"}, page{body: "[" + strings.Join(second, ",") + "]"})
			// The instance's root with /api/v1 is the same as without.
			got, err := ListPullRequests(context.Background(), f.Client(), storage.ProjectForge{Type: typ, APIURL: f.URL + "/api/v1/",
				Repository: "org/hello", Token: "gitea-secret"}, "main")
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 27 {
				t.Fatalf("%d pull requests, want the 25 on main of page 1 and 2 of page 2", len(got))
			}
			if p := got[0]; p.Number != 1 || p.BaseBranch != "main" || p.HeadSHA != fmt.Sprintf("%040x", 1) || p.HeadBranch != "feature-1" ||
				p.HeadRepository != "user1/hello" || p.FromFork || p.Draft || !p.Open {
				t.Errorf("first pull request %+v", p)
			}
			if p := got[25]; p.Number != 51 || !p.FromFork || !p.Draft || p.HeadRepository != "user7/hello" {
				t.Errorf("pull request from a fork with a WIP title: %+v", p)
			}
			if p := got[26]; p.Number != 52 || p.FromFork || !p.Draft {
				t.Errorf("draft pull request: %+v", p)
			}
			reqs := f.requests()
			if len(reqs) != 2 {
				t.Fatalf("%d requests, want 2", len(reqs))
			}
			for i, r := range reqs {
				want := url.Values{"state": {"open"}, "page": {fmt.Sprint(i + 1)}, "limit": {"50"}}
				if r.Method != "GET" || r.Path != "/api/v1/repos/org/hello/pulls" || !reflect.DeepEqual(r.Query, want) {
					t.Errorf("request %d: %s %s ?%v, want GET /api/v1/repos/org/hello/pulls ?%v", i, r.Method, r.Path, r.Query, want)
				}
				checkHeaders(t, r, map[string]string{"Authorization": "token gitea-secret", "Accept": "application/json"}, "PRIVATE-TOKEN")
			}
		})
	}
}

const gitlabMRs1 = `[
 {"id": 84, "iid": 3, "project_id": 278964, "title": "Draft: refactor", "state": "opened", "draft": true, "work_in_progress": true,
  "target_branch": "main", "source_branch": "refactor", "source_project_id": 278964, "target_project_id": 278964,
  "sha": "8888888888888888888888888888888888888888", "merge_status": "can_be_merged"},
 {"id": 85, "iid": 4, "project_id": 278964, "title": "From a fork", "state": "opened", "draft": false, "work_in_progress": false,
  "target_branch": "main", "source_branch": "feature", "source_project_id": 1000, "target_project_id": 278964,
  "sha": "9999999999999999999999999999999999999999"}
]`

const gitlabMRs2 = `[
 {"id": 86, "iid": 5, "project_id": 278964, "title": "Plain", "state": "opened", "draft": false,
  "target_branch": "main", "source_branch": "plain", "source_project_id": 278964, "target_project_id": 278964,
  "sha": "7777777777777777777777777777777777777777"}
]`

// GitLab: GET /projects/{URL-encoded path}/merge_requests?state=opened&target_branch=…
// &per_page=100&page=N with PRIVATE-TOKEN, following X-Next-Page.
func TestListGitLabMergeRequests(t *testing.T) {
	t.Parallel()
	f := newFakeForge(t,
		page{body: gitlabMRs1, header: map[string]string{"X-Next-Page": "2", "X-Page": "1", "X-Per-Page": "100"}},
		page{body: gitlabMRs2, header: map[string]string{"X-Next-Page": "", "X-Page": "2", "X-Per-Page": "100"}})
	got, err := ListPullRequests(context.Background(), f.Client(), storage.ProjectForge{Type: storage.ForgeGitLab,
		APIURL: f.URL + "/api/v4", Repository: "group/sub group/hello", Token: "glpat-secret"}, "main")
	if err != nil {
		t.Fatal(err)
	}
	want := []PullRequest{
		{Number: 3, Title: "Draft: refactor", BaseBranch: "main", HeadSHA: strings.Repeat("8", 40), HeadBranch: "refactor", HeadRepository: "group/sub group/hello", Draft: true, Open: true},
		{Number: 4, Title: "From a fork", BaseBranch: "main", HeadSHA: strings.Repeat("9", 40), HeadBranch: "feature", HeadRepository: "1000", FromFork: true, Open: true},
		{Number: 5, Title: "Plain", BaseBranch: "main", HeadSHA: strings.Repeat("7", 40), HeadBranch: "plain", HeadRepository: "group/sub group/hello", Open: true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("merge requests\n got %+v\nwant %+v", got, want)
	}
	reqs := f.requests()
	if len(reqs) != 2 {
		t.Fatalf("%d requests, want 2", len(reqs))
	}
	for i, r := range reqs {
		want := url.Values{"state": {"opened"}, "target_branch": {"main"}, "per_page": {"100"}, "page": {fmt.Sprint(i + 1)}}
		if r.Method != "GET" || r.RawPath != "/api/v4/projects/group%2Fsub%20group%2Fhello/merge_requests" || !reflect.DeepEqual(r.Query, want) {
			t.Errorf("request %d: %s %s ?%v", i, r.Method, r.RawPath, r.Query)
		}
		checkHeaders(t, r, map[string]string{"PRIVATE-TOKEN": "glpat-secret", "Accept": "application/json"}, "Authorization")
	}

	// A numeric project id goes as it is.
	f2 := newFakeForge(t, page{body: `[]`})
	if _, err := ListGitLabMergeRequests(context.Background(), f2.Client(), f2.URL, "278964", "t", "main"); err != nil {
		t.Fatal(err)
	}
	if p := f2.requests()[0].RawPath; p != "/projects/278964/merge_requests" {
		t.Errorf("path %q", p)
	}
}

// A forge's error answer is an error that says what the forge said, and never the
// token.
func TestListPullRequests_ErrorsSayWhatTheForgeSaid(t *testing.T) {
	t.Parallel()
	for _, typ := range []string{storage.ForgeGitHub, storage.ForgeGitea, storage.ForgeGitLab} {
		f := newFakeForge(t, page{status: http.StatusUnauthorized, body: `{"message":"Bad credentials"}`})
		_, err := ListPullRequests(context.Background(), f.Client(), storage.ProjectForge{Type: typ, APIURL: f.URL,
			Repository: "o/r", Token: "the-token-itself"}, "main")
		if err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "Bad credentials") ||
			strings.Contains(err.Error(), "the-token-itself") {
			t.Errorf("%s: err = %v", typ, err)
		}
	}
}

func TestHeadRef(t *testing.T) {
	t.Parallel()
	for typ, want := range map[string]string{storage.ForgeGitHub: "refs/pull/7/head", storage.ForgeGitea: "refs/pull/7/head",
		storage.ForgeForgejo: "refs/pull/7/head", storage.ForgeGitLab: "refs/merge-requests/7/head"} {
		if got := HeadRef(typ, 7); got != want {
			t.Errorf("HeadRef(%s) = %q, want %q", typ, got, want)
		}
	}
}
