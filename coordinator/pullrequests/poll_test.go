package pullrequests_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/fc-ci/fc/coordinator/pullrequests"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// A poll takes what the forge lists as a webhook would (drafts and forks skipped
// unless allowed), leaves everything as it is when the forge cannot be listed (an
// outage must not close every pull request's jobset), and closes the jobsets of
// requests the forge no longer lists.
func TestPoll_ListsSkipsAndSurvivesAForgeOutage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	var mu sync.Mutex
	status, body := http.StatusOK, ""
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.URL.Path != "/api/v1/repos/org/demo/pulls" || r.Header.Get("Authorization") != "token tok" {
			t.Errorf("unexpected request %s %v", r.URL, r.Header)
		}
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	}))
	t.Cleanup(api.Close)
	answer := func(s int, b string) {
		mu.Lock()
		defer mu.Unlock()
		status, body = s, b
	}
	pull := func(n, headRepo int, title string, draft bool) string {
		return fmt.Sprintf(`{"number": %d, "title": %q, "state": "open", "draft": %v,
			"head": {"ref": "f%d", "sha": "%040x", "repo_id": %d, "repo": {"full_name": "x/demo"}},
			"base": {"ref": "main", "repo_id": 1}}`, n, title, draft, n, n, headRepo)
	}

	p, err := db.CreateProject(ctx, storage.ProjectFields{Name: "demo", RepositoryURL: "/nonexistent", Enabled: true})
	if err != nil {
		t.Fatal(err)
	}
	parent, err := db.CreateJobset(ctx, p.ID, storage.JobsetFields{Name: "main", Branch: "main", NixExpression: "release.nix",
		SchedulingShares: 100, State: storage.JobsetEnabled, KeepNr: 3, PullRequests: true})
	if err != nil {
		t.Fatal(err)
	}
	// Someone's own jobset has the name pull request 4's would have: it stays theirs.
	if _, err := db.CreateJobset(ctx, p.ID, storage.JobsetFields{Name: "main-pr-4", Branch: "other", NixExpression: "release.nix",
		SchedulingShares: 100, State: storage.JobsetDisabled, KeepNr: 3}); err != nil {
		t.Fatal(err)
	}
	tok := "tok"
	if _, err := db.SetProjectForge(ctx, p.ID, storage.ProjectForgeFields{Type: storage.ForgeForgejo, APIURL: api.URL,
		Repository: "org/demo", Token: &tok}); err != nil {
		t.Fatal(err)
	}
	var wakes atomic.Int32
	prs := pullrequests.New(pullrequests.Config{Wake: func() { wakes.Add(1) }}, db)
	shown := func() string {
		js, _, err := db.ListJobsets(ctx, p.ID, storage.Page{Limit: 50})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, j := range js {
			names = append(names, j.Name+":"+j.State)
		}
		return strings.Join(names, " ")
	}

	answer(200, "["+pull(4, 1, "name taken", false)+","+pull(1, 1, "plain", false)+","+pull(2, 1, "drafted", true)+","+
		pull(3, 9, "from a fork", false)+"]")
	prs.Poll(ctx)
	if got, want := shown(), "main-pr-1:enabled main-pr-4:disabled main:enabled"; got != want || wakes.Load() != 1 {
		t.Fatalf("after the first poll: %q (woken %d times), want %q", got, wakes.Load(), want)
	}
	j, err := db.GetJobsetByName(ctx, p.ID, "main-pr-1")
	if err != nil || j.Branch != "refs/pull/1/head" || j.PullRequest == nil || j.PullRequest.HeadSHA != fmt.Sprintf("%040x", 1) ||
		j.PullRequest.ParentJobsetID != parent.ID || j.PullRequest.Title != "plain" {
		t.Fatalf("main-pr-1: %+v %+v %v", j, j.PullRequest, err)
	}
	prs.Poll(ctx) // nothing new: nothing triggered
	if wakes.Load() != 1 {
		t.Errorf("an unchanged pull request woke the scheduler again")
	}

	// Drafts and forks once allowed.
	if _, err := db.UpdateJobset(ctx, p.ID, parent.ID, storage.JobsetFields{Name: "main", Branch: "main", NixExpression: "release.nix",
		SchedulingShares: 100, State: storage.JobsetEnabled, KeepNr: 3, PullRequests: true, PullRequestDrafts: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.SetProjectForge(ctx, p.ID, storage.ProjectForgeFields{Type: storage.ForgeForgejo, APIURL: api.URL,
		Repository: "org/demo", PullRequestsFromForks: true}); err != nil {
		t.Fatal(err)
	}
	prs.Poll(ctx)
	if got, want := shown(), "main-pr-3:enabled main-pr-2:enabled main-pr-1:enabled main-pr-4:disabled main:enabled"; got != want {
		t.Fatalf("with drafts and forks: %q, want %q", got, want)
	}

	answer(http.StatusBadGateway, `{"message":"upstream down"}`)
	prs.Poll(ctx)
	if got, want := shown(), "main-pr-3:enabled main-pr-2:enabled main-pr-1:enabled main-pr-4:disabled main:enabled"; got != want {
		t.Fatalf("a forge outage changed the jobsets: %q", got)
	}

	answer(200, "["+pull(2, 1, "drafted", true)+"]")
	prs.Poll(ctx)
	if got, want := shown(), "main-pr-2:enabled main-pr-4:disabled main:enabled"; got != want {
		t.Fatalf("after 1 and 3 were closed: %q, want %q", got, want)
	}
	all, _, _ := db.ListAllJobsets(ctx, p.ID, storage.Page{Limit: 50})
	if len(all) != 5 {
		t.Errorf("%d jobsets kept, want 5 (closed ones for history)", len(all))
	}
	if j, _ := db.GetJobsetByName(ctx, p.ID, "main-pr-4"); j.PullRequest != nil || j.Branch != "other" {
		t.Errorf("someone's jobset named like a pull request's changed: %+v", j)
	}
}
