package evalapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fc-ci/fc/coordinator/coordtest"
)

const webhookSecret = "a-very-secret-webhook-key"

// Heads of the pull requests in the recorded payloads (testdata/webhooks).
const (
	openedHead = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
	pushedHead = "34c5c7793cb3b279e22454cb6750c80560547b3a"
)

// forgeKind is one webhook route and how its forge signs and names events.
type forgeKind struct {
	route   string
	file    string // testdata/webhooks/<file>-<event>.json
	headers func(event, secret string, body []byte) map[string]string
	pull    string            // the pull request event's name
	actions map[string]string // step -> the payload's action in the file name
	ref     string            // the pull request's head ref, %d its number
	ignored string            // an event the forge has that FC ignores
}

var forgeKinds = []forgeKind{
	{route: "github", file: "github", pull: "pull_request", ref: "refs/pull/%d/head", ignored: "issues",
		headers: func(event, secret string, body []byte) map[string]string {
			return map[string]string{"X-GitHub-Event": event, "X-Hub-Signature-256": "sha256=" + sign(secret, body), "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958"}
		},
		actions: map[string]string{"open": "opened", "noise": "labeled", "push": "synchronize", "close": "closed", "reopen": "reopened"}},
	{route: "gitea", file: "gitea", pull: "pull_request", ref: "refs/pull/%d/head", ignored: "issues",
		headers: func(event, secret string, body []byte) map[string]string {
			return map[string]string{"X-Gitea-Event": event, "X-Gitea-Event-Type": event, "X-Gitea-Signature": sign(secret, body), "X-GitHub-Event": event}
		},
		actions: map[string]string{"open": "opened", "noise": "label_updated", "push": "synchronized", "close": "closed", "reopen": "reopened"}},
	{route: "forgejo", file: "forgejo", pull: "pull_request", ref: "refs/pull/%d/head", ignored: "release",
		headers: func(event, secret string, body []byte) map[string]string {
			return map[string]string{"X-Forgejo-Event": event, "X-Forgejo-Signature": sign(secret, body), "X-Gitea-Event": event, "X-Gitea-Signature": sign(secret, body)}
		},
		actions: map[string]string{"open": "opened", "noise": "label_updated", "push": "synchronized", "close": "closed", "reopen": "reopened"}},
	{route: "gitlab", file: "gitlab", pull: "Merge Request Hook", ref: "refs/merge-requests/%d/head", ignored: "Issue Hook",
		headers: func(event, secret string, _ []byte) map[string]string {
			return map[string]string{"X-Gitlab-Event": event, "X-Gitlab-Token": secret, "X-Gitlab-Instance": "https://gitlab.example.com"}
		},
		actions: map[string]string{"open": "open", "noise": "approved", "push": "update", "close": "merge", "reopen": "reopen"}},
}

func payload(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "webhooks", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// pullAnswer is a pull request webhook's answer.
type pullAnswer struct {
	Triggered []int64  `json:"triggered"`
	Created   []string `json:"created"`
	Closed    []string `json:"closed"`
	Skipped   []string `json:"skipped"`
	Ignored   string   `json:"ignored"`
	Error     string   `json:"error"`
}

type prJobset struct {
	id                int64
	branch, state     string
	hidden            bool
	head, number      string
	parent, triggered bool
}

func jobsetNamed(t *testing.T, c *coordtest.Coordinator, pid int64, name string) (prJobset, bool) {
	t.Helper()
	var j prJobset
	err := c.DB.Pool().QueryRow(context.Background(), `SELECT id, branch, state, hidden, pr_head_sha, coalesce(pr_number::text, ''),
		parent_jobset_id IS NOT NULL, trigger_requested_at IS NOT NULL OR EXISTS (SELECT 1 FROM evaluations e WHERE e.jobset_id = jobsets.id)
		FROM jobsets WHERE project_id = $1 AND name = $2`, pid, name).
		Scan(&j.id, &j.branch, &j.state, &j.hidden, &j.head, &j.number, &j.parent, &j.triggered)
	if err != nil {
		return prJobset{}, false
	}
	return j, true
}

// Every forge's pull request webhooks, from recorded payloads, through a pull
// request's life: opened (its jobset made at the head, evaluation requested), an
// action that changes nothing (ignored, saying so), a push (the new head), a draft
// and a fork (skipped, saying why; a fork taken once the project allows it), closed
// or merged (disabled and hidden), reopened (enabled again). Each recorded payload
// with a wrong signature or token is 401 and changes nothing.
func TestWebhooks_PullRequestsOfEveryForge(t *testing.T) {
	t.Parallel()
	for _, k := range forgeKinds {
		t.Run(k.route, func(t *testing.T) {
			t.Parallel()
			c := coordtest.Start(t, coordtest.Options{})
			repo := coordtest.NewRepo(t)
			repo.Commit(map[string]string{"release.nix": "{ }"})
			pid, parent := c.Project("demo", repo.Dir, map[string]any{"pull_requests": true})
			url := fmt.Sprintf("%s/api/v1/webhooks/demo/%s", c.URL, k.route)
			send := func(file string) (int, pullAnswer) {
				t.Helper()
				body := payload(t, k.file+"-"+file)
				status, got := post(t, url, k.headers(k.pull, webhookSecret, body), body)
				var a pullAnswer
				if err := json.Unmarshal([]byte(got), &a); err != nil {
					t.Fatalf("%s: answer %q: %v", file, got, err)
				}
				return status, a
			}
			name := "main-pr-7"

			// Wrong secrets first: nothing may change.
			for _, step := range []string{"open", "push", "close"} {
				body := payload(t, k.file+"-"+k.pull2file(step))
				if status, got := post(t, url, k.headers(k.pull, "wrong-secret-xxxxxxx", body), body); status != 401 {
					t.Errorf("%s with a wrong secret: %d %s", step, status, got)
				}
			}
			if _, ok := jobsetNamed(t, c, pid, name); ok {
				t.Fatal("a request with a wrong secret made a jobset")
			}

			status, a := send(k.pull2file("open"))
			j, ok := jobsetNamed(t, c, pid, name)
			if status != 200 || !slices.Equal(a.Created, []string{name}) || !ok || !slices.Equal(a.Triggered, []int64{j.id}) {
				t.Fatalf("opened: %d %+v, jobset %+v", status, a, j)
			}
			if j.branch != fmt.Sprintf(k.ref, 7) || j.head != openedHead || j.state != "enabled" || j.hidden || j.number != "7" || !j.parent || !j.triggered {
				t.Fatalf("the pull request's jobset: %+v", j)
			}

			status, a = send(k.pull2file("noise"))
			if status != 200 || a.Ignored == "" || len(a.Triggered) != 0 {
				t.Errorf("%s: %d %+v, want 200 ignored", k.actions["noise"], status, a)
			}

			status, a = send(k.pull2file("push"))
			if j, _ = jobsetNamed(t, c, pid, name); status != 200 || !slices.Equal(a.Triggered, []int64{j.id}) || j.head != pushedHead || len(a.Created) != 0 {
				t.Errorf("pushed: %d %+v, jobset %+v", status, a, j)
			}

			draft := "pull_request-draft"
			if k.route == "gitlab" {
				draft = "merge_request-draft"
			}
			status, a = send(draft)
			if _, ok := jobsetNamed(t, c, pid, "main-pr-8"); status != 200 || ok || len(a.Skipped) != 1 || !strings.Contains(a.Skipped[0], "draft") {
				t.Errorf("draft: %d %+v (made a jobset: %v)", status, a, ok)
			}

			fork := "pull_request-fork"
			if k.route == "gitlab" {
				fork = "merge_request-fork"
			}
			status, a = send(fork)
			if _, ok := jobsetNamed(t, c, pid, "main-pr-9"); status != 200 || ok || len(a.Skipped) != 1 || !strings.Contains(a.Skipped[0], "fork") {
				t.Errorf("fork: %d %+v (made a jobset: %v)", status, a, ok)
			}
			forgeSettings := map[string]any{"type": k.route, "repository": "mike/diaspora", "pull_requests_from_forks": true}
			if k.route == "gitea" || k.route == "forgejo" {
				forgeSettings["api_url"] = "https://gitea.example.org"
			}
			if code := c.Do("PUT", fmt.Sprintf("/api/v1/projects/%d", pid), c.Admin, map[string]any{"forge": forgeSettings}, nil); code != 200 {
				t.Fatalf("set the forge: %d", code)
			}
			if status, a = send(fork); !slices.Equal(a.Created, []string{"main-pr-9"}) {
				t.Errorf("fork, once allowed: %d %+v", status, a)
			}

			status, a = send(k.pull2file("close"))
			if j, _ = jobsetNamed(t, c, pid, name); status != 200 || !slices.Equal(a.Closed, []string{name}) || j.state != "disabled" || !j.hidden {
				t.Errorf("closed: %d %+v, jobset %+v", status, a, j)
			}
			var listed struct{ Items []struct{ Name string } }
			c.Do("GET", fmt.Sprintf("/api/v1/projects/%d/jobsets", pid), "", nil, &listed)
			for _, it := range listed.Items {
				if it.Name == name {
					t.Errorf("the closed pull request's jobset is in the default list")
				}
			}

			status, a = send(k.pull2file("reopen"))
			if j, _ = jobsetNamed(t, c, pid, name); status != 200 || !slices.Equal(a.Triggered, []int64{j.id}) || j.state != "enabled" || j.hidden {
				t.Errorf("reopened: %d %+v, jobset %+v", status, a, j)
			}
			if pj, _ := jobsetNamed(t, c, pid, "main"); pj.id != parent || pj.parent {
				t.Errorf("the parent jobset changed: %+v", pj)
			}
		})
	}
}

// pull2file is the recorded payload of a step of the life cycle.
func (k forgeKind) pull2file(step string) string {
	if k.route == "gitlab" {
		return "merge_request-" + k.actions[step]
	}
	return "pull_request-" + k.actions[step]
}

// A request FC cannot recognise is a 400 that says what is missing or wrong, never a
// silent 200; an event the forge has but FC does not act on is a 200 that says it
// was ignored.
func TestWebhooks_UnrecognisedRequestsAre400(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": "{ }"})
	pid, js := c.Project("demo", repo.Dir, map[string]any{"pull_requests": true})
	for _, k := range forgeKinds {
		url := fmt.Sprintf("%s/api/v1/webhooks/%d/%s", c.URL, pid, k.route)
		pr := payload(t, k.file+"-"+k.pull2file("open"))
		push := payload(t, map[string]string{"github": "github-push", "gitea": "gitea-push", "forgejo": "forgejo-push", "gitlab": "gitlab-push"}[k.route])
		pushEvent := map[bool]string{true: "Push Hook", false: "push"}[k.route == "gitlab"]
		noEvent := k.headers("", webhookSecret, pr)
		for h, v := range noEvent {
			if v == "" {
				delete(noEvent, h)
			}
		}
		cases := []struct {
			name    string
			headers map[string]string
			body    []byte
			status  int
			says    string
		}{
			{"no event header", noEvent, pr, 400, "missing event header"},
			{"unknown event", k.headers("no_such_event", webhookSecret, pr), pr, 400, "unknown " + k.route + " event"},
			{"a push claiming to be a pull request", k.headers(k.pull, webhookSecret, push), push, 400, "is not a " + k.pull + " event"},
			{"a pull request claiming to be a push", k.headers(pushEvent, webhookSecret, pr), pr, 400, "is not a " + pushEvent + " event"},
			{"not JSON", k.headers(k.pull, webhookSecret, []byte("payload=%7B%7D")), []byte("payload=%7B%7D"), 400, "not a JSON object"},
			{"an event FC ignores", k.headers(k.ignored, webhookSecret, pr), pr, 200, `"ignored":"event`},
		}
		if k.route == "github" {
			ping := payload(t, "github-ping")
			cases = append(cases, struct {
				name    string
				headers map[string]string
				body    []byte
				status  int
				says    string
			}{"ping", k.headers("ping", webhookSecret, ping), ping, 200, `"ignored"`})
		}
		if k.route == "gitlab" {
			tag := payload(t, "gitlab-tag_push")
			cases = append(cases, struct {
				name    string
				headers map[string]string
				body    []byte
				status  int
				says    string
			}{"a tag push", k.headers("Tag Push Hook", webhookSecret, tag), tag, 200, `"ignored"`},
				struct {
					name    string
					headers map[string]string
					body    []byte
					status  int
					says    string
				}{"no token", map[string]string{"X-Gitlab-Event": "Push Hook"}, push, 401, "X-Gitlab-Token"})
		}
		for _, tc := range cases {
			t.Run(k.route+"/"+tc.name, func(t *testing.T) {
				status, got := post(t, url, tc.headers, tc.body)
				if status != tc.status || !strings.Contains(got, tc.says) {
					t.Fatalf("status %d %s, want %d saying %q", status, got, tc.status, tc.says)
				}
				if status == 200 && !strings.Contains(got, `"triggered":[]`) {
					t.Errorf("an ignored event's answer: %s", got)
				}
			})
		}
	}
	var n int
	if err := c.DB.Pool().QueryRow(context.Background(), `SELECT count(*) FROM jobsets WHERE project_id = $1 AND id <> $2`, pid, js).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d jobsets made (%v), want none", n, err)
	}
}

// A GitLab push (Push Hook, X-Gitlab-Token) triggers the jobsets of its branch; the
// default branch is project.default_branch.
func TestWebhooks_GitLabPush(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": "{ }"})
	pid, js := c.Project("demo", repo.Dir, map[string]any{"branch": ""})
	body := payload(t, "gitlab-push")
	status, got := post(t, fmt.Sprintf("%s/api/v1/webhooks/%d/gitlab", c.URL, pid),
		map[string]string{"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": webhookSecret}, body)
	if status != 200 || got != fmt.Sprintf(`{"triggered":[%d]}`+"\n", js) {
		t.Fatalf("GitLab push: %d %s", status, got)
	}
	coordtest.Checked(t, c, js)
}

// A push to the default branch triggers the jobsets that follow it (no branch) even
// when the payload does not say which branch is the default: FC asks the
// repository. A push to another branch does not.
func TestWebhooks_DefaultBranchAskedOfTheRepository(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": "{ }"})
	repo.Git("branch", "dev")
	pid, js := c.Project("demo", repo.Dir, map[string]any{"branch": ""})
	url := fmt.Sprintf("%s/api/v1/webhooks/%d/gitea", c.URL, pid)
	for _, tc := range []struct {
		branch   string
		triggers bool
	}{{"dev", false}, {"main", true}} {
		body := []byte(fmt.Sprintf(`{"ref":"refs/heads/%s","before":"%s","after":"%s"}`, tc.branch, strings.Repeat("1", 40), strings.Repeat("2", 40)))
		status, got := post(t, url, map[string]string{"X-Gitea-Event": "push", "X-Gitea-Signature": sign(webhookSecret, body)}, body)
		want := `{"triggered":[]}` + "\n"
		if tc.triggers {
			want = fmt.Sprintf(`{"triggered":[%d]}`+"\n", js)
		}
		if status != 200 || got != want {
			t.Errorf("push to %s without a default branch in the payload: %d %s, want %s", tc.branch, status, got, want)
		}
	}
	coordtest.Checked(t, c, js)
	if n := len(coordtest.Evaluations(t, c, js)); n != 1 {
		t.Errorf("%d evaluations, want 1", n)
	}
}
