package dashboard_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/storage"
)

// The jobset page lists the channels following the jobset with the evaluation each
// serves (or none yet); a jobset no channel follows has no such section.
func TestJobsetPage_Channels(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	ctx := context.Background()
	id := func(q string, args ...any) int64 {
		t.Helper()
		var id int64
		if err := s.DB.Pool().QueryRow(ctx, q, args...).Scan(&id); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return id
	}
	p := id(`INSERT INTO projects (name, repository_url) VALUES ('chanproj', 'https://example.org/r.git') RETURNING id`)
	j := id(`INSERT INTO jobsets (project_id, name) VALUES ($1, 'main') RETURNING id`, p)
	id(`INSERT INTO jobsets (project_id, name) VALUES ($1, 'other') RETURNING id`, p)
	commit := "abcdef0123456789abcdef0123456789abcdef01"
	ev := id(`INSERT INTO evaluations (jobset_id, status, commit, finished_at) VALUES ($1, 'succeeded', $2, now()) RETURNING id`, j, commit)
	id(`INSERT INTO channels (name, project_id, jobset_id, current_evaluation_id) VALUES ('stable', $1, $2, $3) RETURNING id`, p, j, ev)
	id(`INSERT INTO channels (name, project_id, jobset_id, aggregate) VALUES ('tested', $1, $2, 'release') RETURNING id`, p, j)

	code, body := s.get("/jobset/chanproj/main", nil)
	if code != http.StatusOK {
		t.Fatalf("jobset page: %d\n%s", code, body)
	}
	_, section, ok := strings.Cut(body, `id="channels"`)
	section, _, _ = strings.Cut(section, "</section>")
	if !ok {
		t.Fatalf("no channels section:\n%s", body)
	}
	for _, want := range []string{`href="/channel/stable"`, fmt.Sprintf(`href="/eval/%d"`, ev), commit[:12], "all builds succeed",
		`href="/channel/tested"`, `job <span class="mono">release</span> succeeds`, "none yet"} {
		if !strings.Contains(section, want) {
			t.Errorf("channels section lacks %q:\n%s", want, section)
		}
	}
	if strings.Index(section, "stable") > strings.Index(section, "tested") {
		t.Errorf("channels not by name:\n%s", section)
	}
	code, body = s.get("/jobset/chanproj/other", nil)
	if code != http.StatusOK || strings.Contains(body, `id="channels"`) {
		t.Fatalf("a jobset no channel follows: %d, channels section: %v", code, strings.Contains(body, `id="channels"`))
	}
}

// Channels through the API, as the dashboard's test site serves it: a create-projects
// key makes channels of its own project only, a read-only key none; reads are public.
func TestChannelsAPI_Ownership(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	owner, other, reader := s.person(storage.RoleCreateProjects), s.person(storage.RoleCreateProjects), s.person(storage.RoleReadOnly)
	api := func(method, path, body string, who *auth.Principal) int {
		t.Helper()
		req := httptest.NewRequest(method, path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		res := s.do(req, who)
		return res.StatusCode
	}
	if code := api("POST", "/api/v1/projects", `{"name": "mine", "repository_url": "https://example.org/r.git"}`, owner); code != 201 {
		t.Fatalf("create project: %d", code)
	}
	if code := api("POST", "/api/v1/projects/mine/jobsets", `{"name": "main", "nix_expression": "release.nix", "flake_mode": false}`, owner); code != 201 {
		t.Fatalf("create jobset: %d", code)
	}
	body := `{"name": "stable", "jobset": "mine/main"}`
	for _, who := range []*auth.Principal{other, reader, nil} {
		if code := api("POST", "/api/v1/channels", body, who); code != 403 && code != 401 {
			t.Fatalf("channel of another's project by %v: %d", who, code)
		}
	}
	if code := api("POST", "/api/v1/channels", `{"name": "stable", "jobset": "mine/nope"}`, owner); code != 422 {
		t.Fatalf("channel of no jobset: %d, want 422", code)
	}
	if code := api("POST", "/api/v1/channels", `{"name": "bad/name", "jobset": "mine/main"}`, owner); code != 422 {
		t.Fatalf("channel named bad/name: %d, want 422", code)
	}
	if code := api("POST", "/api/v1/channels", body, owner); code != 201 {
		t.Fatalf("owner creates a channel: %d", code)
	}
	if code, _ := s.get("/api/v1/channels/stable", nil); code != 200 {
		t.Fatalf("read a channel anonymously: %d", code)
	}
	if _, metrics := s.get("/metrics", nil); !strings.Contains(metrics, "\nfc_channels_total 1\n") {
		t.Fatalf("fc_channels_total after one channel:\n%s", metrics)
	}
	if code := api("DELETE", "/api/v1/channels/stable", "", other); code != 403 {
		t.Fatalf("another owner deletes: %d, want 403", code)
	}
	if code := api("DELETE", "/api/v1/channels/stable", "", owner); code != 204 {
		t.Fatalf("owner deletes: %d", code)
	}
	if _, metrics := s.get("/metrics", nil); !strings.Contains(metrics, "\nfc_channels_total 0\n") {
		t.Fatalf("fc_channels_total after the delete:\n%s", metrics)
	}
}
