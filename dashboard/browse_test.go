package dashboard_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/storage"
)

// Fixtures for the browsing pages' tests: rows put straight into the database.

// browseExec runs SQL on the site's database.
func browseExec(t *testing.T, s *site, q string, args ...any) {
	t.Helper()
	if _, err := s.DB.Pool().Exec(context.Background(), q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// browseID runs SQL that returns one id.
func browseID(t *testing.T, s *site, q string, args ...any) int64 {
	t.Helper()
	var id int64
	if err := s.DB.Pool().QueryRow(context.Background(), q, args...).Scan(&id); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return id
}

// browseProject makes a project owned by the key of owner (nil: no owner).
func browseProject(t *testing.T, s *site, name string, owner *auth.Principal) int64 {
	t.Helper()
	var key *int64
	if owner != nil {
		key = &owner.KeyID
	}
	return browseID(t, s, `INSERT INTO projects (name, repository_url, owner_key_id) VALUES ($1, 'https://example.org/r.git', $2)
		RETURNING id`, name, key)
}

func browseJobset(t *testing.T, s *site, project int64, name string) int64 {
	t.Helper()
	return browseID(t, s, `INSERT INTO jobsets (project_id, name) VALUES ($1, $2) RETURNING id`, project, name)
}

// browseEval makes a finished evaluation of jobset with one build per job, each
// with the status given (and a step of its own), and returns the evaluation and
// the builds by job.
func browseEval(t *testing.T, s *site, jobset int64, status string, builds map[string]string) (int64, map[string]int64) {
	t.Helper()
	ev := browseID(t, s, `INSERT INTO evaluations (jobset_id, status, commit, nr_jobs, finished_at)
		VALUES ($1, $2, md5(random()::text), $3, now()) RETURNING id`, jobset, status, len(builds))
	ids := map[string]int64{}
	for job, st := range builds {
		drv := fmt.Sprintf("/nix/store/%d-%s-%d.drv", ev, job, jobset)
		ids[job] = browseID(t, s, `WITH s AS (INSERT INTO steps (drv_path, system, status) VALUES ($3, 'x86_64-linux', $4) RETURNING id)
			INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, step_id, status, started_at, finished_at)
			SELECT $1, $2, $5, $3, 'x86_64-linux', s.id, $4,
				CASE WHEN $4 <> 'queued' THEN now() - interval '90 seconds' END,
				CASE WHEN $4 NOT IN ('queued', 'running') THEN now() END FROM s RETURNING id`, ev, jobset, drv, st, job)
	}
	return ev, ids
}

// browseUser is a signed-in person with an account (so starred jobs apply).
func browseUser(t *testing.T, s *site, name, role string) *auth.Principal {
	t.Helper()
	id := browseID(t, s, `INSERT INTO users (username, password_hash, role) VALUES ($1, 'x', $2) RETURNING id`, name, role)
	return &auth.Principal{UserID: id, Name: name, Role: role, CSRF: "csrf-of-" + name}
}

// browseForm is a copy of a form's values (s.post adds the CSRF token to the one it
// is given), without a token unless it sets one to "" on purpose.
func browseForm(v url.Values) url.Values {
	c := url.Values{}
	for k, vs := range v {
		c[k] = append([]string(nil), vs...)
	}
	return c
}

func browseHas(t *testing.T, what, body string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(body, w) {
			t.Errorf("%s lacks %q", what, w)
		}
	}
	if t.Failed() {
		t.Logf("%s:\n%s", what, body)
	}
}

func browseLacks(t *testing.T, what, body string, unwanted ...string) {
	t.Helper()
	for _, w := range unwanted {
		if strings.Contains(body, w) {
			t.Errorf("%s shows %q", what, w)
		}
	}
}

func browseGet(t *testing.T, s *site, path string, who *auth.Principal) string {
	t.Helper()
	code, body := s.get(path, who)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d\n%s", path, code, body)
	}
	return body
}

// TestHome_ShowsProjectsQueueAgentsRunningAndStarred: the home page shows each
// project's jobsets with their latest evaluation and its counts, the queue by
// system, the connected agents, running builds, recent evaluations and builds, and
// the signed-in person's starred jobs with their latest builds.
func TestHome_ShowsProjectsQueueAgentsRunningAndStarred(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	p := browseProject(t, s, "nixpkgs", nil)
	trunk := browseJobset(t, s, p, "trunk")
	browseJobset(t, s, p, "staging") // never evaluated
	browseEval(t, s, trunk, "succeeded", map[string]string{"old": "failed"})
	ev, builds := browseEval(t, s, trunk, "succeeded", map[string]string{
		"hello": "succeeded", "world": "failed", "slow": "running", "later": "queued", "again": "succeeded"})
	browseExec(t, s, `INSERT INTO steps (drv_path, system, status) VALUES ('/nix/store/q1.drv', 'aarch64-linux', 'queued'),
		('/nix/store/q2.drv', 'aarch64-linux', 'queued')`)
	browseExec(t, s, `INSERT INTO agents (name, public_key, fingerprint, connected, last_seen_at)
		VALUES ('builder-one', 'k1', 'SHA256:1', true, now()), ('gone-away', 'k2', 'SHA256:2', false, now() - interval '1 hour')`)
	me := browseUser(t, s, "alice", storage.RoleReadOnly)
	browseExec(t, s, `INSERT INTO starred_jobs (user_id, jobset_id, job) VALUES ($1, $2, 'world'), ($1, $2, 'never-built')`, me.UserID, trunk)

	body := browseGet(t, s, "/", me)
	browseHas(t, "home", body,
		`href="/project/nixpkgs"`, `href="/jobset/nixpkgs/trunk"`, `href="/jobset/nixpkgs/staging"`, "not evaluated",
		fmt.Sprintf(`<tr data-jobset="%d">`, trunk), fmt.Sprintf(`href="/eval/%d" data-f="eval"`, ev),
		// trunk's latest evaluation: 2 succeeded, 1 failed, 1 queued, 1 running.
		`title="succeeded" data-f="succeeded">2</span>`, `title="failed" data-f="failed">1</span>`,
		`title="queued" data-f="queued">1</span>`, `title="running" data-f="running">1</span>`,
		// The queue: this evaluation's steps on x86_64-linux, two more on aarch64-linux.
		"<td>aarch64-linux</td><td class=\"num\">2</td><td class=\"num\">0</td>",
		"<td>x86_64-linux</td><td class=\"num\">1</td><td class=\"num\">1</td>",
		`<span id="agents-count">1</span> connected`, "builder-one", `<span id="running-count">1</span> builds running`,
		fmt.Sprintf(`<td class="nw"><a href="/build/%d">%d</a></td><td><a href="/job/nixpkgs/trunk/slow">`, builds["slow"], builds["slow"]),
		fmt.Sprintf(`<a href="/eval/%d">%d</a>`, ev, ev),
		"Starred jobs", `href="/job/nixpkgs/trunk/world"`, fmt.Sprintf(`href="/build/%d" data-build="%d"`, builds["world"], builds["world"]),
		`href="/job/nixpkgs/trunk/never-built"`, "no build",
		`src="/static/browse.js"`, `data-live="/home/live.json"`)
	browseLacks(t, "home", body, "gone-away")

	// Someone signed in with an API key, or nobody, has no starred jobs to show.
	body = browseGet(t, s, "/", nil)
	browseLacks(t, "home for nobody", body, "Starred jobs")
	browseHas(t, "home for nobody", body, `href="/jobset/nixpkgs/trunk"`)
}

// TestHome_ListsPageOnTheirOwnParameters: each list of the home page pages on its own
// query parameter and keeps the others'.
func TestHome_ListsPageOnTheirOwnParameters(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	for i := range 12 {
		browseProject(t, s, fmt.Sprintf("p%02d", i), nil)
	}
	js := browseJobset(t, s, browseProject(t, s, "zz-last", nil), "main")
	jobs := map[string]string{}
	for i := range 25 {
		jobs[fmt.Sprintf("job%02d", i)] = "succeeded"
	}
	var evals []int64
	for range 12 {
		ev, _ := browseEval(t, s, js, "succeeded", map[string]string{"one": "succeeded"})
		evals = append(evals, ev)
	}
	browseEval(t, s, js, "succeeded", jobs)
	first, last := browseID(t, s, `SELECT min(id) FROM builds`), browseID(t, s, `SELECT max(id) FROM builds`)

	body := browseGet(t, s, "/", nil)
	browseHas(t, "home page 1", body, `href="/project/p00"`, `href="/project/p09"`,
		"page 1 of 2 (13)", `href="/?projects=2#projects"`, // projects
		fmt.Sprintf(`<a href="/eval/%d">%d</a>`, evals[11], evals[11]), `href="/?evals=2#evals"`, // evaluations
		fmt.Sprintf(`<a href="/build/%d">%d</a>`, last, last), `href="/?builds=2#builds"`) // builds
	browseLacks(t, "home page 1", body, `href="/project/p10"`, fmt.Sprintf(`<a href="/eval/%d">%d</a>`, evals[0], evals[0]),
		fmt.Sprintf(`<a href="/build/%d">%d</a>`, first, first))

	body = browseGet(t, s, "/?projects=2&builds=2", nil)
	browseHas(t, "home, second pages", body, `href="/project/p10"`, `href="/project/zz-last"`,
		fmt.Sprintf(`<a href="/build/%d">%d</a>`, first, first), "page 2", // 37 builds: 20 on page 1, the oldest on 2
		`href="/?builds=1&amp;projects=2#builds"`, `href="/?builds=2&amp;evals=2&amp;projects=2#evals"`)
	browseLacks(t, "home, second pages", body, `href="/project/p00"`, fmt.Sprintf(`<a href="/build/%d">%d</a>`, last, last))
}

// TestHomeLive_ReportsWhatChanged: /home/live.json reports the statuses asked about,
// the queue, the agents and the running builds, and follows changes.
func TestHomeLive_ReportsWhatChanged(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	js := browseJobset(t, s, browseProject(t, s, "live", nil), "main")
	_, builds := browseEval(t, s, js, "succeeded", map[string]string{"a": "running", "b": "queued"})
	live := func() map[string]any {
		t.Helper()
		body := browseGet(t, s, fmt.Sprintf("/home/live.json?builds=%d,%d,x,-3&jobsets=%d", builds["a"], builds["b"], js), nil)
		var out map[string]any
		if err := json.Unmarshal([]byte(body), &out); err != nil {
			t.Fatalf("live.json: %v\n%s", err, body)
		}
		return out
	}
	got := fmt.Sprint(live())
	statuses := fmt.Sprintf("%d:running %d:queued", builds["a"], builds["b"])
	if builds["b"] < builds["a"] { // fmt prints a map's keys in order
		statuses = fmt.Sprintf("%d:queued %d:running", builds["b"], builds["a"])
	}
	want := fmt.Sprintf("map[agents:0 builds:map[%s] jobsets:map[%d:map[eval_id:%d failed:0 queued:1 running:1 status:succeeded succeeded:0]] queue:[map[queued:1 running:1 system:x86_64-linux]] running:1]",
		statuses, js, browseID(t, s, `SELECT max(id) FROM evaluations`))
	if got != want {
		t.Fatalf("live.json:\n got %s\nwant %s", got, want)
	}
	browseExec(t, s, `UPDATE builds SET status = 'succeeded', finished_at = now() WHERE id = $1`, builds["a"])
	browseExec(t, s, `UPDATE steps SET status = 'succeeded' WHERE status = 'running'`)
	got = fmt.Sprint(live())
	if !strings.Contains(got, fmt.Sprintf("%d:succeeded", builds["a"])) || !strings.Contains(got, "running:0") ||
		!strings.Contains(got, "queue:[map[queued:1 running:0") || !strings.Contains(got, "succeeded:1") {
		t.Fatalf("after the build finished, live.json says %s", got)
	}
}

// TestProjects_ListPagesAndShowsCreateOnlyToThoseAllowed: /projects lists projects by
// name, 25 a page; its "New project" is shown to who may create projects, and the
// form refuses the others: nobody is sent to sign in, a read-only person gets 403,
// and so does a form sent anyway or without its CSRF token.
func TestProjects_ListPagesAndShowsCreateOnlyToThoseAllowed(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	for i := range 27 {
		browseProject(t, s, fmt.Sprintf("proj%02d", i), nil)
	}
	body := browseGet(t, s, "/projects", nil)
	browseHas(t, "projects", body, `href="/project/proj00"`, `href="/project/proj24"`, "page 1 of 2 (27)", `href="/projects?page=2"`)
	browseLacks(t, "projects", body, `href="/project/proj25"`, `href="/projects/new"`)
	body = browseGet(t, s, "/projects?page=2", nil)
	browseHas(t, "projects page 2", body, `href="/project/proj26"`)
	browseLacks(t, "projects page 2", body, `href="/project/proj00"`)

	creator, reader := s.person(storage.RoleCreateProjects), s.person(storage.RoleReadOnly)
	browseHas(t, "projects for a creator", browseGet(t, s, "/projects", creator), `href="/projects/new"`)
	browseLacks(t, "projects for a reader", browseGet(t, s, "/projects", reader), `href="/projects/new"`)

	if code, _ := s.get("/projects/new", reader); code != http.StatusForbidden {
		t.Errorf("the new project form for a reader: %d", code)
	}
	res := s.do(httptest.NewRequest(http.MethodGet, "/projects/new", nil), nil)
	if res.StatusCode != http.StatusSeeOther || !strings.HasPrefix(res.Header.Get("Location"), "/login?next=") {
		t.Errorf("the new project form for nobody: %d %s", res.StatusCode, res.Header.Get("Location"))
	}
	form := url.Values{"name": {"sneaky"}, "repository_url": {"https://example.org/x.git"}, "enabled": {"1"}}
	if res, body := s.post("/projects/new", browseForm(form), reader); res.StatusCode != http.StatusForbidden || !strings.Contains(body, "may not") {
		t.Errorf("a reader's project form: %d\n%s", res.StatusCode, body)
	}
	noToken := url.Values{"name": {"sneaky"}, "repository_url": {"https://example.org/x.git"}, "csrf": {""}}
	if res, _ := s.post("/projects/new", browseForm(noToken), creator); res.StatusCode != http.StatusForbidden {
		t.Errorf("a form without its CSRF token: %d", res.StatusCode)
	}
	if _, err := s.DB.GetProjectByName(context.Background(), "sneaky"); err == nil {
		t.Errorf("a refused form made a project")
	}
}

var browseLocal = regexp.MustCompile(`^/`)

// TestProjectForms_CreateProjectThenJobset: a creator makes a project and a jobset
// through the forms and lands on their pages, which offer to edit them; a form with
// an error comes back with the API's message and what was typed.
func TestProjectForms_CreateProjectThenJobset(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	creator := s.person(storage.RoleCreateProjects)
	browseHas(t, "new project form", browseGet(t, s, "/projects/new", creator), `action="/projects/new"`, `name="csrf"`, `name="repository_url"`)

	bad := url.Values{"name": {"no spaces"}, "display_name": {"Kept Display"}, "repository_url": {"https://example.org/a.git"}}
	res, body := s.post("/projects/new", browseForm(bad), creator)
	if res.StatusCode != http.StatusUnprocessableEntity {
		t.Fatalf("a bad name: %d\n%s", res.StatusCode, body)
	}
	browseHas(t, "the form back", body, `role="alert"`, "name", `value="no spaces"`, `value="Kept Display"`, `value="https://example.org/a.git"`)

	good := url.Values{"name": {"hello"}, "display_name": {"Hello World"}, "description": {"says hello"},
		"repository_url": {"https://example.org/hello.git"}, "enabled": {"1"}}
	res, body = s.post("/projects/new", browseForm(good), creator)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/project/hello" {
		t.Fatalf("create project: %d %s\n%s", res.StatusCode, res.Header.Get("Location"), body)
	}
	body = browseGet(t, s, "/project/hello", creator)
	browseHas(t, "project page", body, "<h1>Hello World</h1>", "says hello", "https://example.org/hello.git",
		`href="/project/hello/edit"`, `href="/project/hello/jobsets/new"`, "No jobsets yet.")
	if res, _ = s.post("/projects/new", browseForm(good), creator); res.StatusCode != http.StatusConflict {
		t.Errorf("a second project of the same name: %d", res.StatusCode)
	}

	browseHas(t, "new jobset form", browseGet(t, s, "/project/hello/jobsets/new", creator), `name="nix_expression" value="hydraJobs"`,
		`name="check_interval" value="60"`, `name="input_name"`)
	js := url.Values{"name": {"main"}, "description": {"the main branch"}, "branch": {"main"}, "nix_expression": {"release.nix"},
		"check_interval": {"0"}, "scheduling_shares": {"100"}, "keep_nr": {"3"}, "state": {"enabled"},
		"input_name": {"nixpkgs", ""}, "input_type": {"git", "git"}, "input_value": {"https://example.org/nixpkgs.git main", ""}}
	res, body = s.post("/project/hello/jobsets/new", browseForm(js), creator)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/jobset/hello/main" {
		t.Fatalf("create jobset: %d %s\n%s", res.StatusCode, res.Header.Get("Location"), body)
	}
	body = browseGet(t, s, "/jobset/hello/main", creator)
	browseHas(t, "jobset page", body, "the main branch", "release.nix", "Input nixpkgs", "git https://example.org/nixpkgs.git main",
		`href="/jobset/hello/main/edit"`, "Not evaluated yet.")
	browseLacks(t, "jobset page for a creator", body, `id="trigger"`) // create-projects may not trigger
	j, err := s.DB.GetJobsetByName(context.Background(), browseID(t, s, `SELECT id FROM projects WHERE name = 'hello'`), "main")
	if err != nil || j.FlakeMode || j.CheckInterval != 0 || len(j.Inputs) != 1 {
		t.Fatalf("the jobset made: %+v, %v", j, err)
	}
	body = browseGet(t, s, "/project/hello", creator)
	browseHas(t, "project page with a jobset", body, `href="/jobset/hello/main"`, "never evaluated")

	// A number that is not one comes back with the rest of what was typed.
	js.Set("name", "second")
	js.Set("keep_nr", "three")
	res, body = s.post("/project/hello/jobsets/new", browseForm(js), creator)
	if res.StatusCode != http.StatusUnprocessableEntity {
		t.Fatalf("keep_nr three: %d\n%s", res.StatusCode, body)
	}
	browseHas(t, "jobset form back", body, "keep_nr", `value="three"`, `value="second"`, `value="https://example.org/nixpkgs.git main"`)
}

// TestProjectEdit_OnlyTheOwnerOrAnAdmin: another creator sees no edit controls on a
// project that is not theirs and is refused when sending the forms anyway; the owner
// changes the project and its jobset, and an admin may too.
func TestProjectEdit_OnlyTheOwnerOrAnAdmin(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	owner, other, admin := s.person(storage.RoleCreateProjects), s.person(storage.RoleCreateProjects), s.person(storage.RoleAdmin)
	p := browseProject(t, s, "mine", owner)
	browseJobset(t, s, p, "main")

	for _, path := range []string{"/project/mine", "/jobset/mine/main"} {
		body := browseGet(t, s, path, other)
		browseLacks(t, path+" for another creator", body, "/edit", "/jobsets/new")
		browseHas(t, path+" for the owner", browseGet(t, s, path, owner), "/edit")
		browseHas(t, path+" for an admin", browseGet(t, s, path, admin), "/edit")
	}
	for _, path := range []string{"/project/mine/edit", "/project/mine/jobsets/new", "/jobset/mine/main/edit"} {
		if code, _ := s.get(path, other); code != http.StatusForbidden {
			t.Errorf("GET %s by another creator: %d", path, code)
		}
	}
	edit := url.Values{"name": {"mine"}, "display_name": {"Stolen"}, "repository_url": {"https://example.org/r.git"}, "enabled": {"1"}}
	res, body := s.post("/project/mine/edit", browseForm(edit), other)
	if res.StatusCode != http.StatusForbidden || !strings.Contains(body, "belongs to someone else") {
		t.Errorf("another creator's edit: %d\n%s", res.StatusCode, body)
	}
	jsEdit := url.Values{"name": {"main"}, "nix_expression": {"hydraJobs"}, "flake_mode": {"1"}, "check_interval": {"30"},
		"scheduling_shares": {"100"}, "keep_nr": {"3"}, "state": {"enabled"}}
	if res, _ := s.post("/jobset/mine/main/edit", browseForm(jsEdit), other); res.StatusCode != http.StatusForbidden {
		t.Errorf("another creator's jobset edit: %d", res.StatusCode)
	}
	if res, _ := s.post("/project/mine/jobsets/new", url.Values{"name": {"x"}, "nix_expression": {"hydraJobs"},
		"check_interval": {"60"}, "scheduling_shares": {"100"}, "keep_nr": {"3"}, "state": {"enabled"}}, other); res.StatusCode != http.StatusForbidden {
		t.Errorf("another creator's new jobset: %d", res.StatusCode)
	}

	browseHas(t, "edit form", browseGet(t, s, "/project/mine/edit", owner), `value="mine"`, `value="https://example.org/r.git"`, "Leave empty to keep")
	edit.Set("display_name", "My Own")
	if res, body := s.post("/project/mine/edit", browseForm(edit), owner); res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/project/mine" {
		t.Fatalf("the owner's edit: %d\n%s", res.StatusCode, body)
	}
	browseHas(t, "edited project", browseGet(t, s, "/project/mine", nil), "<h1>My Own</h1>")
	browseHas(t, "jobset edit form", browseGet(t, s, "/jobset/mine/main/edit", owner), `value="hydraJobs"`, `name="flake_mode" value="1" checked`)
	if res, body := s.post("/jobset/mine/main/edit", browseForm(jsEdit), owner); res.StatusCode != http.StatusSeeOther || !browseLocal.MatchString(res.Header.Get("Location")) {
		t.Fatalf("the owner's jobset edit: %d\n%s", res.StatusCode, body)
	}
	browseHas(t, "edited jobset", browseGet(t, s, "/jobset/mine/main", nil), "checked every 30 s")
	edit.Set("display_name", "Admin Was Here")
	if res, _ := s.post("/project/mine/edit", browseForm(edit), admin); res.StatusCode != http.StatusSeeOther {
		t.Errorf("an admin's edit: %d", res.StatusCode)
	}
	edit.Set("csrf", "")
	if res, _ := s.post("/project/mine/edit", browseForm(edit), owner); res.StatusCode != http.StatusForbidden {
		t.Errorf("an edit without its CSRF token: %d", res.StatusCode)
	}
}

// browseSeed gives a jobset nEvals finished evaluations of nJobs jobs each (job000,
// job001, ...), a minute apart, with generate_series: job i of evaluation e failed
// when (i + e) % 7 == 0, else succeeded, after i % 60 seconds.
func browseSeed(ctx context.Context, db *storage.DB, jobset int64, nEvals, nJobs int) error {
	_, err := db.Pool().Exec(ctx, `INSERT INTO evaluations (jobset_id, status, commit, nr_jobs, nr_new_builds, created_at, started_at, finished_at)
		SELECT $1, 'succeeded', md5(g::text), $3, $3, now() - make_interval(mins => $2 - g), now() - make_interval(mins => $2 - g),
			now() - make_interval(mins => $2 - g) + interval '5 seconds' FROM generate_series(1, $2) g`, jobset, nEvals, nJobs)
	if err != nil {
		return fmt.Errorf("seed evaluations: %w", err)
	}
	_, err = db.Pool().Exec(ctx, `INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, status, status_code,
			created_at, started_at, finished_at)
		SELECT e.id, $1, 'job' || lpad(i::text, 3, '0'), '/nix/store/' || md5(e.id || '-' || i) || '-job' || i || '.drv',
			'x86_64-linux', CASE WHEN (i + e.id) % 7 = 0 THEN 'failed' ELSE 'succeeded' END,
			CASE WHEN (i + e.id) % 7 = 0 THEN 1 ELSE 0 END,
			e.created_at, e.created_at, e.created_at + make_interval(secs => i % 60)
		FROM evaluations e CROSS JOIN generate_series(0, $2 - 1) i WHERE e.jobset_id = $1 ORDER BY e.id, i`, jobset, nJobs)
	if err != nil {
		return fmt.Errorf("seed builds: %w", err)
	}
	return nil
}

// TestJobsetPage_EvaluationsGridAndErrors: the jobset page lists its evaluations with
// their counts, 20 a page; shows its jobs (50 a page) against its last 10
// evaluations, each cell the build's status linking to it; and shows the latest
// evaluation's errors. The project page shows the jobset's latest evaluation and its
// last check error.
func TestJobsetPage_EvaluationsGridAndErrors(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	ctx := context.Background()
	p := browseProject(t, s, "big", nil)
	js := browseJobset(t, s, p, "main")
	if err := browseSeed(ctx, s.DB, js, 25, 55); err != nil {
		t.Fatal(err)
	}
	var evals []int64
	rows, _ := s.DB.Pool().Query(ctx, `SELECT id FROM evaluations WHERE jobset_id = $1 ORDER BY id DESC`, js)
	for rows.Next() {
		var id int64
		_ = rows.Scan(&id)
		evals = append(evals, id)
	}
	latest := evals[0]
	browseExec(t, s, `INSERT INTO evaluation_errors (evaluation_id, attr, message) VALUES ($1, 'broken.attr', 'error: <undefined> variable')`, latest)
	cell := func(ev int64, job string) (int64, string) {
		var id int64
		var st string
		if err := s.DB.Pool().QueryRow(ctx, `SELECT id, status FROM builds WHERE evaluation_id = $1 AND job = $2`, ev, job).Scan(&id, &st); err != nil {
			t.Fatal(err)
		}
		return id, st
	}

	body := browseGet(t, s, "/jobset/big/main", nil)
	var succeeded, failed int
	for i := range 55 {
		if (i+int(latest))%7 == 0 {
			failed++
		} else {
			succeeded++
		}
	}
	browseHas(t, "jobset page", body, "<h1>big:main</h1>",
		fmt.Sprintf(`<td class="nw"><a href="/eval/%d">%d</a></td>`, latest, latest),
		fmt.Sprintf(`title="succeeded">%d</span> <span class="n bad" title="failed">%d</span>`, succeeded, failed),
		"page 1 of 2 (25)", `href="/jobset/big/main?page=2"`, // evaluations
		fmt.Sprintf(`<th><a href="/eval/%d" title="evaluation %d, succeeded`, evals[9], evals[9]),
		`href="/job/big/main/job000"`, `href="/job/big/main/job049"`, "page 1 of 2 (55)", `href="/jobset/big/main?jobs=2#jobs"`,
		"Errors of evaluation", "broken.attr", "error: &lt;undefined&gt; variable")
	browseLacks(t, "jobset page", body, fmt.Sprintf(`<th><a href="/eval/%d"`, evals[10]), `href="/job/big/main/job050"`,
		fmt.Sprintf(`<td class="nw"><a href="/eval/%d">%d</a></td>`, evals[20], evals[20]), `id="trigger"`, "/edit")
	for _, c := range []struct {
		ev  int64
		job string
	}{{latest, "job000"}, {evals[9], "job001"}, {evals[3], "job002"}} {
		id, st := cell(c.ev, c.job)
		class := map[string]string{"succeeded": "ok", "failed": "bad"}[st]
		browseHas(t, "grid cell", body, fmt.Sprintf(`<a class="cell %s" href="/build/%d" title="build %d: %s">`, class, id, id, st))
	}

	body = browseGet(t, s, "/jobset/big/main?page=2&jobs=2", nil)
	browseHas(t, "jobset second pages", body, fmt.Sprintf(`<td class="nw"><a href="/eval/%d">%d</a></td>`, evals[24], evals[24]),
		`href="/job/big/main/job050"`, `href="/job/big/main/job054"`)
	browseLacks(t, "jobset second pages", body, `href="/job/big/main/job049"`, fmt.Sprintf(`<td class="nw"><a href="/eval/%d">%d</a></td>`, latest, latest))

	// A jobset whose fetch fails and whose one evaluation failed.
	broken := browseJobset(t, s, p, "broken")
	browseExec(t, s, `UPDATE jobsets SET last_check_error = 'git fetch: repository not found', last_checked_at = now() WHERE id = $1`, broken)
	browseExec(t, s, `INSERT INTO evaluations (jobset_id, status, error, finished_at) VALUES ($1, 'failed', 'nix-eval-jobs: out of memory', now())`, broken)
	body = browseGet(t, s, "/jobset/big/broken", nil)
	browseHas(t, "broken jobset", body, "git fetch: repository not found", `<pre class="eval-error">nix-eval-jobs: out of memory</pre>`,
		"No jobs in the latest evaluations.")
	body = browseGet(t, s, "/project/big", nil)
	browseHas(t, "project page", body, `href="/jobset/big/broken"`, `<p class="check-error">git fetch: repository not found</p>`,
		fmt.Sprintf(`<a href="/eval/%d"><span class="status ok">succeeded</span></a>`, latest),
		fmt.Sprintf(`title="succeeded">%d</span>`, succeeded), `<span class="status bad">failed</span>`)
	if code, _ := s.get("/jobset/big/nope", nil); code != http.StatusNotFound {
		t.Errorf("a jobset that does not exist: %d", code)
	}
}

// TestJobsetTrigger_OnlyForThoseAllowed: the trigger button is shown to who may
// evaluate jobsets and requests an evaluation; a read-only person sees none and is
// refused when posting anyway, and so is a form without its CSRF token.
func TestJobsetTrigger_OnlyForThoseAllowed(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	js := browseJobset(t, s, browseProject(t, s, "trig", nil), "main")
	requested := func() bool {
		var at *string
		if err := s.DB.Pool().QueryRow(context.Background(), `SELECT trigger_requested_at::text FROM jobsets WHERE id = $1`, js).Scan(&at); err != nil {
			t.Fatal(err)
		}
		return at != nil
	}
	reader, evaluator := s.person(storage.RoleReadOnly), s.person(storage.RoleEvalJobset)
	browseLacks(t, "jobset for a reader", browseGet(t, s, "/jobset/trig/main", reader), `id="trigger"`)
	if res, body := s.post("/jobset/trig/main/trigger", nil, reader); res.StatusCode != http.StatusForbidden || !strings.Contains(body, "may not") {
		t.Errorf("a reader's trigger: %d\n%s", res.StatusCode, body)
	}
	if res, _ := s.post("/jobset/trig/main/trigger", url.Values{"csrf": {""}}, evaluator); res.StatusCode != http.StatusForbidden {
		t.Errorf("a trigger without its CSRF token: %d", res.StatusCode)
	}
	if res := s.do(httptest.NewRequest(http.MethodPost, "/jobset/trig/main/trigger", nil), nil); res.StatusCode != http.StatusSeeOther ||
		!strings.HasPrefix(res.Header.Get("Location"), "/login") {
		t.Errorf("a trigger by nobody: %d %s", res.StatusCode, res.Header.Get("Location"))
	}
	if requested() {
		t.Fatal("a refused trigger requested an evaluation")
	}
	browseHas(t, "jobset for an evaluator", browseGet(t, s, "/jobset/trig/main", evaluator),
		`<form method="post" action="/jobset/trig/main/trigger" class="inline"><input type="hidden" name="csrf" value="`+evaluator.CSRF+`">`,
		`id="trigger"`)
	res, body := s.post("/jobset/trig/main/trigger", nil, evaluator)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/jobset/trig/main?triggered=requested" {
		t.Fatalf("trigger: %d %s\n%s", res.StatusCode, res.Header.Get("Location"), body)
	}
	if !requested() {
		t.Fatal("the trigger requested no evaluation")
	}
	browseHas(t, "after the trigger", browseGet(t, s, "/jobset/trig/main?triggered=requested", evaluator), "An evaluation was requested")
	browseHas(t, "after a trigger that found nothing new", browseGet(t, s, "/jobset/trig/main?triggered=unchanged", evaluator),
		"Nothing changed since the last evaluation")
}

// browseJobFixture is a job "hello" with 30 builds, newest first: the newest is
// queued, then failed, then succeeded ones (every fifth failed); the finished ones
// took 10 s more each and those after the fifth have an output in the cache.
func browseJobFixture(t *testing.T, s *site) (js int64, ids []int64) {
	t.Helper()
	js = browseJobset(t, s, browseProject(t, s, "jobs", nil), "main")
	for i := range 30 {
		ev := browseID(t, s, `INSERT INTO evaluations (jobset_id, status) VALUES ($1, 'succeeded') RETURNING id`, js)
		status := "succeeded"
		switch {
		case i == 29:
			status = "queued"
		case i == 28 || i%5 == 4:
			status = "failed"
		}
		id := browseID(t, s, `INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, status, started_at, finished_at)
			VALUES ($1, $2, 'hello', $5, 'x86_64-linux', $3,
				CASE WHEN $3 <> 'queued' THEN now() - interval '1 day' END,
				CASE WHEN $3 <> 'queued' THEN now() - interval '1 day' + make_interval(secs => 10 * ($4::int + 1)) END) RETURNING id`,
			ev, js, status, i, fmt.Sprintf("/nix/store/%d-hello.drv", ev))
		if i > 5 && status != "queued" {
			path := fmt.Sprintf("/nix/store/%032d-hello", i)
			browseExec(t, s, `INSERT INTO build_outputs (build_id, name, path) VALUES ($1, 'out', $2)`, id, path)
			browseExec(t, s, `INSERT INTO narinfos (hash_part, store_path, url, compression, file_hash, file_size, nar_hash, nar_size)
				VALUES ($1, $2, 'nar/x.nar', 'none', 'sha256:x', 1, 'sha256:x', $3)`, fmt.Sprintf("%032d", i), path, 1000*(i+1))
		}
		ids = append([]int64{id}, ids...)
	}
	return js, ids
}

// TestJobPage_HistoryChartsLatestAndBadge: the job page lists the job's builds, 25 a
// page, and charts the durations and output sizes of its finished builds; latest and
// latest-finished redirect to the newest succeeded and finished build (404 when
// there is none); the badge says passing, failing or unknown.
func TestJobPage_HistoryChartsLatestAndBadge(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	js, ids := browseJobFixture(t, s)
	body := browseGet(t, s, "/job/jobs/main/hello", nil)
	browseHas(t, "job page", body, "<h1>Job jobs:main:hello</h1>",
		fmt.Sprintf(`<td class="nw"><a href="/build/%d">%d</a></td>`, ids[0], ids[0]), "page 1 of 2 (30)", `href="/job/jobs/main/hello?page=2"`,
		"Build duration", "Output size", `<svg class="chart"`, `<polyline class="line" points="`,
		fmt.Sprintf(`<a href="/build/%d" tabindex="-1"><circle class="ok"`, ids[1+1]), // the newest succeeded one
		fmt.Sprintf("build %d (failed): 4m50s", ids[1]), fmt.Sprintf("build %d (succeeded): 27.3 KiB", ids[2]),
		`href="/job/jobs/main/hello/latest"`, `href="/job/jobs/main/hello/latest-finished"`, `src="/job/jobs/main/hello/badge.svg"`)
	browseLacks(t, "job page", body, fmt.Sprintf(`<td class="nw"><a href="/build/%d">%d</a></td>`, ids[29], ids[29]), `id="star"`)
	if n := strings.Count(body, "<circle"); n != 29+23 { // finished: 29; with outputs in the cache: 23
		t.Errorf("the charts have %d points", n)
	}
	body = browseGet(t, s, "/job/jobs/main/hello?page=2", nil)
	browseHas(t, "job page 2", body, fmt.Sprintf(`<td class="nw"><a href="/build/%d">%d</a></td>`, ids[29], ids[29]))

	redirect := func(path string) (int, string) {
		res := s.do(httptest.NewRequest(http.MethodGet, path, nil), nil)
		return res.StatusCode, res.Header.Get("Location")
	}
	if code, loc := redirect("/job/jobs/main/hello/latest"); code != http.StatusFound || loc != fmt.Sprintf("/build/%d", ids[2]) {
		t.Errorf("latest: %d %s, want /build/%d", code, loc, ids[2])
	}
	if code, loc := redirect("/job/jobs/main/hello/latest-finished"); code != http.StatusFound || loc != fmt.Sprintf("/build/%d", ids[1]) {
		t.Errorf("latest-finished: %d %s, want /build/%d", code, loc, ids[1])
	}
	badge := func(path string) (int, string) {
		res := s.do(httptest.NewRequest(http.MethodGet, path, nil), nil)
		b, _ := io.ReadAll(res.Body)
		if ct, cc := res.Header.Get("Content-Type"), res.Header.Get("Cache-Control"); ct != "image/svg+xml" || cc != "no-cache" {
			t.Errorf("%s: Content-Type %q, Cache-Control %q", path, ct, cc)
		}
		return res.StatusCode, string(b)
	}
	if code, b := badge("/job/jobs/main/hello/badge.svg"); code != http.StatusOK || !strings.Contains(b, ">failing</text>") || !strings.HasPrefix(b, "<svg") {
		t.Errorf("badge of a failing job: %d %s", code, b)
	}
	browseExec(t, s, `UPDATE builds SET status = 'succeeded' WHERE id = $1`, ids[1])
	if code, b := badge("/job/jobs/main/hello/badge.svg"); code != http.StatusOK || !strings.Contains(b, ">passing</text>") {
		t.Errorf("badge of a passing job: %d %s", code, b)
	}

	// A job with one queued build: a page, no latest, an unknown badge.
	browseExec(t, s, `INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system)
		SELECT max(id), $1, 'fresh', '/nix/store/fresh.drv', 'x86_64-linux' FROM evaluations`, js)
	browseHas(t, "a job not built yet", browseGet(t, s, "/job/jobs/main/fresh", nil), "No finished build with a known value yet.")
	for _, path := range []string{"/job/jobs/main/fresh/latest", "/job/jobs/main/fresh/latest-finished", "/job/jobs/main/nope",
		"/job/jobs/main/nope/latest", "/job/jobs/nope/hello"} {
		if code, _ := s.get(path, nil); code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", path, code)
		}
	}
	if code, b := badge("/job/jobs/main/fresh/badge.svg"); code != http.StatusOK || !strings.Contains(b, ">unknown</text>") {
		t.Errorf("badge of a job never finished: %d %s", code, b)
	}
	if code, b := badge("/job/jobs/nope/fresh/badge.svg"); code != http.StatusNotFound || !strings.Contains(b, ">unknown</text>") {
		t.Errorf("badge of no jobset: %d %s", code, b)
	}

	// A name with a slash and a space works through its escaped link.
	browseExec(t, s, `INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, status, finished_at)
		SELECT max(id), $1, 'odd/name x', '/nix/store/odd.drv', 'x86_64-linux', 'succeeded', now() FROM evaluations`, js)
	browseHas(t, "an odd job name", browseGet(t, s, "/job/jobs/main/odd%2Fname%20x", nil), "<h1>Job jobs:main:odd/name x</h1>",
		`href="/job/jobs/main/odd%2Fname%20x/latest"`)
	if code, loc := redirect("/job/jobs/main/odd%2Fname%20x/latest"); code != http.StatusFound || loc == "" {
		t.Errorf("latest of an odd job name: %d %s", code, loc)
	}
}

// TestJobPage_StarForPeopleWithAccounts: the star button is for people signed in
// with an account: starring puts the job among their starred jobs on the home page
// with its latest build, unstarring takes it off; a star form without its CSRF
// token is refused; someone signed in with an API key has no button.
func TestJobPage_StarForPeopleWithAccounts(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	_, ids := browseJobFixture(t, s)
	browseLacks(t, "job page for a key", browseGet(t, s, "/job/jobs/main/hello", s.person(storage.RoleAdmin)), `id="star"`)
	me := s.signedIn(storage.RoleReadOnly)
	code, body := s.getAs("/job/jobs/main/hello", me)
	if code != http.StatusOK {
		t.Fatalf("job page: %d", code)
	}
	browseHas(t, "job page for a person", body,
		`<form method="post" action="/job/jobs/main/hello/star" class="inline">`, `name="star" value="1"`, `aria-pressed="false" id="star">☆ Star`)
	if res, _ := s.postAs("/job/jobs/main/hello/star", url.Values{"star": {"1"}, "csrf": {""}}, me); res.StatusCode != http.StatusForbidden {
		t.Errorf("a star form without its CSRF token: %d", res.StatusCode)
	}
	_, body = s.getAs("/", me)
	browseHas(t, "home before starring", body, "You have starred no job yet")

	res, body := s.postAs("/job/jobs/main/hello/star", url.Values{"star": {"1"}}, me)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/job/jobs/main/hello" {
		t.Fatalf("star: %d %s\n%s", res.StatusCode, res.Header.Get("Location"), body)
	}
	_, body = s.getAs("/job/jobs/main/hello", me)
	browseHas(t, "job page, starred", body, `name="star" value="0"`, `aria-pressed="true" id="star">★ Starred`)
	_, body = s.getAs("/", me)
	browseHas(t, "home, starred", body, "Starred jobs", `<a href="/job/jobs/main/hello">jobs:main:hello</a>`,
		fmt.Sprintf(`href="/build/%d" data-build="%d"><span class="status queued">queued</span>`, ids[0], ids[0]))

	if res, body = s.postAs("/job/jobs/main/hello/star", url.Values{"star": {"0"}}, me); res.StatusCode != http.StatusSeeOther {
		t.Fatalf("unstar: %d\n%s", res.StatusCode, body)
	}
	_, body = s.getAs("/", me)
	browseHas(t, "home, unstarred", body, "You have starred no job yet")
}

// TestProjectForms_PeopleOwnWhatTheyCreate: a person with an account and the
// create-projects role makes a project and a jobset through the forms and may edit
// them; another such person sees no controls and is refused; the owner is shown.
func TestProjectForms_PeopleOwnWhatTheyCreate(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	owner, other := s.signedIn(storage.RoleCreateProjects), s.signedIn(storage.RoleCreateProjects)
	res, body := s.postAs("/projects/new", url.Values{"name": {"theirs"}, "repository_url": {"https://example.org/t.git"}, "enabled": {"1"}}, owner)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/project/theirs" {
		t.Fatalf("create project: %d %s\n%s", res.StatusCode, res.Header.Get("Location"), body)
	}
	res, body = s.postAs("/project/theirs/jobsets/new", url.Values{"name": {"main"}, "nix_expression": {"hydraJobs"}, "flake_mode": {"1"},
		"check_interval": {"60"}, "scheduling_shares": {"100"}, "keep_nr": {"3"}, "state": {"enabled"}}, owner)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/jobset/theirs/main" {
		t.Fatalf("create jobset: %d %s\n%s", res.StatusCode, res.Header.Get("Location"), body)
	}
	_, body = s.getAs("/project/theirs", owner)
	browseHas(t, "project for its owner", body, `href="/project/theirs/edit"`, `href="/project/theirs/jobsets/new"`, "<dt>Owner</dt><dd>create-projects-user-")
	_, body = s.getAs("/project/theirs", other)
	browseLacks(t, "project for another person", body, `href="/project/theirs/edit"`, `href="/project/theirs/jobsets/new"`)
	if res, body = s.postAs("/project/theirs/edit", url.Values{"name": {"theirs"}, "display_name": {"Mine now"},
		"repository_url": {"https://example.org/t.git"}, "enabled": {"1"}}, other); res.StatusCode != http.StatusForbidden {
		t.Errorf("another person's edit: %d\n%s", res.StatusCode, body)
	}
	if res, body = s.postAs("/project/theirs/edit", url.Values{"name": {"theirs"}, "display_name": {"Still Theirs"},
		"repository_url": {"https://example.org/t.git"}, "enabled": {"1"}}, owner); res.StatusCode != http.StatusSeeOther {
		t.Errorf("the owner's edit: %d\n%s", res.StatusCode, body)
	}
	_, body = s.getAs("/projects", owner)
	browseHas(t, "projects", body, `href="/project/theirs"`, "Still Theirs")
}
