package pullrequests_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

const secret = "a-very-secret-webhook-key"

// releaseNix is the repository's jobset: hello on main, and whatever jobs a pull
// request adds.
func releaseNix(salt string, jobs ...string) string {
	return fmt.Sprintf("let\n  %s\nin {\n  hello = mk \"hello\" { };\n  %s\n}\n", coordtest.MkLet(salt), strings.Join(jobs, "\n  "))
}

// pullRequestRepo is a real repository with a main branch and pull request 1, kept
// as a forge keeps it: under refs/pull/1/head, on no branch of the repository.
type pullRequestRepo struct {
	*coordtest.Repo
	salt, base string
}

func newPullRequestRepo(t *testing.T) *pullRequestRepo {
	salt := coordtest.Salt(t)
	r := &pullRequestRepo{Repo: coordtest.NewRepo(t), salt: salt}
	r.base = r.Commit(map[string]string{"release.nix": releaseNix(salt)})
	return r
}

// push commits release.nix with jobs on top of the pull request (or main, the first
// time), points refs/pull/1/head at it, and goes back to main.
func (r *pullRequestRepo) push(jobs ...string) string {
	r.Git("checkout", "-q", "--detach")
	if head := r.Git("for-each-ref", "--format=%(objectname)", "refs/pull/1/head"); head != "" {
		r.Git("checkout", "-q", "--detach", head)
	}
	sha := r.Commit(map[string]string{"release.nix": releaseNix(r.salt, jobs...)})
	r.Git("update-ref", "refs/pull/1/head", sha)
	r.Git("checkout", "-q", "main")
	return sha
}

// jobsetInfo is a jobset as the API shows it.
type jobsetInfo struct {
	ID          int64  `json:"id"`
	Name        string `json:"name"`
	Branch      string `json:"branch"`
	State       string `json:"state"`
	Hidden      bool   `json:"hidden"`
	PullRequest *struct {
		Number  int64  `json:"number"`
		HeadSHA string `json:"head_sha"`
	} `json:"pull_request"`
}

func jobsets(t *testing.T, c *coordtest.Coordinator, pid int64, all bool) map[string]jobsetInfo {
	t.Helper()
	var l struct{ Items []jobsetInfo }
	if code := c.Do("GET", fmt.Sprintf("/api/v1/projects/%d/jobsets?all=%v", pid, all), "", nil, &l); code != 200 {
		t.Fatalf("list jobsets: %d", code)
	}
	out := map[string]jobsetInfo{}
	for _, j := range l.Items {
		out[j.Name] = j
	}
	return out
}

// waitJobset waits for the named jobset to exist.
func waitJobset(t *testing.T, c *coordtest.Coordinator, pid int64, name string) jobsetInfo {
	t.Helper()
	var j jobsetInfo
	coordtest.Eventually(t, 60*time.Second, "jobset "+name+" exists", func() bool {
		var ok bool
		j, ok = jobsets(t, c, pid, true)[name]
		return ok
	})
	return j
}

// evaluatedAt waits for the jobset's first evaluation newer than after to succeed,
// checks it is of commit, that it has the jobs named, and that job was built; it
// returns the evaluation.
func evaluatedAt(t *testing.T, c *coordtest.Coordinator, jobsetID, after int64, commit, job string, jobs ...string) int64 {
	t.Helper()
	id := coordtest.Evaluated(t, c, jobsetID, after)
	evs := coordtest.Evaluations(t, c, jobsetID)
	if evs[0].ID != id || evs[0].Commit != commit {
		t.Fatalf("evaluation %d is of commit %q, want %s", id, evs[0].Commit, commit)
	}
	builds := coordtest.BuildsOf(t, c, id)
	var got []string
	for name := range builds {
		got = append(got, name)
	}
	slices.Sort(got)
	slices.Sort(jobs)
	if !slices.Equal(got, jobs) {
		t.Fatalf("evaluation %d has jobs %v, want %v", id, got, jobs)
	}
	b := coordtest.WaitBuild(t, c, builds[job].ID, 3*time.Minute, "finished", func(b coordtest.Build) bool { return b.Finished() })
	if b.Status != "succeeded" {
		t.Fatalf("build of %s ended %s", job, b.Status)
	}
	return id
}

func githubPullRequest(action string, number int, state string, head string, merged bool) []byte {
	repo := map[string]any{"id": 186853002, "full_name": "octo/demo", "default_branch": "main"}
	b, _ := json.Marshal(map[string]any{"action": action, "number": number, "repository": repo,
		"pull_request": map[string]any{"number": number, "state": state, "merged": merged, "draft": false, "title": "Add a feature",
			"head": map[string]any{"ref": "feature", "sha": head, "repo": repo},
			"base": map[string]any{"ref": "main", "sha": strings.Repeat("0", 39) + "1", "repo": repo}}})
	return b
}

func postWebhook(t *testing.T, c *coordtest.Coordinator, pid int64, event string, body []byte) map[string]any {
	t.Helper()
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	req, _ := http.NewRequest("POST", fmt.Sprintf("%s/api/v1/webhooks/%d/github", c.URL, pid), bytes.NewReader(body))
	req.Header.Set("X-GitHub-Event", event)
	req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if resp.StatusCode != 200 || json.Unmarshal(raw, &out) != nil {
		t.Fatalf("webhook %s: %d %s", event, resp.StatusCode, raw)
	}
	return out
}

// A pull request's life through GitHub webhooks alone (no forge configured, no
// polling), with real git, PostgreSQL, Nix and an agent: opened, its jobset
// main-pr-1 is made and evaluated at the request's head (its new job built); a
// push to it, a new evaluation at the new head; closed, the jobset is disabled and
// leaves the default list (kept for history).
func TestPullRequests_LifeCycleByWebhooks(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) { cfg.Eval.PullRequestInterval = 0 }})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "worker", Roles: []string{"build", "eval"}})
	repo := newPullRequestRepo(t)
	pid, main := c.Project("demo", repo.Dir, map[string]any{"pull_requests": true})

	head := repo.push(`feature = mk "feature" { };`)
	got := postWebhook(t, c, pid, "pull_request", githubPullRequest("opened", 1, "open", head, false))
	if fmt.Sprint(got["created"]) != "[main-pr-1]" {
		t.Fatalf("opened: %v", got)
	}
	pr := waitJobset(t, c, pid, "main-pr-1")
	if pr.Branch != "refs/pull/1/head" || pr.State != "enabled" || pr.Hidden || pr.PullRequest == nil || pr.PullRequest.HeadSHA != head {
		t.Fatalf("the pull request's jobset: %+v", pr)
	}
	first := evaluatedAt(t, c, pr.ID, 0, head, "feature", "hello", "feature")

	next := repo.push(`feature = mk "feature-again" { };`, `more = mk "more" { };`)
	postWebhook(t, c, pid, "pull_request", githubPullRequest("synchronize", 1, "open", next, false))
	evaluatedAt(t, c, pr.ID, first, next, "more", "hello", "feature", "more")

	postWebhook(t, c, pid, "pull_request", githubPullRequest("closed", 1, "closed", next, true))
	if _, shown := jobsets(t, c, pid, false)["main-pr-1"]; shown {
		t.Error("the closed pull request's jobset is in the default list")
	}
	if j := jobsets(t, c, pid, true)["main-pr-1"]; j.State != "disabled" || !j.Hidden {
		t.Errorf("the closed pull request's jobset: %+v", j)
	}
	if n := len(coordtest.Evaluations(t, c, pr.ID)); n != 2 {
		t.Errorf("%d evaluations of the pull request kept, want 2", n)
	}
	if len(coordtest.Evaluations(t, c, main)) != 0 {
		t.Error("the parent jobset was evaluated: nothing triggered it")
	}
}

// fakeGitHub lists the open pull requests of octo/demo as GitHub's API does, and
// checks each request is the documented one.
type fakeGitHub struct {
	t     *testing.T
	mu    sync.Mutex
	open  map[int]string // number -> head
	calls int
}

func (f *fakeGitHub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The project has a forge, so FC reports commit statuses to it too (their exact
	// requests are the outbox's tests' concern).
	if r.Method == "POST" && strings.HasPrefix(r.URL.Path, "/repos/octo/demo/statuses/") {
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{}`)
		return
	}
	if r.Method != "GET" || r.URL.Path != "/repos/octo/demo/pulls" || r.URL.Query().Get("state") != "open" ||
		r.URL.Query().Get("base") != "main" || r.URL.Query().Get("per_page") != "100" ||
		r.Header.Get("Authorization") != "Bearer gh-token" || r.Header.Get("Accept") != "application/vnd.github+json" {
		f.t.Errorf("unexpected request %s %s %v", r.Method, r.URL, r.Header)
		http.Error(w, `{"message":"Not Found"}`, http.StatusNotFound)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	repo := map[string]any{"id": 1, "full_name": "octo/demo"}
	list := []any{}
	for n, head := range f.open {
		list = append(list, map[string]any{"number": n, "state": "open", "title": "Add a feature", "draft": false,
			"head": map[string]any{"ref": "feature", "sha": head, "repo": repo}, "base": map[string]any{"ref": "main", "repo": repo}})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(list)
}

func (f *fakeGitHub) set(number int, head string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if head == "" {
		delete(f.open, number)
	} else {
		f.open[number] = head
	}
}

// The same life cycle found by polling the forge's API, without any webhook: the
// project's forge (a GitHub API served by the test) lists pull request 1 open, then
// at a new head, then no longer.
func TestPullRequests_LifeCycleByPolling(t *testing.T) {
	t.Parallel()
	gh := &fakeGitHub{t: t, open: map[int]string{}}
	api := httptest.NewServer(gh)
	t.Cleanup(api.Close)
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) { cfg.Eval.PullRequestInterval = 1 }})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "worker", Roles: []string{"build", "eval"}})
	repo := newPullRequestRepo(t)
	pid, _ := c.Project("demo", repo.Dir, map[string]any{"pull_requests": true})
	if code := c.Do("PUT", fmt.Sprintf("/api/v1/projects/%d", pid), c.Admin, map[string]any{"forge": map[string]any{
		"type": "github", "api_url": api.URL, "repository": "octo/demo", "token": "gh-token"}}, nil); code != 200 {
		t.Fatalf("set the forge: %d", code)
	}

	head := repo.push(`feature = mk "feature" { };`)
	gh.set(1, head)
	pr := waitJobset(t, c, pid, "main-pr-1")
	if pr.Branch != "refs/pull/1/head" || pr.PullRequest == nil || pr.PullRequest.HeadSHA != head {
		t.Fatalf("the pull request's jobset: %+v", pr)
	}
	first := evaluatedAt(t, c, pr.ID, 0, head, "feature", "hello", "feature")

	next := repo.push(`more = mk "more" { };`)
	gh.set(1, next)
	evaluatedAt(t, c, pr.ID, first, next, "more", "hello", "more")

	gh.set(1, "")
	coordtest.Eventually(t, 60*time.Second, "the closed pull request's jobset is disabled", func() bool {
		j := jobsets(t, c, pid, true)["main-pr-1"]
		return j.State == "disabled" && j.Hidden
	})
	if _, shown := jobsets(t, c, pid, false)["main-pr-1"]; shown {
		t.Error("the closed pull request's jobset is in the default list")
	}
	if !c.Log.Contains("pull request jobset closed", "no longer open on the forge") {
		t.Error("no log line says why the jobset was closed")
	}
}
