package evalapi_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

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
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": "{ }"})
	pid, js := c.Project("demo", repo.Dir, nil)
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
				coordtest.Checked(t, c, js)
				if n := len(coordtest.Evaluations(t, c, js)); n != 1 {
					t.Fatalf("a valid push made %d evaluations, want 1 (%s)", n, body)
				}
				return
			}
			var pending bool
			_ = c.DB.Pool().QueryRow(context.Background(), `SELECT trigger_requested_at IS NOT NULL FROM jobsets WHERE id = $1`, js).Scan(&pending)
			if pending || len(coordtest.Evaluations(t, c, js)) != 0 {
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
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": "{ }"})
	pid, js := c.Project("demo", repo.Dir, nil)
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
				coordtest.Checked(t, c, js)
				if n := len(coordtest.Evaluations(t, c, js)); n != 1 {
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
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": "{ }"})
	pid, js := c.Project("demo", repo.Dir, map[string]any{"branch": ""}) // follows the default branch
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
				coordtest.Checked(t, c, js)
				if n := len(coordtest.Evaluations(t, c, js)); n != 1 {
					t.Fatalf("a push to the default branch made %d evaluations, want 1 (%s)", n, body)
				}
				return
			}
			var pending bool
			_ = c.DB.Pool().QueryRow(context.Background(), `SELECT trigger_requested_at IS NOT NULL FROM jobsets WHERE id = $1`, js).Scan(&pending)
			if pending || len(coordtest.Evaluations(t, c, js)) != 0 || !strings.Contains(body, `"triggered":[]`) {
				t.Fatalf("%s triggered an evaluation: %s", tc.name, body)
			}
		})
	}
}
