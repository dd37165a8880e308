package dashboard_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/storage"
)

// Tests of the project form's fetch credentials, forge and notifications, the jobset
// form's pull request settings, and the pages' pull request jobsets.

// The secrets the tests type; none may ever be in a page.
const (
	formsSSHKey       = "-----BEGIN OPENSSH PRIVATE KEY-----\r\nb3BlbnNzaC1rZXktdjEAAAAAsecretkeybody\r\n-----END OPENSSH PRIVATE KEY-----\r\n"
	formsHTTPSToken   = "https-token-5ecret-value"
	formsForgeToken   = "forge-token-5ecret-value"
	formsNotifySecret = "notify-5ecret-at-least-16"
	formsHookSecret   = "project-hook-5ecret-16+"
)

var formsSecrets = []string{"secretkeybody", formsHTTPSToken, formsForgeToken, formsNotifySecret, formsHookSecret}

// formsNoSecrets fails the test if body shows any secret the tests typed.
func formsNoSecrets(t *testing.T, what, body string) {
	t.Helper()
	for _, s := range formsSecrets {
		if strings.Contains(body, s) {
			t.Errorf("%s shows the secret %q", what, s)
		}
	}
}

// formsFull is a project form with every field filled in.
func formsFull(name string) url.Values {
	return url.Values{"name": {name}, "display_name": {"Full"}, "repository_url": {"ssh://git@codeberg.org/me/full.git"},
		"enabled": {"1"}, "webhook_secret": {formsHookSecret},
		"ssh_key": {formsSSHKey}, "https_token": {" " + formsHTTPSToken + " "},
		"forge_type": {"gitea"}, "forge_api_url": {"https://codeberg.org"}, "forge_repository": {"me/full"},
		"forge_token": {formsForgeToken}, "forge_status_per_job": {"1"}, "forge_pull_requests_from_forks": {"1"},
		"notify_email": {"a@example.org\r\nB <b@example.org>, c@example.org\r\n"}, "notify_on": {"change"},
		"notify_webhook_url": {"https://hooks.example.org/fc"}, "notify_webhook_secret": {formsNotifySecret}}
}

// formsProject is a project as the API's GET shows it.
type formsProject struct {
	WebhookSecretSet    bool `json:"webhook_secret_set"`
	FetchCredentialsSet bool `json:"fetch_credentials_set"`
	Forge               *struct {
		Type                  string `json:"type"`
		APIURL                string `json:"api_url"`
		Repository            string `json:"repository"`
		TokenSet              bool   `json:"token_set"`
		StatusPerJob          bool   `json:"status_per_job"`
		PullRequestsFromForks bool   `json:"pull_requests_from_forks"`
	} `json:"forge"`
	Notifications *struct {
		Email            []string `json:"email"`
		On               string   `json:"on"`
		WebhookURL       string   `json:"webhook_url"`
		WebhookSecretSet bool     `json:"webhook_secret_set"`
	} `json:"notifications"`
}

// formsGetAPI decodes the API's answer to GET path into v.
func formsGetAPI(t *testing.T, s *site, path string, v any) {
	t.Helper()
	// As an admin: a project's notifications are shown only to those who manage it.
	res := s.do(httptest.NewRequest(http.MethodGet, path, nil), &auth.Principal{Role: storage.RoleAdmin})
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, res.StatusCode, b)
	}
	formsNoSecrets(t, "GET "+path, string(b))
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v\n%s", path, err, b)
	}
}

// formsPost submits a form and wants the redirect to location.
func formsPost(t *testing.T, s *site, path string, form url.Values, who *auth.Principal, location string) {
	t.Helper()
	res, body := s.post(path, form, who)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != location {
		t.Fatalf("POST %s: %d %s\n%s", path, res.StatusCode, res.Header.Get("Location"), body)
	}
}

func formsCreds(t *testing.T, s *site, project string) storage.FetchCredentials {
	t.Helper()
	p, err := s.DB.GetProjectByName(context.Background(), project)
	if err != nil {
		t.Fatal(err)
	}
	c, err := s.DB.ProjectFetchCredentials(context.Background(), p.ID)
	if err != nil || c == nil {
		return storage.FetchCredentials{}
	}
	return *c
}

func formsStoredForgeToken(t *testing.T, s *site, project string) string {
	t.Helper()
	p, err := s.DB.GetProjectByName(context.Background(), project)
	if err != nil {
		t.Fatal(err)
	}
	f, _, err := s.DB.ProjectForge(context.Background(), p.ID)
	if err != nil {
		t.Fatal(err)
	}
	return f.Token
}

// TestProjectForm_EveryPartRoundTrips: each field of the project form reaches the
// API (its GET, and the stored secrets), and the edit form shows it back, secrets
// only as "set".
func TestProjectForm_EveryPartRoundTrips(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	owner := s.person(storage.RoleCreateProjects)
	form := formsFull("full")
	body := browseGet(t, s, "/projects/new", owner)
	browseHas(t, "new project form", body, `name="ssh_key"`, `name="https_token"`, `name="forge_type"`, `<option value="" selected>no forge</option>`,
		`name="forge_token"`, `name="notify_email"`, `<option value="failure" selected>`, `name="notify_webhook_secret"`)
	browseLacks(t, "new project form", body, `name="fetch_credentials_clear"`, `name="forge_token_clear"`)
	formsPost(t, s, "/projects/new", form, owner, "/project/full")

	var got formsProject
	formsGetAPI(t, s, "/api/v1/projects/full", &got)
	if !got.WebhookSecretSet || !got.FetchCredentialsSet {
		t.Errorf("secrets set: webhook %v, fetch credentials %v", got.WebhookSecretSet, got.FetchCredentialsSet)
	}
	if f := got.Forge; f == nil || f.Type != "gitea" || f.APIURL != "https://codeberg.org" || f.Repository != "me/full" ||
		!f.TokenSet || !f.StatusPerJob || !f.PullRequestsFromForks {
		t.Errorf("forge: %+v", f)
	}
	if n := got.Notifications; n == nil || strings.Join(n.Email, " ") != "a@example.org b@example.org c@example.org" ||
		n.On != "change" || n.WebhookURL != "https://hooks.example.org/fc" || !n.WebhookSecretSet {
		t.Errorf("notifications: %+v", n)
	}
	wantKey := strings.ReplaceAll(formsSSHKey, "\r\n", "\n")
	if c := formsCreds(t, s, "full"); c.SSHKey != wantKey || c.HTTPSToken != formsHTTPSToken {
		t.Errorf("fetch credentials stored: %q", c)
	}
	if tok := formsStoredForgeToken(t, s, "full"); tok != formsForgeToken {
		t.Errorf("forge token stored: %q", tok)
	}

	body = browseGet(t, s, "/project/full/edit", owner)
	formsNoSecrets(t, "edit form", body)
	browseHas(t, "edit form", body, `<option value="gitea" selected>`, `value="https://codeberg.org"`, `value="me/full"`,
		`name="forge_status_per_job" value="1" checked`, `name="forge_pull_requests_from_forks" value="1" checked`,
		"a@example.org\nb@example.org\nc@example.org</textarea>", `<option value="change" selected>`,
		`value="https://hooks.example.org/fc"`, "Credentials are <strong>set</strong>", `name="fetch_credentials_clear"`,
		`name="forge_token_clear"`, `name="notify_webhook_secret_clear"`, `name="webhook_secret_clear"`)
	if n := strings.Count(body, `<span class="state">set</span>`); n != 3 {
		t.Errorf("the edit form shows %d secrets set, want 3 (webhook, forge token, notification webhook)", n)
	}

	body = browseGet(t, s, "/project/full", owner)
	formsNoSecrets(t, "project page", body)
	browseHas(t, "project page for its owner", body, "gitea", "me/full", "commit statuses per job",
		"pull requests from forks evaluated", "token set", "e-mail to a@example.org, b@example.org, c@example.org",
		"on a change of status", "https://hooks.example.org/fc", "Fetch credentials")
	body = browseGet(t, s, "/project/full", nil)
	formsNoSecrets(t, "project page for everyone", body)
	browseHas(t, "project page for everyone", body, "me/full")
	browseLacks(t, "project page for everyone", body, "a@example.org", "hooks.example.org")
}

// TestProjectForm_BlankSecretKeepsAndClearRemoves: a form sent with its secrets
// left blank keeps them all; one typed credential keeps the other; the "clear" boxes
// clear; "no forge" and no addresses remove the forge and the notifications.
func TestProjectForm_BlankSecretKeepsAndClearRemoves(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	owner := s.person(storage.RoleCreateProjects)
	formsPost(t, s, "/projects/new", formsFull("keep"), owner, "/project/keep")
	wantKey := strings.ReplaceAll(formsSSHKey, "\r\n", "\n")

	blank := formsFull("keep")
	for _, k := range []string{"webhook_secret", "ssh_key", "https_token", "forge_token", "notify_webhook_secret"} {
		blank.Set(k, "")
	}
	blank.Set("forge_repository", "me/renamed")
	formsPost(t, s, "/project/keep/edit", blank, owner, "/project/keep")
	var got formsProject
	formsGetAPI(t, s, "/api/v1/projects/keep", &got)
	if !got.WebhookSecretSet || !got.FetchCredentialsSet || got.Forge == nil || !got.Forge.TokenSet ||
		got.Forge.Repository != "me/renamed" || got.Notifications == nil || !got.Notifications.WebhookSecretSet {
		t.Fatalf("after an edit with blank secrets: %+v %+v %+v", got, got.Forge, got.Notifications)
	}
	if c := formsCreds(t, s, "keep"); c.SSHKey != wantKey || c.HTTPSToken != formsHTTPSToken {
		t.Errorf("blank fetch credentials changed them: %q", c)
	}
	if tok := formsStoredForgeToken(t, s, "keep"); tok != formsForgeToken {
		t.Errorf("a blank forge token changed it: %q", tok)
	}

	// A new token alone: the SSH key stays.
	oneTyped := url.Values{}
	for k, v := range blank {
		oneTyped[k] = v
	}
	oneTyped.Set("https_token", "another-https-token")
	formsPost(t, s, "/project/keep/edit", oneTyped, owner, "/project/keep")
	if c := formsCreds(t, s, "keep"); c.SSHKey != wantKey || c.HTTPSToken != "another-https-token" {
		t.Errorf("a new HTTPS token alone: %q", c)
	}

	clear := url.Values{}
	for k, v := range blank {
		clear[k] = v
	}
	for _, k := range []string{"webhook_secret_clear", "fetch_credentials_clear", "forge_token_clear", "notify_webhook_secret_clear"} {
		clear.Set(k, "1")
	}
	formsPost(t, s, "/project/keep/edit", clear, owner, "/project/keep")
	got = formsProject{}
	formsGetAPI(t, s, "/api/v1/projects/keep", &got)
	if got.WebhookSecretSet || got.FetchCredentialsSet || got.Forge == nil || got.Forge.TokenSet ||
		got.Notifications == nil || got.Notifications.WebhookSecretSet {
		t.Fatalf("after clearing: %+v %+v %+v", got, got.Forge, got.Notifications)
	}
	body := browseGet(t, s, "/project/keep/edit", owner)
	browseHas(t, "edit form after clearing", body, "None are set.")
	browseLacks(t, "edit form after clearing", body, `<span class="state">set</span>`, `name="forge_token_clear"`)

	none := url.Values{}
	for k, v := range clear {
		none[k] = v
	}
	none.Set("forge_type", "")
	none.Set("notify_email", "")
	none.Set("notify_webhook_url", "")
	formsPost(t, s, "/project/keep/edit", none, owner, "/project/keep")
	got = formsProject{}
	formsGetAPI(t, s, "/api/v1/projects/keep", &got)
	if got.Forge != nil || got.Notifications != nil {
		t.Errorf("no forge and no notifications: %+v %+v", got.Forge, got.Notifications)
	}
	browseHas(t, "edit form without a forge", browseGet(t, s, "/project/keep/edit", owner), `<option value="" selected>no forge</option>`)

	// A form without the parts' fields (an older page) leaves them as they are.
	formsPost(t, s, "/project/keep/edit", formsFull("keep"), owner, "/project/keep")
	formsPost(t, s, "/project/keep/edit", url.Values{"name": {"keep"}, "repository_url": {"ssh://git@codeberg.org/me/full.git"},
		"enabled": {"1"}}, owner, "/project/keep")
	got = formsProject{}
	formsGetAPI(t, s, "/api/v1/projects/keep", &got)
	if got.Forge == nil || got.Notifications == nil || !got.FetchCredentialsSet {
		t.Errorf("a form without the parts removed them: %+v %+v", got.Forge, got.Notifications)
	}
}

// TestProjectForm_ErrorsNameTheFieldAndKeepWhatWasTyped: a refused form comes back
// with the API's message naming the field, that field marked, what was typed kept,
// and no secret; nothing is saved.
func TestProjectForm_ErrorsNameTheFieldAndKeepWhatWasTyped(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	owner := s.person(storage.RoleCreateProjects)
	for _, c := range []struct {
		field, value, apiField, input string
	}{
		{"forge_repository", "not a repository", "forge.repository", `id="f-forge-repo"`},
		{"forge_api_url", "ftp://codeberg.org", "forge.api_url", `id="f-forge-api"`},
		{"forge_token", "has space", "forge.token", `id="f-forge-token"`},
		{"notify_email", "a@example.org\nnot-an-address", "notifications.email", `id="f-notify-email"`},
		{"notify_webhook_url", "https://user:pw@hooks.example.org/", "notifications.webhook_url", `id="f-notify-url"`},
		{"notify_webhook_secret", "short", "notifications.webhook_secret", `id="f-notify-secret"`},
		{"ssh_key", "not a key", "fetch_credentials", `id="f-ssh"`},
	} {
		form := formsFull("bad")
		form.Set(c.field, c.value)
		res, body := s.post("/projects/new", form, owner)
		if res.StatusCode != http.StatusUnprocessableEntity {
			t.Errorf("%s %q: %d\n%s", c.field, c.value, res.StatusCode, body)
			continue
		}
		browseHas(t, c.field+" refused", body, `role="alert"`, c.apiField, c.input, `id="secrets-dropped"`,
			`value="Full"`, `value="ssh://git@codeberg.org/me/full.git"`, `<option value="gitea" selected>`,
			`<option value="change" selected>`, `name="forge_status_per_job" value="1" checked`)
		if i := strings.Index(body, c.input); i < 0 || !strings.Contains(body[i:i+strings.Index(body[i:], ">")], `aria-invalid="true"`) {
			t.Errorf("%s: the field is not marked", c.field)
		}
		if strings.Count(body, `aria-invalid="true"`) != 1 && c.apiField != "fetch_credentials" {
			t.Errorf("%s: %d fields marked", c.field, strings.Count(body, `aria-invalid="true"`))
		}
		if c.field != "forge_repository" && !strings.Contains(body, `value="me/full"`) {
			t.Errorf("%s: the repository typed is lost", c.field)
		}
		formsNoSecrets(t, c.field+" refused", body)
		if _, err := s.DB.GetProjectByName(context.Background(), "bad"); err == nil {
			t.Fatalf("%s: a refused form made the project", c.field)
		}
	}

	// On an edit too; the project stays as it was.
	formsPost(t, s, "/projects/new", formsFull("good"), owner, "/project/good")
	form := formsFull("good")
	form.Set("forge_type", "gitlab")
	form.Set("forge_repository", "../x")
	form.Set("description", "typed, not saved")
	res, body := s.post("/project/good/edit", form, owner)
	if res.StatusCode != http.StatusUnprocessableEntity {
		t.Fatalf("a bad GitLab project: %d\n%s", res.StatusCode, body)
	}
	browseHas(t, "edit refused", body, "forge.repository", `value="../x"`, `<option value="gitlab" selected>`,
		"typed, not saved</textarea>", "Credentials are <strong>set</strong>")
	formsNoSecrets(t, "edit refused", body)
	var got formsProject
	formsGetAPI(t, s, "/api/v1/projects/good", &got)
	if got.Forge == nil || got.Forge.Type != "gitea" || got.Forge.Repository != "me/full" {
		t.Errorf("a refused edit changed the forge: %+v", got.Forge)
	}
}

// TestForms_ReadOnlyAndOthersAreRefused: a read-only person and another creator see
// no form and are refused when they send one anyway; nothing changes.
func TestForms_ReadOnlyAndOthersAreRefused(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	owner, other, reader := s.person(storage.RoleCreateProjects), s.person(storage.RoleCreateProjects), s.person(storage.RoleReadOnly)
	formsPost(t, s, "/projects/new", formsFull("guarded"), owner, "/project/guarded")
	js := url.Values{"name": {"main"}, "nix_expression": {"hydraJobs"}, "flake_mode": {"1"}, "check_interval": {"60"},
		"scheduling_shares": {"100"}, "keep_nr": {"3"}, "state": {"enabled"}, "pull_request_fields": {"1"}}
	formsPost(t, s, "/project/guarded/jobsets/new", js, owner, "/jobset/guarded/main")

	for _, who := range []*auth.Principal{reader, other} {
		body := browseGet(t, s, "/project/guarded", who)
		browseLacks(t, "project page for "+who.Role, body, "/edit", "a@example.org", "hooks.example.org")
		formsNoSecrets(t, "project page for "+who.Role, body)
		for _, path := range []string{"/project/guarded/edit", "/jobset/guarded/main/edit"} {
			if code, _ := s.get(path, who); code != http.StatusForbidden {
				t.Errorf("GET %s as %s: %d", path, who.Name, code)
			}
		}
		hijack := formsFull("guarded")
		hijack.Set("forge_repository", "evil/repo")
		hijack.Set("forge_type", "")
		hijack.Set("fetch_credentials_clear", "1")
		if res, body := s.post("/project/guarded/edit", hijack, who); res.StatusCode != http.StatusForbidden {
			t.Errorf("the project form as %s: %d\n%s", who.Name, res.StatusCode, body)
		} else {
			formsNoSecrets(t, "refused form", body)
		}
		prs := browseForm(js)
		prs.Set("pull_requests", "1")
		if res, _ := s.post("/jobset/guarded/main/edit", prs, who); res.StatusCode != http.StatusForbidden {
			t.Errorf("the jobset form as %s: %d", who.Name, res.StatusCode)
		}
	}
	noToken := formsFull("guarded")
	noToken.Set("csrf", "")
	noToken.Set("forge_type", "")
	if res, _ := s.post("/project/guarded/edit", noToken, owner); res.StatusCode != http.StatusForbidden {
		t.Errorf("the owner's form without its CSRF token: %d", res.StatusCode)
	}
	var got formsProject
	formsGetAPI(t, s, "/api/v1/projects/guarded", &got)
	if got.Forge == nil || got.Forge.Repository != "me/full" || !got.FetchCredentialsSet {
		t.Errorf("a refused form changed the project: %+v", got.Forge)
	}
	var j struct {
		PullRequests bool `json:"pull_requests"`
	}
	formsGetAPI(t, s, "/api/v1/projects/guarded/jobsets/main", &j)
	if j.PullRequests {
		t.Errorf("a refused jobset form turned pull requests on")
	}
}

// TestJobsetForm_PullRequestSettings: the jobset form sets and unsets
// pull_requests and pull_request_drafts, and shows them back; the jobset page says so.
func TestJobsetForm_PullRequestSettings(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	owner := s.person(storage.RoleCreateProjects)
	formsPost(t, s, "/projects/new", formsFull("prs"), owner, "/project/prs")
	body := browseGet(t, s, "/project/prs/jobsets/new", owner)
	browseHas(t, "new jobset form", body, `name="pull_request_fields"`, `name="pull_requests" value="1">`, `name="pull_request_drafts" value="1">`)
	js := url.Values{"name": {"main"}, "branch": {"main"}, "nix_expression": {"hydraJobs"}, "flake_mode": {"1"},
		"check_interval": {"60"}, "scheduling_shares": {"100"}, "keep_nr": {"3"}, "state": {"enabled"},
		"pull_request_fields": {"1"}, "pull_requests": {"1"}, "pull_request_drafts": {"1"}}
	formsPost(t, s, "/project/prs/jobsets/new", browseForm(js), owner, "/jobset/prs/main")
	type prSettings struct {
		PullRequests      bool `json:"pull_requests"`
		PullRequestDrafts bool `json:"pull_request_drafts"`
	}
	var got prSettings
	formsGetAPI(t, s, "/api/v1/projects/prs/jobsets/main", &got)
	if !got.PullRequests || !got.PullRequestDrafts {
		t.Fatalf("created: %+v", got)
	}
	browseHas(t, "edit form", browseGet(t, s, "/jobset/prs/main/edit", owner),
		`name="pull_requests" value="1" checked`, `name="pull_request_drafts" value="1" checked`)
	browseHas(t, "jobset page", browseGet(t, s, "/jobset/prs/main", nil), "<dt>Pull requests</dt>", "drafts too",
		`id="prs"`, "No open pull requests.")

	js.Del("pull_request_drafts")
	formsPost(t, s, "/jobset/prs/main/edit", browseForm(js), owner, "/jobset/prs/main")
	got = prSettings{}
	formsGetAPI(t, s, "/api/v1/projects/prs/jobsets/main", &got)
	if !got.PullRequests || got.PullRequestDrafts {
		t.Fatalf("drafts unchecked: %+v", got)
	}
	// A form without the pull request fields (an older page) leaves them as they are.
	old := browseForm(js)
	old.Del("pull_request_fields")
	old.Del("pull_requests")
	formsPost(t, s, "/jobset/prs/main/edit", old, owner, "/jobset/prs/main")
	got = prSettings{}
	formsGetAPI(t, s, "/api/v1/projects/prs/jobsets/main", &got)
	if !got.PullRequests {
		t.Errorf("a form without the fields turned pull requests off")
	}
	js.Del("pull_requests")
	formsPost(t, s, "/jobset/prs/main/edit", browseForm(js), owner, "/jobset/prs/main")
	got = prSettings{}
	formsGetAPI(t, s, "/api/v1/projects/prs/jobsets/main", &got)
	if got.PullRequests {
		t.Errorf("unchecked: %+v", got)
	}
	browseLacks(t, "jobset page", browseGet(t, s, "/jobset/prs/main", nil), "<dt>Pull requests</dt>", `id="prs"`)

	// The API's refusal names the field, the form keeps what was typed.
	bad := browseForm(js)
	bad.Set("pull_requests", "1")
	bad.Set("branch", "bad..branch")
	res, body := s.post("/jobset/prs/main/edit", bad, owner)
	if res.StatusCode != http.StatusUnprocessableEntity {
		t.Fatalf("a bad branch: %d", res.StatusCode)
	}
	browseHas(t, "refused jobset form", body, `role="alert"`, "branch", `value="bad..branch"`,
		`name="branch" value="bad..branch" aria-invalid="true"`, `name="pull_requests" value="1" checked`)
}

// formsPRs makes project "pr" with jobset "main" that follows pull requests, and its
// jobsets for pull requests 7 (open) and 8 (closed).
func formsPRs(t *testing.T, s *site, owner *auth.Principal) {
	t.Helper()
	ctx := context.Background()
	formsPost(t, s, "/projects/new", formsFull("pr"), owner, "/project/pr")
	formsPost(t, s, "/project/pr/jobsets/new", url.Values{"name": {"main"}, "branch": {"main"}, "nix_expression": {"hydraJobs"},
		"flake_mode": {"1"}, "check_interval": {"60"}, "scheduling_shares": {"100"}, "keep_nr": {"3"}, "state": {"enabled"},
		"pull_request_fields": {"1"}, "pull_requests": {"1"}}, owner, "/jobset/pr/main")
	p, err := s.DB.GetProjectByName(ctx, "pr")
	if err != nil {
		t.Fatal(err)
	}
	parent, err := s.DB.GetJobsetByName(ctx, p.ID, "main")
	if err != nil {
		t.Fatal(err)
	}
	for _, pr := range []storage.PullRequestHead{
		{Number: 7, Ref: "refs/pull/7/head", HeadSHA: "7777777777777777777777777777777777777777", HeadBranch: "feature-seven",
			HeadRepository: "me/full", Title: "Seven <b>bold</b>"},
		{Number: 8, Ref: "refs/pull/8/head", HeadSHA: "8888888888888888888888888888888888888888", HeadBranch: "feature-eight",
			HeadRepository: "fork/full", Title: "Eight"},
	} {
		if _, err := s.DB.OpenPullRequestJobset(ctx, parent, pr); err != nil {
			t.Fatal(err)
		}
	}
	if ch, err := s.DB.ClosePullRequestJobset(ctx, parent.ID, 8); err != nil || !ch.Closed {
		t.Fatalf("close pull request 8: %+v %v", ch, err)
	}
}

// TestPages_PullRequestJobsets: the project page and the parent jobset's page list
// the pull request jobsets with their requests, the closed one only after "show";
// a pull request jobset's page shows its request and links its parent.
func TestPages_PullRequestJobsets(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	owner := s.person(storage.RoleCreateProjects)
	formsPRs(t, s, owner)

	body := browseGet(t, s, "/project/pr", nil)
	browseHas(t, "project page", body, `href="/jobset/pr/main-pr-7"`, "pull request #7 Seven &lt;b&gt;bold&lt;/b&gt;",
		"feature-seven 777777777777", "1 closed pull request jobset hidden.", `href="/project/pr?all=1"`)
	browseLacks(t, "project page", body, "main-pr-8", "Seven <b>")
	body = browseGet(t, s, "/project/pr?all=1", nil)
	browseHas(t, "project page with all", body, `href="/jobset/pr/main-pr-8"`, "pull request #8 Eight",
		`<span class="status cancelled">closed</span>`, "Hide closed pull requests")

	body = browseGet(t, s, "/jobset/pr/main", nil)
	browseHas(t, "parent jobset page", body, `id="prs"`, `href="/jobset/pr/main-pr-7">#7</a> Seven &lt;b&gt;bold&lt;/b&gt;`,
		"feature-seven", "1 closed pull request hidden.", `href="/jobset/pr/main?all=1#prs"`)
	browseLacks(t, "parent jobset page", body, "main-pr-8")
	body = browseGet(t, s, "/jobset/pr/main?all=1", nil)
	browseHas(t, "parent jobset page with all", body, `href="/jobset/pr/main-pr-8">#8</a> Eight`, "closed", "Hide closed pull requests")

	body = browseGet(t, s, "/jobset/pr/main-pr-7", nil)
	browseHas(t, "pull request jobset page", body, `id="pull-request"`, "#7 Seven &lt;b&gt;bold&lt;/b&gt;",
		"me/full:feature-seven", `title="7777777777777777777777777777777777777777">777777777777`, `href="/jobset/pr/main">main</a>`)
	browseLacks(t, "pull request jobset page", body, `id="prs"`, "(hidden from the project's list)")
	browseHas(t, "closed pull request jobset page", browseGet(t, s, "/jobset/pr/main-pr-8", nil), "fork/full:feature-eight",
		"(hidden from the project's list)")

	body = browseGet(t, s, "/jobset/pr/main-pr-7/edit", owner)
	browseHas(t, "pull request jobset form", body, `id="pull-request-note"`, "pull request #7")
	browseLacks(t, "pull request jobset form", body, `name="pull_requests"`, `name="pull_request_fields"`)
}
