package dashboard_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/storage"
)

// ebFixture writes evaluations, builds and steps into a site's database by SQL.
type ebFixture struct {
	t        *testing.T
	s        *site
	project  string
	jobset   string
	jobsetID int64
	n        atomic.Int64
}

func newEBFixture(t *testing.T, s *site, project string) *ebFixture {
	t.Helper()
	f := &ebFixture{t: t, s: s, project: project, jobset: "main"}
	f.jobsetID = f.newJobset(project, "main")
	return f
}

func (f *ebFixture) exec(sql string, args ...any) {
	f.t.Helper()
	if _, err := f.s.DB.Pool().Exec(context.Background(), sql, args...); err != nil {
		f.t.Fatalf("%s: %v", sql, err)
	}
}

func (f *ebFixture) id(sql string, args ...any) int64 {
	f.t.Helper()
	var id int64
	if err := f.s.DB.Pool().QueryRow(context.Background(), sql, args...).Scan(&id); err != nil {
		f.t.Fatalf("%s: %v", sql, err)
	}
	return id
}

// newJobset makes a project (when new) and a jobset in it.
func (f *ebFixture) newJobset(project, name string) int64 {
	return f.id(`WITH p AS (INSERT INTO projects (name, repository_url) VALUES ($1, 'https://example.org/x.git')
			ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id)
		INSERT INTO jobsets (project_id, name) SELECT id, $2 FROM p RETURNING id`, project, name)
}

// eval makes a finished evaluation of jobset.
func (f *ebFixture) eval(jobset int64, status string) int64 {
	return f.id(`INSERT INTO evaluations (jobset_id, status, commit, trigger, started_at, finished_at, checkout_seconds, eval_seconds)
		VALUES ($1, $2, 'c0ffee0123456789abcdef0123456789abcdef01', 'api', now() - interval '2 minutes', now() - interval '1 minute', 1.5, 12.5)
		RETURNING id`, jobset, status)
}

// drv is a fresh derivation path.
func (f *ebFixture) drv(name string) string {
	return fmt.Sprintf("/nix/store/%032d-%s.drv", f.n.Add(1), name)
}

// step makes a step with status; started says whether it ran (and so has a log).
func (f *ebFixture) step(name, status string, started bool) int64 {
	return f.id(`INSERT INTO steps (drv_path, system, status, started_at, finished_at)
		VALUES ($1, 'x86_64-linux', $2, CASE WHEN $3 THEN now() - interval '30 seconds' END,
			CASE WHEN $2 NOT IN ('queued', 'running') THEN now() END) RETURNING id`, f.drv(name), status, started)
}

// build makes a build of job in evaluation eval with status, on step (0: none).
func (f *ebFixture) build(eval int64, job, status string, step int64) int64 {
	return f.id(`INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, status, step_id, started_at, finished_at)
		SELECT $1, e.jobset_id, $2, coalesce((SELECT drv_path FROM steps WHERE id = $4), $5), 'x86_64-linux', $3, nullif($4, 0),
			CASE WHEN $3 <> 'queued' THEN now() - interval '40 seconds' END,
			CASE WHEN $3 NOT IN ('queued', 'running') THEN now() - interval '10 seconds' END
		FROM evaluations e WHERE e.id = $1 RETURNING id`, eval, job, status, step, f.drv(job))
}

// ebPair is two evaluations of one jobset with a build of every kind of change
// between them, by job, and their build ids.
type ebPair struct {
	prev, cur int64
	builds    map[string]int64 // job → this evaluation's build
	prevB     map[string]int64 // job → the previous evaluation's build
}

// ebJobs: job → (status in the previous evaluation, status in this one); "" for none.
var ebJobs = map[string][2]string{
	"nf":       {"succeeded", "failed"},
	"nf-unfin": {"running", "failed"},
	"ns":       {"failed", "succeeded"},
	"sf":       {"failed", "dependency_failed"},
	"ss":       {"succeeded", "succeeded"},
	"new-a":    {"", "succeeded"},
	"new-b":    {"", "failed"},
	"gone":     {"succeeded", ""},
	"q":        {"succeeded", "queued"},
	"r":        {"failed", "running"},
	"ab":       {"succeeded", "aborted"},
	"tm":       {"failed", "timed_out"},
	"cn":       {"", "cancelled"},
}

// ebTabs is where each job of ebJobs belongs.
var ebTabs = map[string][]string{
	storage.TabNewlyFailing:    {"nf", "nf-unfin"},
	storage.TabNewlySucceeding: {"ns"},
	storage.TabStillFailing:    {"sf"},
	storage.TabStillSucceeding: {"ss"},
	storage.TabNew:             {"new-a", "new-b"},
	storage.TabRemoved:         {"gone"},
	storage.TabQueued:          {"q", "r"},
	storage.TabAborted:         {"ab", "cn", "tm"},
}

func (f *ebFixture) pair() ebPair {
	p := ebPair{prev: f.eval(f.jobsetID, "succeeded"), builds: map[string]int64{}, prevB: map[string]int64{}}
	// A failed evaluation between them has no builds: the comparison skips it.
	f.eval(f.jobsetID, "failed")
	p.cur = f.eval(f.jobsetID, "succeeded")
	for job, st := range ebJobs {
		if st[0] != "" {
			p.prevB[job] = f.build(p.prev, job, st[0], 0)
		}
		if st[1] != "" {
			p.builds[job] = f.build(p.cur, job, st[1], 0)
		}
	}
	f.exec(`INSERT INTO evaluation_errors (evaluation_id, attr, message) VALUES ($1, 'broken', 'error: attribute ''x'' missing'),
		($1, 'broken-too', 'error: <b>assertion</b> failed')`, p.cur)
	f.exec(`INSERT INTO evaluation_inputs (evaluation_id, name, type, value, revision) VALUES
		($1, 'src', 'git', 'https://example.org/src.git', 'abcdef0123456789abcdef0123456789abcdef01'), ($1, 'debug', 'boolean', 'true', '')`, p.cur)
	return p
}

// rowsOf is the job names listed in the comparison table of an eval page.
var ebRowJob = regexp.MustCompile(`<td><a href="/job/[^"]*">([^<]*)</a></td>`)

func rowsOf(body string) []string {
	var out []string
	for _, m := range ebRowJob.FindAllStringSubmatch(body, -1) {
		out = append(out, m[1])
	}
	return out
}

func countOf(body, tab string) string {
	m := regexp.MustCompile(`id="tab-` + tab + `"[^>]*>[^<]*<span class="count">(\d+)</span>`).FindStringSubmatch(body)
	if m == nil {
		return "(no tab)"
	}
	return m[1]
}

func TestEvalPage_TabsListTheRightBuilds(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	f := newEBFixture(t, s, "cmp")
	p := f.pair()
	// Another jobset's evaluation in between changes nothing.
	other := f.newJobset("cmp", "other")
	f.build(f.eval(other, "succeeded"), "nf", "succeeded", 0)

	code, body := s.get(fmt.Sprintf("/eval/%d", p.cur), nil)
	if code != http.StatusOK {
		t.Fatalf("eval page: %d\n%s", code, body)
	}
	for _, want := range []string{
		"Evaluation " + fmt.Sprint(p.cur) + " of cmp:main", `href="/jobset/cmp/main"`, `href="/project/cmp"`,
		`title="c0ffee0123456789abcdef0123456789abcdef01">c0ffee012345</code>`, "https://example.org/src.git", "abcdef012345",
		"Trigger</dt><dd>api", "1.5s", "12.5s", fmt.Sprintf(`href="/eval/%d">evaluation %d</a>`, p.prev, p.prev),
		`<time datetime=`, // timings through the time partial
	} {
		if !strings.Contains(body, want) {
			t.Errorf("eval page lacks %q", want)
		}
	}
	// Counts by status of this evaluation's builds.
	for _, want := range []string{`succeeded</span> 3`, `failed</span> 3`, `queued</span> 1`, `running</span> 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("eval page's counts by status lack %q", want)
		}
	}
	// Without ?tab the first tab with anything in it is shown: newly failing.
	if got := strings.Join(rowsOf(body), ","); got != "nf,nf-unfin" {
		t.Errorf("default tab lists %q", got)
	}
	for tab, jobs := range ebTabs {
		code, body := s.get(fmt.Sprintf("/eval/%d?tab=%s", p.cur, tab), nil)
		if code != http.StatusOK {
			t.Fatalf("tab %s: %d", tab, code)
		}
		if got, want := strings.Join(rowsOf(body), ","), strings.Join(jobs, ","); got != want {
			t.Errorf("tab %s lists %q, want %q", tab, got, want)
		}
		for other, js := range ebTabs {
			if c := countOf(body, other); c != fmt.Sprint(len(js)) {
				t.Errorf("on tab %s, tab %s counts %s, want %d", tab, other, c, len(js))
			}
		}
		if !strings.Contains(body, fmt.Sprintf(`id="tab-%s" aria-current="page"`, tab)) {
			t.Errorf("tab %s is not marked current", tab)
		}
		// Each row links this evaluation's build and the previous one's, with statuses.
		for _, job := range jobs {
			if id, ok := p.builds[job]; ok {
				if want := fmt.Sprintf(`<a href="/build/%d">%d</a> <span class="status %s">%s</span>`, id, id,
					statusClassOf(ebJobs[job][1]), ebJobs[job][1]); !strings.Contains(body, want) {
					t.Errorf("tab %s: no %q", tab, want)
				}
			}
			if id, ok := p.prevB[job]; ok {
				if want := fmt.Sprintf(`<a href="/build/%d">%d</a> <span class="status %s">%s</span>`, id, id,
					statusClassOf(ebJobs[job][0]), ebJobs[job][0]); !strings.Contains(body, want) {
					t.Errorf("tab %s: no previous build %q", tab, want)
				}
			}
		}
	}
	// Evaluation errors: attribute and message, the message as text.
	_, body = s.get(fmt.Sprintf("/eval/%d?tab=errors", p.cur), nil)
	if countOf(body, "errors") != "2" || !strings.Contains(body, "<code>broken</code>") ||
		!strings.Contains(body, "error: attribute &#39;x&#39; missing") || !strings.Contains(body, "&lt;b&gt;assertion&lt;/b&gt;") {
		t.Errorf("errors tab:\n%s", body)
	}
	// The filter narrows every tab and count; the tab links keep it.
	_, body = s.get(fmt.Sprintf("/eval/%d?tab=new&filter=%s", p.cur, url.QueryEscape("W-A")), nil)
	if got := strings.Join(rowsOf(body), ","); got != "new-a" || countOf(body, "new") != "1" || countOf(body, "newly-failing") != "0" ||
		countOf(body, "errors") != "0" || !strings.Contains(body, `href="/eval/`+fmt.Sprint(p.cur)+`?filter=W-A&amp;tab=aborted#compare"`) {
		t.Errorf("filter W-A on new: rows %q, counts new %s newly-failing %s errors %s", got, countOf(body, "new"),
			countOf(body, "newly-failing"), countOf(body, "errors"))
	}
	// LIKE wildcards are literal.
	if _, body = s.get(fmt.Sprintf("/eval/%d?tab=new&filter=%%25", p.cur), nil); len(rowsOf(body)) != 0 {
		t.Errorf("filter %% lists %q", rowsOf(body))
	}
	if code, _ := s.get(fmt.Sprintf("/eval/%d?tab=nonsense", p.cur), nil); code != http.StatusNotFound {
		t.Errorf("unknown tab: %d", code)
	}
	if code, _ := s.get("/eval/999999", nil); code != http.StatusNotFound {
		t.Errorf("unknown evaluation: %d", code)
	}
	// The first evaluation has nothing to compare with: everything is new.
	_, body = s.get(fmt.Sprintf("/eval/%d", p.prev), nil)
	if countOf(body, "new") != "9" || strings.Contains(body, "Compared with") {
		t.Errorf("first evaluation: new %s\n%s", countOf(body, "new"), body)
	}
}

func statusClassOf(s string) string {
	switch s {
	case "succeeded":
		return "ok"
	case "queued", "running", "cancelled":
		return s
	}
	return "bad"
}

func TestEvalPage_Pagination(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	f := newEBFixture(t, s, "many")
	prev, cur := f.eval(f.jobsetID, "succeeded"), f.eval(f.jobsetID, "succeeded")
	f.exec(`INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, status, finished_at)
		SELECT $1, $2, 'job' || lpad(i::text, 3, '0'), '/nix/store/p' || i || '.drv', 'x86_64-linux', 'succeeded', now()
		FROM generate_series(1, 120) i`, prev, f.jobsetID)
	f.exec(`INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, status, finished_at)
		SELECT $1, $2, 'job' || lpad(i::text, 3, '0'), '/nix/store/c' || i || '.drv', 'x86_64-linux', 'failed', now()
		FROM generate_series(1, 120) i`, cur, f.jobsetID)
	_, body := s.get(fmt.Sprintf("/eval/%d?tab=newly-failing", cur), nil)
	rows := rowsOf(body)
	if len(rows) != 50 || rows[0] != "job001" || rows[49] != "job050" || !strings.Contains(body, "page 1 of 3 (120)") {
		t.Fatalf("page 1: %d rows %v", len(rows), rows)
	}
	next := regexp.MustCompile(`<a href="([^"]*)" rel="next">`).FindStringSubmatch(body)
	if next == nil {
		t.Fatal("no link to the next page")
	}
	_, body = s.get(strings.ReplaceAll(next[1], "&amp;", "&"), nil)
	if rows := rowsOf(body); len(rows) != 50 || rows[0] != "job051" || !strings.Contains(body, "page 2 of 3") {
		t.Fatalf("page 2: %v", rows)
	}
	_, body = s.get(fmt.Sprintf("/eval/%d?tab=newly-failing&page=3&filter=job1", cur), nil)
	// job100..job120: 21 jobs, one page.
	if rows := rowsOf(body); len(rows) != 0 || countOf(body, "newly-failing") != "21" {
		t.Fatalf("page 3 of a filtered tab of one page: %v, count %s", rows, countOf(body, "newly-failing"))
	}
	_, body = s.get(fmt.Sprintf("/eval/%d?tab=newly-failing&filter=job1", cur), nil)
	if rows := rowsOf(body); len(rows) != 21 || strings.Contains(body, `rel="next"`) {
		t.Fatalf("filtered: %d rows", len(rows))
	}
}

// buildPage fetches /build/id as who and fails the test unless it answers 200.
func buildPage(t *testing.T, s *site, id int64, who *auth.Principal) string {
	t.Helper()
	code, body := s.get(fmt.Sprintf("/build/%d", id), who)
	if code != http.StatusOK {
		t.Fatalf("build %d: %d\n%s", id, code, body)
	}
	return body
}

// reasonOf is the text of the build page's reason row, tags removed.
func reasonOf(body string) string {
	m := regexp.MustCompile(`(?s)<dd id="build-reason" class="reason">(.*?)</dd>`).FindStringSubmatch(body)
	if m == nil {
		return ""
	}
	return html.UnescapeString(strings.Join(strings.Fields(regexp.MustCompile(`<[^>]*>`).ReplaceAllString(m[1], "")), " "))
}

// TestBuildPage_SaysWhy: the reason row of a build of each failed status, from its
// own step's attempts, error, exit code and limits.
func TestBuildPage_SaysWhy(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	f := newEBFixture(t, s, "why")
	ev := f.eval(f.jobsetID, "succeeded")
	cases := []struct {
		status string
		step   string // SET clause for its step
		want   string
	}{
		{"aborted", `attempts = 3, error = 'nix-store was killed by signal 9 (after 3 attempts)'`,
			"Aborted after 3 attempts: nix-store was killed by signal 9"},
		{"aborted", `attempts = 2, error = 'aborted: the agent was lost 2 times (max_attempts)'`,
			"Aborted after 2 attempts: the agent was lost 2 times (max_attempts)"},
		{"timed_out", `timeout_seconds = 90, error = 'building of ''x'' timed out after 90 seconds'`,
			"Timed out: the build ran longer than its timeout of 1m30s. building of 'x' timed out after 90 seconds"},
		{"timed_out", `max_silent_seconds = 3600, error = 'building of ''x'' timed out after 3600 seconds of silence'`,
			"Timed out: the build printed nothing for 1h0m0s (its max-silent time). building of 'x' timed out after 3600 seconds of silence"},
		// No timeout of its own: the coordinator's (queue.build_timeout, 10 h by default).
		{"timed_out", `error = 'building of ''x'' timed out after 36000 seconds'`,
			"Timed out: the build ran longer than its timeout of 10h0m0s. building of 'x' timed out after 36000 seconds"},
		{"failed_with_output", `exit_code = 1, error = 'tests failed'`, "The build failed (exit code 1) but produced its outputs. tests failed"},
		{"output_limit_exceeded", `error = 'the outputs are 3 GiB, over the limit of 2 GiB'`,
			"The outputs exceeded their size limit. the outputs are 3 GiB, over the limit of 2 GiB"},
		// The limit is the coordinator's logs.max_log_size (64 MiB by default).
		{"log_limit_exceeded", `error = 'the log exceeded the limit'`, "The log exceeded the limit of 64.0 MiB, so the build was stopped. the log exceeded the limit"},
		{"cancelled", `error = 'cancelled'`, "Cancelled: by someone, or because a build it waited for was cancelled."},
		{"unsupported_system", `error = 'no agent can build this system and feature set'`,
			"No agent can build x86_64-linux derivations (with the features this one requires). no agent can build this system and feature set"},
		{"failed", `exit_code = 100, error = 'builder for x failed with exit code 2'`,
			"The build failed (exit code 100). builder for x failed with exit code 2"},
		{"failed", `error = ''`, "The build failed."},
	}
	for i, c := range cases {
		st := f.step(c.status, c.status, true)
		f.exec(`UPDATE steps SET `+c.step+` WHERE id = $1`, st)
		id := f.build(ev, fmt.Sprintf("job%d", i), c.status, st)
		if r := reasonOf(buildPage(t, s, id, nil)); r != c.want {
			t.Errorf("%s build (%s): reason %q, want %q", c.status, c.step, r, c.want)
		}
	}
	if body := buildPage(t, s, f.build(ev, "fine", "succeeded", f.step("fine", "succeeded", true)), nil); strings.Contains(body, `id="build-reason"`) {
		t.Errorf("a succeeded build has a reason row")
	}
}

// TestBuildPage_LinksTheFailedDependency: a dependency-failed build links the build
// that failed (or, when it is no job's, the failed step) and shows its log, never an
// empty box; a cached failure links the build that failed; a build that never ran
// shows no log box.
func TestBuildPage_LinksTheFailedDependency(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	f := newEBFixture(t, s, "deps")
	ev := f.eval(f.jobsetID, "succeeded")

	// A dependency that is a job failed: the build points at it (propagated_from).
	depStep := f.step("dep", "failed", true)
	f.exec(`UPDATE steps SET error = 'builder for dep failed with exit code 2', exit_code = 100, log_size = 10 WHERE id = $1`, depStep)
	depBuild := f.build(ev, "dep", "failed", depStep)
	topStep := f.step("top", "dependency_failed", false)
	f.exec(`INSERT INTO step_edges (step_id, depends_on) VALUES ($1, $2)`, topStep, depStep)
	top := f.build(ev, "top", "dependency_failed", topStep)
	f.exec(`UPDATE builds SET propagated_from = $2 WHERE id = $1`, top, depBuild)

	// A dependency that is no job failed two levels down, and nothing points at it.
	leaf := f.step("leaf", "failed", true)
	f.exec(`UPDATE steps SET error = 'leaf broke' WHERE id = $1`, leaf)
	mid := f.step("mid", "dependency_failed", false)
	okDep := f.step("fine", "succeeded", true)
	upper := f.step("upper", "dependency_failed", false)
	f.exec(`INSERT INTO step_edges (step_id, depends_on) VALUES ($1, $2), ($2, $3), ($1, $4)`, upper, mid, leaf, okDep)
	deep := f.build(ev, "deep", "dependency_failed", upper)

	// A cached failure: the step failed in an earlier build.
	cfStep := f.step("cf", "failed", true)
	f.exec(`UPDATE steps SET error = 'it broke before' WHERE id = $1`, cfStep)
	cfFirst := f.build(f.eval(f.jobsetID, "succeeded"), "cf", "failed", cfStep)
	cached := f.build(ev, "cf", "cached_failure", cfStep)

	for id, want := range map[int64]string{
		top:      fmt.Sprintf("A dependency failed, so this build never ran: build %d (dep) failed builder for dep failed", depBuild),
		deep:     fmt.Sprintf("A dependency failed, so this build never ran: step %d /nix/store/", leaf),
		cached:   fmt.Sprintf("Cached failure: this derivation failed before; restart it to build it again. build %d (cf) failed it broke before", cfFirst),
		depBuild: "The build failed (exit code 100). builder for dep failed with exit code 2",
	} {
		if r := reasonOf(buildPage(t, s, id, nil)); !strings.HasPrefix(r, want) {
			t.Errorf("build %d: reason %q, want %q", id, r, want)
		}
	}
	body := buildPage(t, s, top, nil)
	if !strings.Contains(body, fmt.Sprintf(`<a id="build-culprit" href="/build/%d">`, depBuild)) {
		t.Errorf("dependency-failed build: no link to build %d", depBuild)
	}
	if !strings.Contains(body, fmt.Sprintf(`data-build="%d" data-step="%d"`, top, depStep)) ||
		!strings.Contains(body, fmt.Sprintf("Log of the failed step %d", depStep)) {
		t.Errorf("dependency-failed build: the log shown is not the failed dependency's\n%s", body)
	}
	body = buildPage(t, s, deep, nil)
	if !strings.Contains(body, fmt.Sprintf(`<a id="build-culprit" href="/build/%d?step=%d#log-head">`, deep, leaf)) ||
		!strings.Contains(body, fmt.Sprintf(`data-build="%d" data-step="%d"`, deep, leaf)) || !strings.Contains(body, "leaf broke") {
		t.Errorf("deep dependency-failed build: no link to step %d or not its log\n%s", leaf, body)
	}
	// The cached failure's log is the earlier attempt's: its own step's.
	body = buildPage(t, s, cached, nil)
	if !strings.Contains(body, fmt.Sprintf(`<a id="build-culprit" href="/build/%d">`, cfFirst)) ||
		!strings.Contains(body, fmt.Sprintf(`<div id="log" class="log" data-build="%d">`, cached)) {
		t.Errorf("cached failure: no link to build %d or no log\n%s", cfFirst, body)
	}
	// A build that never ran has no log box.
	for _, status := range []string{"cancelled", "unsupported_system"} {
		body := buildPage(t, s, f.build(ev, status, status, f.step(status, status, false)), nil)
		if strings.Contains(body, `id="log"`) || !strings.Contains(body, "never ran, so it has no log") {
			t.Errorf("a %s build, which never ran, shows a log box", status)
		}
	}
}

func TestBuildPage_ShowsOnlyRowsThatApply(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	f := newEBFixture(t, s, "rows")
	ev := f.eval(f.jobsetID, "succeeded")
	_, key := s.get("/api/v1/cache/public-key", nil)
	key = strings.TrimSpace(key)
	if !strings.Contains(key, ":") {
		t.Fatalf("cache public key: %q", key)
	}
	agent := f.id(`INSERT INTO agents (name, public_key, fingerprint) VALUES ('builder-7', 'ssh-ed25519 AAAA', 'SHA256:rows') RETURNING id`)

	okStep := f.step("ok", "succeeded", true)
	f.exec(`UPDATE steps SET agent_id = $2 WHERE id = $1`, okStep, agent)
	ok := f.build(ev, "ok", "succeeded", okStep)
	out, dev := "/nix/store/"+strings.Repeat("a", 32)+"-ok", "/nix/store/"+strings.Repeat("b", 32)+"-ok-dev"
	f.exec(`INSERT INTO build_outputs (build_id, name, path) VALUES ($1, 'out', $2), ($1, 'dev', $3)`, ok, out, dev)
	f.exec(`INSERT INTO build_products (build_id, nr, type, subtype, name, path, file_size, sha256) VALUES
		($1, 1, 'file', 'binary-dist', 'ok.tar.gz', $2 || '/ok.tar.gz', 3145728, 'feedbeef'),
		($1, 2, 'doc', 'manual', '', $2 || '/share/doc', NULL, '')`, ok, out)
	f.exec(`INSERT INTO build_metrics (build_id, name, value, unit) VALUES ($1, 'tests.passed', 42, ''), ($1, 'closure', 1.5, 'MiB')`, ok)

	queued := f.build(ev, "waiting", "queued", f.step("waiting", "queued", false))
	failStep := f.step("broken", "failed", true)
	failed := f.build(ev, "broken", "failed", failStep)
	f.exec(`INSERT INTO build_outputs (build_id, name, path) VALUES ($1, 'out', '/nix/store/cccccccccccccccccccccccccccccccc-broken')`, failed)
	cached := f.build(ev, "cached", "succeeded", 0) // already in the cache: no step
	f.exec(`INSERT INTO build_outputs (build_id, name, path) VALUES ($1, 'out', '/nix/store/dddddddddddddddddddddddddddddddd-c')`, cached)

	body := buildPage(t, s, ok, nil)
	want := fmt.Sprintf("nix-store -r %s %s --option substituters http://example.com/nix-cache --option trusted-public-keys %s", dev, out, key)
	if m := regexp.MustCompile(`<code id="build-fetch" class="copy">([^<]*)</code>`).FindStringSubmatch(body); m == nil || html.UnescapeString(m[1]) != want {
		t.Errorf("succeeded build: no fetch command %q\n%s", want, body)
	}
	for _, w := range []string{
		`<dt>Started</dt>`, `<dt>Finished</dt>`, `<dt>Duration</dt>`, `<dd id="build-agent">builder-7</dd>`, `id="outputs"`,
		fmt.Sprintf(`<a href="/api/v1/builds/%d/products/1/download" download>ok.tar.gz</a>`, ok), "3.0 MiB", "binary-dist",
		"<code>" + out + "/share/doc</code>", "sha256 feedbeef",
		"<td>tests.passed</td><td class=\"num\">42</td>", "<td>closure</td><td class=\"num\">1.5</td><td>MiB</td>",
		`href="/job/rows/main/ok"`, fmt.Sprintf(`href="/eval/%d"`, ev), `href="/jobset/rows/main"`, `href="/project/rows"`,
	} {
		if !strings.Contains(body, w) {
			t.Errorf("succeeded build lacks %q", w)
		}
	}
	if strings.Contains(body, `id="build-reason"`) {
		t.Errorf("succeeded build has a reason row")
	}

	body = buildPage(t, s, queued, nil)
	for _, absent := range []string{`<dt>Started</dt>`, `<dt>Finished</dt>`, `<dt>Duration</dt>`, `<dt>Agent</dt>`, `id="outputs"`,
		`id="build-reason"`, `<h2>Products</h2>`, `<h2>Metrics</h2>`, "build-fetch"} {
		if strings.Contains(body, absent) {
			t.Errorf("queued build shows %q", absent)
		}
	}
	if !strings.Contains(body, fmt.Sprintf(`<div id="log" class="log" data-build="%d">`, queued)) {
		t.Errorf("queued build: no live log waiting for its step")
	}

	body = buildPage(t, s, failed, nil)
	if strings.Contains(body, `id="outputs"`) || strings.Contains(body, "build-fetch") || strings.Contains(body, "cccccccc") {
		t.Errorf("failed build shows outputs")
	}
	body = buildPage(t, s, cached, nil)
	if !strings.Contains(body, "Nothing to build: the outputs were already in the cache.") || strings.Contains(body, `id="log"`) ||
		!strings.Contains(body, "nix-store -r /nix/store/dddddddddddddddddddddddddddddddd-c --option") {
		t.Errorf("build already in the cache:\n%s", body)
	}
	// Served over TLS, the cache's URL is https, on the host asked for.
	req := httptest.NewRequest(http.MethodGet, fmt.Sprintf("/build/%d", ok), nil)
	req.Host, req.TLS = "ci.example.org", &tls.ConnectionState{}
	res := s.do(req, nil)
	b, _ := io.ReadAll(res.Body)
	if !strings.Contains(string(b), "--option substituters https://ci.example.org/nix-cache --option") {
		t.Errorf("over TLS the command does not name https://ci.example.org/nix-cache")
	}
}

func TestBuildPage_StepsArePaged(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	f := newEBFixture(t, s, "steps")
	ev := f.eval(f.jobsetID, "succeeded")
	top := f.step("top", "queued", false)
	f.exec(`WITH s AS (INSERT INTO steps (drv_path, system, status)
			SELECT '/nix/store/' || lpad(i::text, 32, '0') || '-dep.drv', 'x86_64-linux', 'succeeded' FROM generate_series(1, 120) i RETURNING id)
		INSERT INTO step_edges (step_id, depends_on) SELECT $1, id FROM s`, top)
	b := f.build(ev, "top", "queued", top)
	body := buildPage(t, s, b, nil)
	if n := strings.Count(body, `<tr><td><a href="?step=`); n != 50 || !strings.Contains(body, "page 1 of 3 (121)") ||
		!strings.Contains(body, fmt.Sprintf(`<tr><td><a href="?step=%d#log-head">`, top)) {
		t.Fatalf("page 1 has %d steps", n)
	}
	_, body = s.get(fmt.Sprintf("/build/%d?page=3", b), nil)
	if n := strings.Count(body, `<tr><td><a href="?step=`); n != 21 || strings.Contains(body, fmt.Sprintf(`?step=%d#`, top)) {
		t.Fatalf("page 3 has %d steps", n)
	}
	// A step of another build's closure is not this build's to show.
	other := f.step("other", "failed", true)
	if code, _ := s.get(fmt.Sprintf("/build/%d?step=%d", b, other), nil); code != http.StatusNotFound {
		t.Errorf("a step outside the closure: %d", code)
	}
}

// buildState reads a build's status and keep flag, and its own step's priority.
func buildState(t *testing.T, s *site, id int64) (status string, keep bool, prio int) {
	t.Helper()
	err := s.DB.Pool().QueryRow(context.Background(), `SELECT b.status, b.keep, coalesce(s.global_priority, 0)
		FROM builds b LEFT JOIN steps s ON s.id = b.step_id WHERE b.id = $1`, id).Scan(&status, &keep, &prio)
	if err != nil {
		t.Fatal(err)
	}
	return status, keep, prio
}

// ebActors is a site with a queued and a failed build, and a person of each role
// that acts on builds.
type ebActors struct {
	s                                           *site
	queued, failed                              int64
	reader, canceller, restarter, bumper, admin *auth.Principal
}

func newEBActors(t *testing.T) ebActors {
	s := newSite(t)
	f := newEBFixture(t, s, "act")
	ev := f.eval(f.jobsetID, "succeeded")
	return ebActors{s: s, queued: f.build(ev, "q", "queued", f.step("q", "queued", false)),
		failed: f.build(ev, "f", "failed", f.step("f", "failed", true)),
		reader: s.person(storage.RoleReadOnly), canceller: s.person(storage.RoleCancelBuild),
		restarter: s.person(storage.RoleRestartJobs), bumper: s.person(storage.RoleBumpToFront), admin: s.person(storage.RoleAdmin)}
}

// TestBuildPage_ActionsShownByRole: each role sees the action forms it may use, on
// the builds they apply to, with its CSRF token.
func TestBuildPage_ActionsShownByRole(t *testing.T) {
	t.Parallel()
	a := newEBActors(t)
	s, queued, failed := a.s, a.queued, a.failed
	reader, canceller, restarter, bumper, admin := a.reader, a.canceller, a.restarter, a.bumper, a.admin
	form := func(id int64, action string) string { return fmt.Sprintf(`action="/build/%d/%s"`, id, action) }

	// Each role sees the controls it may use, and only on builds they apply to.
	for _, c := range []struct {
		who      *auth.Principal
		id       int64
		see, not []string
	}{
		{nil, queued, nil, []string{"cancel", "bump", "restart", "keep"}},
		{reader, queued, nil, []string{"cancel", "bump", "restart", "keep"}},
		{reader, failed, nil, []string{"cancel", "bump", "restart", "keep"}},
		{canceller, queued, []string{"cancel"}, []string{"bump", "restart", "keep"}},
		{canceller, failed, nil, []string{"cancel", "bump", "restart", "keep"}},
		{bumper, queued, []string{"bump"}, []string{"cancel", "restart", "keep"}},
		{restarter, failed, []string{"restart"}, []string{"cancel", "bump", "keep"}},
		{restarter, queued, nil, []string{"restart"}},
		{admin, queued, []string{"cancel", "bump", "keep"}, []string{"restart"}},
		{admin, failed, []string{"restart", "keep"}, []string{"cancel", "bump"}},
	} {
		body := buildPage(t, s, c.id, c.who)
		name := "nobody"
		if c.who != nil {
			name = c.who.Role
		}
		for _, a := range c.see {
			if !strings.Contains(body, form(c.id, a)) {
				t.Errorf("%s does not see %s on build %d", name, a, c.id)
			}
		}
		for _, a := range c.not {
			if strings.Contains(body, form(c.id, a)) {
				t.Errorf("%s sees %s on build %d", name, a, c.id)
			}
		}
		if len(c.see) > 0 && !strings.Contains(body, `name="csrf" value="`+c.who.CSRF+`"`) {
			t.Errorf("%s's forms carry no CSRF token", name)
		}
	}

}

// TestBuildPage_ActionsRefusedAndDone: posting an action is refused (403) to a
// read-only person, to a form without its token and to a role that does not allow
// it, changing nothing; for the role that allows it, the build is cancelled,
// bumped, restarted and kept in the database.
func TestBuildPage_ActionsRefusedAndDone(t *testing.T) {
	t.Parallel()
	a := newEBActors(t)
	s, queued, failed := a.s, a.queued, a.failed
	reader, canceller, restarter, bumper, admin := a.reader, a.canceller, a.restarter, a.bumper, a.admin
	// Refused: a read-only person posting anyway (by the API), a form without its
	// token (by the dashboard), another role (by the API).
	const byAPI, noToken = "may not do this", "security token is missing or stale"
	for _, c := range []struct {
		who  *auth.Principal
		path string
		form url.Values
		why  string
	}{
		{reader, fmt.Sprintf("/build/%d/cancel", queued), nil, byAPI},
		{reader, fmt.Sprintf("/build/%d/bump", queued), nil, byAPI},
		{reader, fmt.Sprintf("/build/%d/restart", failed), nil, byAPI},
		{reader, fmt.Sprintf("/build/%d/keep", failed), url.Values{"keep": {"1"}}, byAPI},
		{canceller, fmt.Sprintf("/build/%d/cancel", queued), url.Values{"csrf": {""}}, noToken},
		{canceller, fmt.Sprintf("/build/%d/cancel", queued), url.Values{"csrf": {"not-the-token"}}, noToken},
		{admin, fmt.Sprintf("/build/%d/keep", failed), url.Values{"keep": {"1"}, "csrf": {""}}, noToken},
		{canceller, fmt.Sprintf("/build/%d/keep", failed), url.Values{"keep": {"1"}}, byAPI},
		{bumper, fmt.Sprintf("/build/%d/cancel", queued), nil, byAPI},
	} {
		res, body := s.post(c.path, c.form, c.who)
		if res.StatusCode != http.StatusForbidden || !strings.Contains(body, c.why) {
			t.Errorf("%s posting %s %v: %d, want 403 with %q\n%s", c.who.Role, c.path, c.form, res.StatusCode, c.why, body)
		}
	}
	// Nobody signed in is sent to sign in.
	if res, _ := s.post(fmt.Sprintf("/build/%d/cancel", queued), nil, nil); res.StatusCode != http.StatusSeeOther ||
		!strings.HasPrefix(res.Header.Get("Location"), "/login") {
		t.Errorf("posting signed out: %d %s", res.StatusCode, res.Header.Get("Location"))
	}
	if st, keep, prio := buildState(t, s, queued); st != "queued" || keep || prio != 0 {
		t.Fatalf("after refused actions the queued build is %s, keep %v, priority %d", st, keep, prio)
	}
	if st, keep, _ := buildState(t, s, failed); st != "failed" || keep {
		t.Fatalf("after refused actions the failed build is %s, keep %v", st, keep)
	}

	// Allowed: each action does what it says, then shows the build again.
	done := func(who *auth.Principal, id int64, action string, form url.Values) {
		t.Helper()
		res, body := s.post(fmt.Sprintf("/build/%d/%s", id, action), form, who)
		if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != fmt.Sprintf("/build/%d", id) {
			t.Fatalf("%s %s build %d: %d %s\n%s", who.Role, action, id, res.StatusCode, res.Header.Get("Location"), body)
		}
	}
	done(bumper, queued, "bump", nil)
	if _, _, prio := buildState(t, s, queued); prio <= 0 {
		t.Errorf("bumped build's step has priority %d", prio)
	}
	done(canceller, queued, "cancel", nil)
	if st, _, _ := buildState(t, s, queued); st != "cancelled" {
		t.Errorf("cancelled build is %s", st)
	}
	done(restarter, failed, "restart", nil)
	if st, _, _ := buildState(t, s, failed); st != "queued" {
		t.Errorf("restarted build is %s", st)
	}
	done(admin, failed, "keep", url.Values{"keep": {"1"}})
	if _, keep, _ := buildState(t, s, failed); !keep {
		t.Errorf("kept build is not kept")
	}
	if body := buildPage(t, s, failed, admin); !strings.Contains(body, "Stop keeping the outputs") || !strings.Contains(body, `<dt>Kept</dt>`) {
		t.Errorf("a kept build's page offers no way back")
	}
	done(admin, failed, "keep", url.Values{"keep": {"0"}})
	if _, keep, _ := buildState(t, s, failed); keep {
		t.Errorf("unkept build is still kept")
	}
	// An action that no longer applies: the API's reason on the page.
	res, body := s.post(fmt.Sprintf("/build/%d/cancel", queued), nil, canceller)
	if res.StatusCode != http.StatusConflict || !strings.Contains(body, `class="flash error"`) || !strings.Contains(body, "has finished") {
		t.Errorf("cancelling a cancelled build: %d\n%s", res.StatusCode, body)
	}
	res, _ = s.post(fmt.Sprintf("/build/%d/keep", failed), url.Values{"keep": {"yes"}}, admin)
	if res.StatusCode != http.StatusUnprocessableEntity {
		t.Errorf("keep=yes: %d", res.StatusCode)
	}
}
