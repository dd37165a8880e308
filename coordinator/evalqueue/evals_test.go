package evalqueue_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

func TestScheduling_NewCommitEvaluatesSameCommitOnlyWhenForced(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	first := repo.Commit(map[string]string{"release.nix": "{ }"})
	_, js := c.Project("demo", repo.Dir, nil)

	c.Trigger(js, false)
	coordtest.Checked(t, c, js)
	evs := coordtest.Evaluations(t, c, js)
	if len(evs) != 1 || evs[0].Commit != first || evs[0].Status != "queued" {
		t.Fatalf("after the first trigger: %+v", evs)
	}
	// Nothing evaluates it here (no agent), so finish it by hand to let the next one in.
	if _, err := c.DB.Pool().Exec(context.Background(), `UPDATE evaluations SET status = 'succeeded'`); err != nil {
		t.Fatal(err)
	}
	c.Trigger(js, false)
	coordtest.Checked(t, c, js)
	if evs := coordtest.Evaluations(t, c, js); len(evs) != 1 {
		t.Fatalf("same commit, not forced: %d evaluations, want still 1", len(evs))
	}
	c.Trigger(js, true)
	coordtest.Checked(t, c, js)
	evs = coordtest.Evaluations(t, c, js)
	if len(evs) != 2 || !evs[0].Forced || evs[0].Commit != first {
		t.Fatalf("forced: %+v", evs)
	}
	if _, err := c.DB.Pool().Exec(context.Background(), `UPDATE evaluations SET status = 'succeeded'`); err != nil {
		t.Fatal(err)
	}
	second := repo.Commit(map[string]string{"release.nix": "{ x = 1; }"})
	c.Trigger(js, false)
	coordtest.Checked(t, c, js)
	evs = coordtest.Evaluations(t, c, js)
	if len(evs) != 3 || evs[0].Commit != second {
		t.Fatalf("new commit: %+v", evs)
	}
}

func TestOneShot_DisablesItselfAfterOneEvaluation(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": "{ }"})
	pid, js := c.Project("demo", repo.Dir, map[string]any{"state": "one_shot"})
	c.Trigger(js, false)
	coordtest.Checked(t, c, js)
	var got struct{ State string }
	c.Do("GET", fmt.Sprintf("/api/v1/projects/%d/jobsets/%d", pid, js), "", nil, &got)
	if got.State != "disabled" || len(coordtest.Evaluations(t, c, js)) != 1 {
		t.Fatalf("one_shot jobset after its evaluation: state %q, %d evaluations", got.State, len(coordtest.Evaluations(t, c, js)))
	}
}

func TestPolling_CheckIntervalEvaluatesWithoutTrigger(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	head := repo.Commit(map[string]string{"release.nix": "{ }"})
	_, js := c.Project("demo", repo.Dir, map[string]any{"check_interval": 1})
	c.Evals.Wake()
	coordtest.Eventually(t, 30*time.Second, "a polled evaluation", func() bool {
		evs := coordtest.Evaluations(t, c, js)
		return len(evs) == 1 && evs[0].Commit == head && evs[0].Trigger == "poll"
	})
}

func TestScheduling_UnreachableRepositoryIsRecordedOnTheJobset(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": "{ }"})
	pid, js := c.Project("demo", repo.Dir, nil)
	if code := c.Do("PUT", fmt.Sprintf("/api/v1/projects/%d", pid), c.Admin, map[string]any{"repository_url": "/nonexistent/repo"}, nil); code != 200 {
		t.Fatal(code)
	}
	c.Trigger(js, false)
	coordtest.Checked(t, c, js)
	var got struct {
		LastCheckError string `json:"last_check_error"`
	}
	c.Do("GET", fmt.Sprintf("/api/v1/projects/%d/jobsets/%d", pid, js), "", nil, &got)
	if !strings.Contains(got.LastCheckError, "/nonexistent/repo") || len(coordtest.Evaluations(t, c, js)) != 0 {
		t.Fatalf("last_check_error %q", got.LastCheckError)
	}
}

func TestFetchCredentials_WriteOnlyAndGivenToTheEvaluation(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": "{ }"})
	pid, js := c.Project("demo", repo.Dir, nil)
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
	c.Trigger(js, false)
	coordtest.Checked(t, c, js)
	evs := coordtest.Evaluations(t, c, js)
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
