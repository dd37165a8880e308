package evalqueue_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

// gitRepo is a real repository in a temp dir.
type gitRepo struct {
	t   *testing.T
	dir string
}

func newRepo(t *testing.T) *gitRepo {
	t.Helper()
	r := &gitRepo{t: t, dir: t.TempDir()}
	r.git("init", "-q", "-b", "main")
	return r
}

func (r *gitRepo) git(args ...string) string {
	r.t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "user.name=FC Test", "-c", "user.email=test@example.org"}, args...)...)
	cmd.Dir = r.dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// commit writes files and commits them, returning the commit id.
func (r *gitRepo) commit(files map[string]string) string {
	r.t.Helper()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(r.dir, name), []byte(body), 0o644); err != nil {
			r.t.Fatal(err)
		}
	}
	r.git("add", "-A")
	r.git("commit", "-q", "-m", "change")
	return r.git("rev-parse", "HEAD")
}

type evaluation struct {
	ID      int64  `json:"id"`
	Status  string `json:"status"`
	Commit  string `json:"commit"`
	Forced  bool   `json:"forced"`
	Trigger string `json:"trigger"`
}

func evaluations(t *testing.T, c *coordtest.Coordinator, jobsetID int64) []evaluation {
	t.Helper()
	var l struct{ Items []evaluation }
	if code := c.Do("GET", fmt.Sprintf("/api/v1/evaluations?jobset_id=%d", jobsetID), "", nil, &l); code != 200 {
		t.Fatalf("list evaluations: %d", code)
	}
	return l.Items
}

// setup makes a project on repo with one legacy jobset and returns their ids.
func setup(t *testing.T, c *coordtest.Coordinator, repo *gitRepo, jobset map[string]any) (int64, int64) {
	t.Helper()
	var p struct{ ID int64 }
	if code := c.Do("POST", "/api/v1/projects", c.Admin, map[string]any{"name": "demo", "repository_url": repo.dir,
		"webhook_secret": "a-very-secret-webhook-key"}, &p); code != 201 {
		t.Fatalf("create project: %d", code)
	}
	body := map[string]any{"name": "main", "branch": "main", "flake_mode": false, "nix_expression": "release.nix", "check_interval": 0}
	for k, v := range jobset {
		body[k] = v
	}
	var j struct{ ID int64 }
	if code := c.Do("POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", p.ID), c.Admin, body, &j); code != 201 {
		t.Fatalf("create jobset: %d", code)
	}
	return p.ID, j.ID
}

func trigger(t *testing.T, c *coordtest.Coordinator, jobsetID int64, force bool) {
	t.Helper()
	if code := c.Do("POST", "/api/v1/evaluations/trigger", c.Admin, map[string]any{"jobset_id": jobsetID, "force": force}, nil); code != 202 {
		t.Fatalf("trigger: %d", code)
	}
}

// checked waits until the scheduler has dealt with the jobset's pending trigger.
func checked(t *testing.T, c *coordtest.Coordinator, jobsetID int64) {
	t.Helper()
	coordtest.Eventually(t, 30*time.Second, "the scheduler handles the trigger", func() bool {
		var pending bool
		if err := c.DB.Pool().QueryRow(context.Background(), `SELECT trigger_requested_at IS NOT NULL FROM jobsets WHERE id = $1`, jobsetID).Scan(&pending); err != nil {
			t.Fatal(err)
		}
		return !pending
	})
}

func TestScheduling_NewCommitEvaluatesSameCommitOnlyWhenForced(t *testing.T) {
	c := coordtest.Start(t, coordtest.Options{})
	repo := newRepo(t)
	first := repo.commit(map[string]string{"release.nix": "{ }"})
	_, js := setup(t, c, repo, nil)

	trigger(t, c, js, false)
	checked(t, c, js)
	evs := evaluations(t, c, js)
	if len(evs) != 1 || evs[0].Commit != first || evs[0].Status != "queued" {
		t.Fatalf("after the first trigger: %+v", evs)
	}
	// Nothing evaluates it here (no agent), so finish it by hand to let the next one in.
	if _, err := c.DB.Pool().Exec(context.Background(), `UPDATE evaluations SET status = 'succeeded'`); err != nil {
		t.Fatal(err)
	}
	trigger(t, c, js, false)
	checked(t, c, js)
	if evs := evaluations(t, c, js); len(evs) != 1 {
		t.Fatalf("same commit, not forced: %d evaluations, want still 1", len(evs))
	}
	trigger(t, c, js, true)
	checked(t, c, js)
	evs = evaluations(t, c, js)
	if len(evs) != 2 || !evs[0].Forced || evs[0].Commit != first {
		t.Fatalf("forced: %+v", evs)
	}
	if _, err := c.DB.Pool().Exec(context.Background(), `UPDATE evaluations SET status = 'succeeded'`); err != nil {
		t.Fatal(err)
	}
	second := repo.commit(map[string]string{"release.nix": "{ x = 1; }"})
	trigger(t, c, js, false)
	checked(t, c, js)
	evs = evaluations(t, c, js)
	if len(evs) != 3 || evs[0].Commit != second {
		t.Fatalf("new commit: %+v", evs)
	}
}

func TestOneShot_DisablesItselfAfterOneEvaluation(t *testing.T) {
	c := coordtest.Start(t, coordtest.Options{})
	repo := newRepo(t)
	repo.commit(map[string]string{"release.nix": "{ }"})
	pid, js := setup(t, c, repo, map[string]any{"state": "one_shot"})
	trigger(t, c, js, false)
	checked(t, c, js)
	var got struct{ State string }
	c.Do("GET", fmt.Sprintf("/api/v1/projects/%d/jobsets/%d", pid, js), "", nil, &got)
	if got.State != "disabled" || len(evaluations(t, c, js)) != 1 {
		t.Fatalf("one_shot jobset after its evaluation: state %q, %d evaluations", got.State, len(evaluations(t, c, js)))
	}
}

func TestPolling_CheckIntervalEvaluatesWithoutTrigger(t *testing.T) {
	c := coordtest.Start(t, coordtest.Options{})
	repo := newRepo(t)
	head := repo.commit(map[string]string{"release.nix": "{ }"})
	_, js := setup(t, c, repo, map[string]any{"check_interval": 1})
	c.Evals.Wake()
	coordtest.Eventually(t, 30*time.Second, "a polled evaluation", func() bool {
		evs := evaluations(t, c, js)
		return len(evs) == 1 && evs[0].Commit == head && evs[0].Trigger == "poll"
	})
}

func TestScheduling_UnreachableRepositoryIsRecordedOnTheJobset(t *testing.T) {
	c := coordtest.Start(t, coordtest.Options{})
	repo := newRepo(t)
	repo.commit(map[string]string{"release.nix": "{ }"})
	pid, js := setup(t, c, repo, nil)
	if code := c.Do("PUT", fmt.Sprintf("/api/v1/projects/%d", pid), c.Admin, map[string]any{"repository_url": "/nonexistent/repo"}, nil); code != 200 {
		t.Fatal(code)
	}
	trigger(t, c, js, false)
	checked(t, c, js)
	var got struct {
		LastCheckError string `json:"last_check_error"`
	}
	c.Do("GET", fmt.Sprintf("/api/v1/projects/%d/jobsets/%d", pid, js), "", nil, &got)
	if !strings.Contains(got.LastCheckError, "/nonexistent/repo") || len(evaluations(t, c, js)) != 0 {
		t.Fatalf("last_check_error %q", got.LastCheckError)
	}
}

func TestFetchCredentials_WriteOnlyAndGivenToTheEvaluation(t *testing.T) {
	c := coordtest.Start(t, coordtest.Options{})
	repo := newRepo(t)
	repo.commit(map[string]string{"release.nix": "{ }"})
	pid, js := setup(t, c, repo, nil)
	const token = "ghp_supersecrettoken1234567890"
	if code := c.Do("PUT", fmt.Sprintf("/api/v1/projects/%d", pid), c.Admin,
		map[string]any{"fetch_credentials": map[string]string{"https_token": token}}, nil); code != 200 {
		t.Fatalf("set credentials: %d", code)
	}
	if code := c.Do("PUT", fmt.Sprintf("/api/v1/projects/%d", pid), c.Admin,
		map[string]any{"fetch_credentials": map[string]string{"ssh_key": "not a key"}}, nil); code != 422 {
		t.Errorf("a malformed ssh key: %d, want 422", code)
	}
	for _, path := range []string{fmt.Sprintf("/api/v1/projects/%d", pid), "/api/v1/projects", fmt.Sprintf("/api/v1/projects/%d/jobsets", pid)} {
		resp, err := http.Get(c.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(b), token) {
			t.Errorf("GET %s returned the token", path)
		}
	}
	var p struct {
		Set bool `json:"fetch_credentials_set"`
	}
	c.Do("GET", fmt.Sprintf("/api/v1/projects/%d", pid), "", nil, &p)
	if !p.Set {
		t.Error("fetch_credentials_set is false")
	}
	trigger(t, c, js, false)
	checked(t, c, js)
	evs := evaluations(t, c, js)
	if len(evs) != 1 {
		t.Fatalf("evaluations: %+v", evs)
	}
	task, err := c.DB.EvalTaskOf(context.Background(), evs[0].ID)
	if err != nil || task.Credentials.HTTPSToken != token {
		t.Fatalf("the evaluation's task lacks the credentials: %+v %v", task.Credentials, err)
	}
	// {} clears them.
	if code := c.Do("PUT", fmt.Sprintf("/api/v1/projects/%d", pid), c.Admin, map[string]any{"fetch_credentials": map[string]string{}}, &p); code != 200 || p.Set {
		t.Errorf("clearing credentials: %d, set %v", code, p.Set)
	}
}
