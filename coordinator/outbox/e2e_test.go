package outbox_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage"
)

const publicURL = "https://ci.example.org"

// Secrets the end-to-end test sets, none of which may show up in a log or a list.
const (
	forgeToken    = "ghp_forge-token-SECRET-1"
	webhookSecret = "webhook-secret-SECRET-2"
	smtpPassword  = "smtp-password-SECRET-3"
)

// releaseNix is a jobset with the jobs given, each `name = ...;`.
func releaseNix(salt string, jobs ...string) string {
	return fmt.Sprintf("let\n  %s\nin {\n  %s\n}\n", coordtest.MkLet(salt), strings.Join(jobs, "\n  "))
}

// deliverySetup is a coordinator with an agent, a forge that records statuses, an
// SMTP server, a webhook receiver and a run_command, and a project that uses them.
type deliverySetup struct {
	c        *coordtest.Coordinator
	gh       *fakeForge
	mail     *coordtest.Mailpit
	hooks    *receiver
	cmdDir   string
	repo     *coordtest.Repo
	salt     string
	pid, jid int64
}

func newDeliverySetup(t *testing.T) *deliverySetup {
	t.Helper()
	s := &deliverySetup{gh: newFakeForge(t), hooks: newReceiver(t, webhookSecret), cmdDir: t.TempDir(), salt: coordtest.Salt(t)}
	s.mail = coordtest.StartMailpit(t, coordtest.MailpitOptions{Username: "fc", Password: smtpPassword})
	passwordFile := filepath.Join(t.TempDir(), "smtp-password")
	if err := os.WriteFile(passwordFile, []byte(smtpPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.c = coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) {
		cfg.Server.PublicURL = publicURL
		cfg.Eval.PullRequestInterval = 0
		cfg.Notifications = config.Notifications{SMTPHost: s.mail.Host, SMTPPort: s.mail.Port, From: "FC <ci@example.org>",
			Username: "fc", PasswordFile: passwordFile, RunCommand: `cp "$FC_BUILD_JSON" "` + s.cmdDir + `/$FC_DELIVERY_ID.json"`,
			RunCommandTimeout: 30, RetryBackoff: 1, MaxAttempts: 5, KeepDays: 30}
	}})
	coordtest.StartAgent(t, s.c, coordtest.AgentOptions{Name: "worker", Roles: []string{"build", "eval"}})
	s.repo = coordtest.NewRepo(t)
	s.repo.Commit(map[string]string{"release.nix": releaseNix(s.salt, `hello = mk "hello" { };`)})
	s.pid, s.jid = s.c.Project("demo", s.repo.Dir, map[string]any{"pull_requests": true})
	s.setProject(t, map[string]any{
		"forge": map[string]any{"type": "github", "api_url": s.gh.URL, "repository": "octo/demo", "token": forgeToken},
		"notifications": map[string]any{"email": []string{"dev@example.org", "Ops <ops@example.org>"}, "on": "failure",
			"webhook_url": s.hooks.URL + "/fc?token=query-SECRET-4", "webhook_secret": webhookSecret}})
	return s
}

func (s *deliverySetup) setProject(t *testing.T, body map[string]any) {
	t.Helper()
	if code := s.c.Do("PUT", fmt.Sprintf("/api/v1/projects/%d", s.pid), s.c.Admin, body, nil); code != 200 {
		t.Fatalf("update the project: %d", code)
	}
}

// statusesOn are the statuses the forge was sent for commit, by context, in order.
func (s *deliverySetup) statusesOn(commit string) map[string][]map[string]string {
	out := map[string][]map[string]string{}
	for _, st := range s.gh.statuses() {
		if st.Path == "POST /repos/octo/demo/statuses/"+commit {
			out[st.Body["context"]] = append(out[st.Body["context"]], st.Body)
		}
	}
	return out
}

// waitStatus waits until context on commit was last sent state.
func (s *deliverySetup) waitStatus(t *testing.T, commit, context, state string) map[string]string {
	t.Helper()
	var last map[string]string
	coordtest.Eventually(t, 3*time.Minute, fmt.Sprintf("%s on %s is %s", context, commit, state), func() bool {
		sent := s.statusesOn(commit)[context]
		if len(sent) == 0 {
			return false
		}
		last = sent[len(sent)-1]
		return last["state"] == state
	})
	return last
}

func states(sent []map[string]string) []string {
	var out []string
	for _, s := range sent {
		out = append(out, s["state"])
	}
	return out
}

// The whole flow with real git, PostgreSQL, Nix and an agent: a push evaluated with
// a passing and a failing job reports pending, then failure on fc/main (the
// aggregate) with a link to the evaluation; the failing build is mailed (through a
// real SMTP server, with its link, failing step and log), posted to the signed
// webhook and given to run_command with every other finished build. Then per job: a
// pull request's head gets fc/main/<job> for each job, success and failure, linked
// to their builds. An evaluation that fails reports on fc/<jobset>/evaluation.
// Every delivery is listed for admins, and no secret shows in a log or that list.
func TestDeliveries_EndToEnd(t *testing.T) {
	t.Parallel()
	s := newDeliverySetup(t)
	c := s.c

	// A push: hello passes, broken fails.
	head := s.repo.Commit(map[string]string{"release.nix": releaseNix(s.salt, `hello = mk "hello" { };`,
		`broken = mk "broken" { args = sh "echo MARKER-LOG-LINE; exit 1"; };`)})
	c.Trigger(s.jid, false)
	evalID := coordtest.Evaluated(t, c, s.jid, 0)
	builds := coordtest.BuildsOf(t, c, evalID)
	for job, b := range builds {
		builds[job] = coordtest.WaitBuild(t, c, b.ID, 3*time.Minute, "finished", func(b coordtest.Build) bool { return b.Finished() })
	}
	if builds["hello"].Status != "succeeded" || builds["broken"].Status != "failed" {
		t.Fatalf("builds %+v", builds)
	}
	// Failure as soon as one failed; the end says how many.
	s.waitStatus(t, head, "fc/main", "failure")
	coordtest.Eventually(t, time.Minute, "fc/main says how many jobs failed", func() bool {
		sent := s.statusesOn(head)["fc/main"]
		return sent[len(sent)-1]["description"] == "1 of 2 jobs failed"
	})
	sent := s.statusesOn(head)["fc/main"]
	if last := sent[len(sent)-1]; last["state"] != "failure" || last["target_url"] != fmt.Sprintf("%s/eval/%d", publicURL, evalID) {
		t.Errorf("the final aggregate status %v", last)
	}
	if got := states(sent); got[0] != "pending" || len(got) > 4 {
		t.Errorf("fc/main went %v: want pending first, and a few statuses, not one per build", got)
	}
	broken := builds["broken"]

	msgs := s.mail.WaitMessages(t, 1, 2*time.Minute)
	m := msgs[0]
	if got := m.Recipients(); len(msgs) != 1 || !slices.Equal(got, []string{"dev@example.org", "ops@example.org"}) {
		t.Errorf("%d mails, to %v: want one, to both", len(msgs), got)
	}
	if m.Subject != "[FC] demo:main:broken: Failed" {
		t.Errorf("subject %q", m.Subject)
	}
	for _, want := range []string{fmt.Sprintf("%s/build/%d", publicURL, broken.ID), "The failing step: " + broken.DrvPath,
		"MARKER-LOG-LINE", head} {
		if !strings.Contains(m.Text, want) {
			t.Errorf("the mail does not say %q:\n%s", want, m.Text)
		}
	}

	hooks := s.waitHooks(t, 1)
	var hook struct {
		Event string `json:"event"`
		Build struct {
			ID     int64  `json:"id"`
			Job    string `json:"job"`
			Status string `json:"status"`
			URL    string `json:"url"`
			Commit string `json:"commit"`
		} `json:"build"`
	}
	if err := json.Unmarshal(hooks[0], &hook); err != nil || hook.Event != "build.finished" || hook.Build.ID != broken.ID ||
		hook.Build.Status != "failed" || hook.Build.Commit != head || hook.Build.URL != fmt.Sprintf("%s/build/%d", publicURL, broken.ID) {
		t.Errorf("webhook %s (%v)", hooks[0], err)
	}
	s.checkRunCommand(t, builds)

	// Per job, on a pull request's head: contexts under the parent jobset's name.
	s.setProject(t, map[string]any{"forge": map[string]any{"status_per_job": true}})
	s.repo.Git("checkout", "-q", "-b", "feature")
	prHead := s.repo.Commit(map[string]string{"release.nix": releaseNix(s.salt, `hello = mk "hello" { };`,
		`feature = mk "feature" { args = sh "echo FEATURE-FAILS; exit 2"; };`)})
	s.repo.Git("update-ref", "refs/pull/1/head", prHead)
	s.repo.Git("checkout", "-q", "main")
	postPullRequest(t, c, s.pid, prHead)
	s.waitStatus(t, prHead, "fc/main/feature", "failure")
	hello := s.waitStatus(t, prHead, "fc/main/hello", "success")
	evaluation := s.waitStatus(t, prHead, "fc/main/evaluation", "success")
	if !strings.HasPrefix(hello["target_url"], publicURL+"/build/") || !strings.HasPrefix(evaluation["target_url"], publicURL+"/eval/") {
		t.Errorf("links: hello %v, evaluation %v", hello, evaluation)
	}
	if _, ok := s.statusesOn(prHead)["fc/main"]; ok {
		t.Error("an aggregate status was sent with a status per job")
	}

	// An evaluation that fails.
	var bad struct{ ID int64 }
	if code := c.Do("POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", s.pid), c.Admin, map[string]any{"name": "bad", "branch": "main",
		"flake_mode": false, "nix_expression": "missing.nix", "check_interval": 0}, &bad); code != 201 {
		t.Fatalf("create jobset: %d", code)
	}
	c.Trigger(bad.ID, false)
	if st := s.waitStatus(t, head, "fc/bad/evaluation", "failure"); !strings.HasPrefix(st["description"], "Evaluation failed") {
		t.Errorf("the evaluation's failure: %v", st)
	}

	s.checkDeliveriesList(t)
}

// waitHooks waits for n accepted webhooks and returns their bodies.
func (s *deliverySetup) waitHooks(t *testing.T, n int) [][]byte {
	t.Helper()
	var bodies [][]byte
	coordtest.Eventually(t, 2*time.Minute, fmt.Sprintf("%d webhooks", n), func() bool {
		s.hooks.mu.Lock()
		defer s.hooks.mu.Unlock()
		bodies = nil
		for _, b := range s.hooks.bodies {
			bodies = append(bodies, b)
		}
		return len(bodies) >= n
	})
	return bodies
}

// checkRunCommand waits for run_command to have had every build's JSON.
func (s *deliverySetup) checkRunCommand(t *testing.T, builds map[string]coordtest.Build) {
	t.Helper()
	got := map[string]string{}
	coordtest.Eventually(t, 2*time.Minute, "run_command ran for every build", func() bool {
		files, _ := filepath.Glob(filepath.Join(s.cmdDir, "*.json"))
		for _, f := range files {
			var b struct{ Job, Status string }
			raw, _ := os.ReadFile(f)
			if json.Unmarshal(raw, &b) == nil {
				got[b.Job] = b.Status
			}
		}
		return len(got) >= len(builds)
	})
	for job, b := range builds {
		if got[job] != b.Status {
			t.Errorf("run_command had %s %q, want %q", job, got[job], b.Status)
		}
	}
}

// checkDeliveriesList: every delivery settled and listed for admins only, and no
// secret in that list or in the coordinator's log.
func (s *deliverySetup) checkDeliveriesList(t *testing.T) {
	t.Helper()
	c := s.c
	var list struct {
		Items []struct {
			ID        int64  `json:"id"`
			Kind      string `json:"kind"`
			Target    string `json:"target"`
			Status    string `json:"status"`
			Attempts  int    `json:"attempts"`
			LastError string `json:"last_error"`
			CreatedAt string `json:"created_at"`
		} `json:"items"`
		Total int `json:"total"`
	}
	coordtest.Eventually(t, time.Minute, "no delivery pending", func() bool {
		var pending struct{ Total int }
		c.Do("GET", "/api/v1/notifications/deliveries?status=pending", c.Admin, nil, &pending)
		return pending.Total == 0
	})
	if code := c.Do("GET", "/api/v1/notifications/deliveries?limit=500", c.Admin, nil, &list); code != 200 {
		t.Fatalf("list deliveries: %d", code)
	}
	kinds := map[string]int{}
	for _, d := range list.Items {
		kinds[d.Kind]++
		if d.Status != storage.DeliveryDelivered || d.Attempts < 1 || d.CreatedAt == "" {
			t.Errorf("delivery %+v", d)
		}
	}
	if kinds["status"] < 5 || kinds["email"] < 2 || kinds["webhook"] < 2 || kinds["command"] < 2 || list.Total != len(list.Items) {
		t.Errorf("deliveries by kind %v (total %d)", kinds, list.Total)
	}
	raw, _ := json.Marshal(list)
	for _, secret := range []string{forgeToken, webhookSecret, smtpPassword, "query-SECRET-4"} {
		if bytes.Contains(raw, []byte(secret)) || strings.Contains(c.Log.String(), secret) {
			t.Errorf("%q shows up in the deliveries list or the log", secret)
		}
	}
	if code := c.Do("GET", "/api/v1/notifications/deliveries", "", nil, nil); code != 401 {
		t.Errorf("the list without a key: %d", code)
	}
}

// postPullRequest sends GitHub's pull_request "opened" webhook for request 1 at head.
func postPullRequest(t *testing.T, c *coordtest.Coordinator, pid int64, head string) {
	t.Helper()
	repo := map[string]any{"id": 1, "full_name": "octo/demo", "default_branch": "main"}
	body, _ := json.Marshal(map[string]any{"action": "opened", "number": 1, "repository": repo,
		"pull_request": map[string]any{"number": 1, "state": "open", "draft": false, "title": "A feature",
			"head": map[string]any{"ref": "feature", "sha": head, "repo": repo},
			"base": map[string]any{"ref": "main", "repo": repo}}})
	mac := hmac.New(sha256.New, []byte("a-very-secret-webhook-key"))
	mac.Write(body)
	req, _ := http.NewRequest("POST", fmt.Sprintf("%s/api/v1/webhooks/%d/github", c.URL, pid), bytes.NewReader(body))
	req.Header.Set("X-GitHub-Event", "pull_request")
	req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if raw, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 {
		t.Fatalf("pull request webhook: %d %s", resp.StatusCode, raw)
	}
}

// The coordinator stops with deliveries pending (a receiver that was down, and
// deliveries queued while it was stopped); after a restart each is delivered, and
// exactly once per delivery id.
func TestDeliveries_SurviveARestart(t *testing.T) {
	t.Parallel()
	rc := newReceiver(t, webhookSecret)
	rc.setDown(true)
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) { cfg.Notifications.RetryBackoff = 1 }})
	p := project(t, c.DB, "demo")
	withWebhook(t, c.DB, p, rc.URL, webhookSecret)
	var first []storage.NewDelivery
	for i := range 5 {
		first = append(first, webhookDelivery(p, i))
	}
	enqueue(t, c.DB, first...)
	coordtest.Eventually(t, time.Minute, "every delivery tried and still pending", func() bool {
		ds := deliveries(t, c.DB)
		for _, d := range ds {
			if d.Attempts == 0 || d.Status != storage.DeliveryPending {
				return false
			}
		}
		return len(ds) == 5
	})
	c.Stop()
	var second []storage.NewDelivery
	for i := range 3 {
		second = append(second, webhookDelivery(p, 100+i))
	}
	enqueue(t, c.DB, second...) // while no coordinator runs
	rc.setDown(false)
	if n := len(rc.counts()); n != 0 {
		t.Fatalf("%d deliveries accepted before the restart", n)
	}
	c.Restart()
	ds := waitSettled(t, c.DB, 2*time.Minute)
	counts := rc.counts()
	if len(ds) != 8 || len(counts) != 8 {
		t.Fatalf("%d deliveries, %d received, want 8", len(ds), len(counts))
	}
	for _, d := range ds {
		if d.Status != storage.DeliveryDelivered || counts[fmt.Sprint(d.ID)] != 1 {
			t.Errorf("delivery %d: %s, received %d times", d.ID, d.Status, counts[fmt.Sprint(d.ID)])
		}
	}
}
