package evalqueue_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
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

func sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

func post(t *testing.T, url string, headers map[string]string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestWebhooks_VerifiedPushTriggersAndNothingElseDoes(t *testing.T) {
	c := coordtest.Start(t, coordtest.Options{})
	repo := newRepo(t)
	repo.commit(map[string]string{"release.nix": "{ }"})
	pid, js := setup(t, c, repo, nil)
	const secret = "a-very-secret-webhook-key"
	push := func(branch string) []byte {
		return []byte(fmt.Sprintf(`{"ref":"refs/heads/%s","repository":{"default_branch":"main"},"after":"abc"}`, branch))
	}
	gh := c.URL + fmt.Sprintf("/api/v1/webhooks/%d/github", pid)
	gt := c.URL + fmt.Sprintf("/api/v1/webhooks/%d/gitea", pid)

	cases := []struct {
		name     string
		url      string
		headers  map[string]string
		body     []byte
		status   int
		triggers bool
	}{
		{"github bad signature", gh, map[string]string{"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + sign("wrong-secret-xxxxxxx", push("main"))}, push("main"), 401, false},
		{"github no signature", gh, map[string]string{"X-GitHub-Event": "push"}, push("main"), 401, false},
		{"github signature of another body", gh, map[string]string{"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + sign(secret, push("dev"))}, push("main"), 401, false},
		{"github ping", gh, map[string]string{"X-GitHub-Event": "ping", "X-Hub-Signature-256": "sha256=" + sign(secret, []byte(`{"zen":"x"}`))}, []byte(`{"zen":"x"}`), 200, false},
		{"github push to another branch", gh, map[string]string{"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + sign(secret, push("dev"))}, push("dev"), 200, false},
		{"gitea bad signature", gt, map[string]string{"X-Gitea-Event": "push", "X-Gitea-Signature": sign("wrong-secret-xxxxxxx", push("main"))}, push("main"), 401, false},
		{"github valid push", gh, map[string]string{"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + sign(secret, push("main"))}, push("main"), 200, true},
		{"gitea valid push", gt, map[string]string{"X-Gitea-Event": "push", "X-Gitea-Signature": sign(secret, push("main"))}, push("main"), 200, true},
		{"forgejo valid push", gt, map[string]string{"X-Forgejo-Event": "push", "X-Forgejo-Signature": sign(secret, push("main"))}, push("main"), 200, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.DB.Pool().Exec(context.Background(), `DELETE FROM evaluations; UPDATE jobsets SET trigger_requested_at = NULL`); err != nil {
				t.Fatal(err)
			}
			status, body := post(t, tc.url, tc.headers, tc.body)
			if status != tc.status {
				t.Fatalf("status %d, want %d: %s", status, tc.status, body)
			}
			if tc.triggers {
				checked(t, c, js)
				if n := len(evaluations(t, c, js)); n != 1 {
					t.Fatalf("a valid push made %d evaluations, want 1 (%s)", n, body)
				}
				return
			}
			var pending bool
			_ = c.DB.Pool().QueryRow(context.Background(), `SELECT trigger_requested_at IS NOT NULL FROM jobsets WHERE id = $1`, js).Scan(&pending)
			if pending || len(evaluations(t, c, js)) != 0 {
				t.Fatalf("%s triggered an evaluation", tc.name)
			}
		})
	}
	// The secret is write-only.
	resp, err := http.Get(c.URL + fmt.Sprintf("/api/v1/projects/%d", pid))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(b), secret) || !strings.Contains(string(b), `"webhook_secret_set":true`) {
		t.Errorf("project GET: %s", b)
	}
}

// A forge's webhook URL may name the project by id or by name, as every other project
// URL does (the name form answered 404); either way only a correctly signed push
// triggers, and an unknown project is 404.
func TestWebhooks_ProjectByIDOrName(t *testing.T) {
	c := coordtest.Start(t, coordtest.Options{})
	repo := newRepo(t)
	repo.commit(map[string]string{"release.nix": "{ }"})
	pid, js := setup(t, c, repo, nil)
	const secret = "a-very-secret-webhook-key"
	body := []byte(`{"ref":"refs/heads/main","repository":{"default_branch":"main"},"after":"abc"}`)
	forges := map[string]func(key string) map[string]string{
		"github": func(key string) map[string]string {
			return map[string]string{"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + sign(key, body)}
		},
		"gitea": func(key string) map[string]string {
			return map[string]string{"X-Gitea-Event": "push", "X-Gitea-Signature": sign(key, body)}
		},
	}
	for _, ref := range []string{fmt.Sprint(pid), "demo"} {
		for forge, headers := range forges {
			t.Run(ref+"/"+forge, func(t *testing.T) {
				if _, err := c.DB.Pool().Exec(context.Background(), `DELETE FROM evaluations; UPDATE jobsets SET trigger_requested_at = NULL`); err != nil {
					t.Fatal(err)
				}
				url := fmt.Sprintf("%s/api/v1/webhooks/%s/%s", c.URL, ref, forge)
				if status, got := post(t, url, headers("wrong-secret-xxxxxxx"), body); status != http.StatusUnauthorized {
					t.Fatalf("bad signature: status %d, want 401: %s", status, got)
				}
				status, got := post(t, url, headers(secret), body)
				if status != http.StatusOK || !strings.Contains(got, `"triggered":[`+fmt.Sprint(js)+`]`) {
					t.Fatalf("signed push: status %d, want 200 triggering jobset %d: %s", status, js, got)
				}
				checked(t, c, js)
				if n := len(evaluations(t, c, js)); n != 1 {
					t.Fatalf("a signed push made %d evaluations, want 1", n)
				}
			})
		}
	}
	for _, ref := range []string{"nosuchproject", "999999"} {
		url := fmt.Sprintf("%s/api/v1/webhooks/%s/github", c.URL, ref)
		if status, got := post(t, url, forges["github"](secret), body); status != http.StatusNotFound || !strings.Contains(got, `"error"`) {
			t.Errorf("webhook for project %q: status %d, want 404 with a JSON error: %s", ref, status, got)
		}
	}
}

// Found by FuzzPushPayload: a signed push that deleted the default branch, or named
// the empty branch ("refs/heads/"), triggered the jobsets following the default
// branch, and a branch name with a NUL byte was a 500 (PostgreSQL refuses the byte),
// which forges retry. Only a push of commits to a branch git accepts triggers.
func TestWebhooks_DeletionsAndRefsGitRefusesTriggerNothing(t *testing.T) {
	c := coordtest.Start(t, coordtest.Options{})
	repo := newRepo(t)
	repo.commit(map[string]string{"release.nix": "{ }"})
	pid, js := setup(t, c, repo, map[string]any{"branch": ""}) // follows the default branch
	const secret = "a-very-secret-webhook-key"
	gh := c.URL + fmt.Sprintf("/api/v1/webhooks/%d/github", pid)
	gt := c.URL + fmt.Sprintf("/api/v1/webhooks/%d/gitea", pid)
	zeros := strings.Repeat("0", 40)
	cases := []struct {
		name, url, body string
		triggers        bool
	}{
		{"github deletes main", gh, `{"ref":"refs/heads/main","before":"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c","after":"` + zeros + `","deleted":true,"repository":{"default_branch":"main"}}`, false},
		{"gitea deletes main", gt, `{"ref":"refs/heads/main","before":"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c","after":"` + zeros + `","repository":{"default_branch":"main"}}`, false},
		{"empty branch", gh, `{"ref":"refs/heads/","after":"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c","repository":{"default_branch":""}}`, false},
		{"NUL in the branch", gh, `{"ref":"refs/heads/ma\u0000in","after":"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c","repository":{"default_branch":"ma\u0000in"}}`, false},
		{"double dot", gt, `{"ref":"refs/heads/main..x","after":"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c","repository":{"default_branch":"main..x"}}`, false},
		{"push to main", gh, `{"ref":"refs/heads/main","before":"6113728f27ae82c7b1a177c8d03f9e96e0adf246","after":"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c","deleted":false,"repository":{"default_branch":"main"}}`, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.DB.Pool().Exec(context.Background(), `DELETE FROM evaluations; UPDATE jobsets SET trigger_requested_at = NULL`); err != nil {
				t.Fatal(err)
			}
			headers := map[string]string{"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + sign(secret, []byte(tc.body))}
			if tc.url == gt {
				headers = map[string]string{"X-Gitea-Event": "push", "X-Gitea-Signature": sign(secret, []byte(tc.body))}
			}
			status, body := post(t, tc.url, headers, []byte(tc.body))
			if status != 200 {
				t.Fatalf("status %d, want 200: %s", status, body)
			}
			if tc.triggers {
				checked(t, c, js)
				if n := len(evaluations(t, c, js)); n != 1 {
					t.Fatalf("a push to the default branch made %d evaluations, want 1 (%s)", n, body)
				}
				return
			}
			var pending bool
			_ = c.DB.Pool().QueryRow(context.Background(), `SELECT trigger_requested_at IS NOT NULL FROM jobsets WHERE id = $1`, js).Scan(&pending)
			if pending || len(evaluations(t, c, js)) != 0 || !strings.Contains(body, `"triggered":[]`) {
				t.Fatalf("%s triggered an evaluation: %s", tc.name, body)
			}
		})
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
