package dashboard_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/fc-ci/fc/storage"
)

// Tests of the queue, agents, search and admin pages.

// sqlID runs an INSERT … RETURNING id.
func (s *site) sqlID(query string, args ...any) int64 {
	s.t.Helper()
	var id int64
	if err := s.DB.Pool().QueryRow(context.Background(), query, args...).Scan(&id); err != nil {
		s.t.Fatalf("%s: %v", query, err)
	}
	return id
}

func (s *site) exec(query string, args ...any) {
	s.t.Helper()
	if _, err := s.DB.Pool().Exec(context.Background(), query, args...); err != nil {
		s.t.Fatalf("%s: %v", query, err)
	}
}

// evalFixture is a project "webshop" with jobset "main" and one evaluation.
func (s *site) evalFixture() (jobset, eval int64) {
	s.t.Helper()
	p := s.sqlID(`INSERT INTO projects (name, display_name, repository_url) VALUES ('webshop', 'Web Shop', 'https://example.org/shop.git') RETURNING id`)
	jobset = s.sqlID(`INSERT INTO jobsets (project_id, name) VALUES ($1, 'main') RETURNING id`, p)
	eval = s.sqlID(`INSERT INTO evaluations (jobset_id, status) VALUES ($1, 'succeeded') RETURNING id`, jobset)
	return jobset, eval
}

// agent adds an enrolled agent over SQL.
func (s *site) agent(name, extra string) int64 {
	s.t.Helper()
	cols, vals := "", ""
	if extra != "" {
		c, v, _ := strings.Cut(extra, "=")
		cols, vals = ", "+c, ", "+v
	}
	return s.sqlID(`INSERT INTO agents (name, public_key, fingerprint`+cols+`) VALUES ($1, 'ssh-ed25519 AAAA', 'SHA256:'||$1`+vals+`) RETURNING id`, name)
}

func nixHash(seed string) string { return (seed + strings.Repeat("0", 32))[:32] }

func drvPath(seed, name string) string { return "/nix/store/" + nixHash(seed) + "-" + name + ".drv" }

func count(body, s string) int { return strings.Count(body, s) }

func TestQueue_BySystemWithBuildsWaiting(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	jobset, eval := s.evalFixture()
	agent := s.agent("builder-a", "")
	step := func(seed, name, system, status string, prio int, agentID any) int64 {
		return s.sqlID(`INSERT INTO steps (drv_path, system, status, global_priority, agent_id, attempts, started_at)
			VALUES ($1, $2, $3, $4, $5, CASE WHEN $3 = 'running' THEN 1 ELSE 0 END, CASE WHEN $3 = 'running' THEN now() END) RETURNING id`,
			drvPath(seed, name), system, status, prio, agentID)
	}
	build := func(job string, stepID int64, seed, name string) int64 {
		return s.sqlID(`INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, step_id, system, status)
			VALUES ($1, $2, $3, $4, $5, 'x86_64-linux', 'queued') RETURNING id`, eval, jobset, job, drvPath(seed, name), stepID)
	}
	running := step("r1", "running-thing", "x86_64-linux", "running", 0, agent)
	top := step("q1", "top-app", "x86_64-linux", "queued", 5, nil)
	dep := step("q2", "libdep", "x86_64-linux", "queued", 0, nil)
	s.exec(`INSERT INTO step_edges (step_id, depends_on) VALUES ($1, $2)`, top, dep)
	arm := step("a1", "arm-app", "aarch64-linux", "queued", 0, nil)
	step("d1", "finished-thing", "x86_64-linux", "succeeded", 0, nil)
	rb := build("running.job", running, "r1", "running-thing")
	tb := build("top.app", top, "q1", "top-app")
	build("arm.app", arm, "a1", "arm-app")
	arm2 := s.sqlID(`INSERT INTO evaluations (jobset_id, status) VALUES ($1, 'succeeded') RETURNING id`, jobset)
	ab2 := s.sqlID(`INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, step_id, system, status)
		VALUES ($1, $2, 'arm.app', $3, $4, 'aarch64-linux', 'queued') RETURNING id`, arm2, jobset, drvPath("a1", "arm-app"), arm)

	code, body := s.get("/queue", nil)
	if code != http.StatusOK {
		t.Fatalf("/queue: %d\n%s", code, body)
	}
	for _, want := range []string{
		"<title>Queue · FC</title>", "3 steps queued · 1 running",
		`<h2>aarch64-linux <span class="count">1 queued · 0 running</span></h2>`,
		`<h2>x86_64-linux <span class="count">2 queued · 1 running</span></h2>`,
		fmt.Sprintf(`<a href="/agents#agent-%d">builder-a</a>`, agent),
		fmt.Sprintf(`<a href="/build/%d">#%d running.job</a>`, rb, rb),
		fmt.Sprintf(`<a href="/build/%d">#%d arm.app</a>`, ab2, ab2), "2 builds of this derivation",
		"waits for 1 dependency", "needed by 1 step", "through a dependent step", "5 / 100",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/queue lacks %q", want)
		}
	}
	if strings.Contains(body, "finished-thing") {
		t.Error("/queue lists a finished step")
	}
	// By system, alphabetically; in a system running first, then by priority; the
	// dependency's build is the dependent's.
	order := []string{"arm-app.drv", "running-thing.drv", "top-app.drv", "libdep.drv"}
	last := -1
	for _, name := range order {
		i := strings.Index(body, name)
		if i < last {
			t.Errorf("%s is out of order (want %v)", name, order)
		}
		last = i
	}
	depRow := body[strings.Index(body, fmt.Sprintf(`id="step-%d"`, dep)):]
	depRow = depRow[:strings.Index(depRow, "</tr>")]
	if !strings.Contains(depRow, fmt.Sprintf(`href="/build/%d"`, tb)) {
		t.Errorf("the dependency's row does not link the build waiting on it (%d):\n%s", tb, depRow)
	}

	// One system.
	_, body = s.get("/queue?system=aarch64-linux", nil)
	if !strings.Contains(body, "arm-app.drv") || strings.Contains(body, "top-app.drv") || !strings.Contains(body, "<title>Queue for aarch64-linux · FC</title>") {
		t.Fatalf("/queue?system=aarch64-linux:\n%s", body)
	}

	// Pagination: 50 steps a page.
	s.exec(`INSERT INTO steps (drv_path, system) SELECT '/nix/store/' || lpad(i::text, 32, '0') || '-bulk.drv', 'riscv64-linux' FROM generate_series(1, 60) i`)
	_, body = s.get("/queue", nil)
	if n := count(body, `id="step-`); n != 50 || !strings.Contains(body, "page 1 of 2 (64)") {
		t.Fatalf("page 1 has %d steps:\n%s", n, body)
	}
	_, body = s.get("/queue?page=2", nil)
	if n := count(body, `id="step-`); n != 14 || !strings.Contains(body, "page 2 of 2 (64)") || !strings.Contains(body, `<h2>x86_64-linux`) {
		t.Fatalf("page 2 has %d steps:\n%s", n, body)
	}

	// Nothing queued.
	_, body = newSite(t).get("/queue", nil)
	if !strings.Contains(body, "Nothing is queued or running.") {
		t.Fatalf("empty queue:\n%s", body)
	}
}

func TestHydraLinks_Redirect(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	for from, to := range map[string]string{"/machines": "/agents", "/status": "/queue", "/queue-summary": "/queue"} {
		res := s.do(httptest.NewRequest(http.MethodGet, from, nil), nil)
		if res.StatusCode != http.StatusMovedPermanently || res.Header.Get("Location") != to {
			t.Errorf("%s: %d → %q, want 301 → %s", from, res.StatusCode, res.Header.Get("Location"), to)
		}
	}
}

// agentState reads an agent's enabled, draining and revoked flags.
func (s *site) agentState(id int64) (enabled, draining, revoked bool) {
	s.t.Helper()
	if err := s.DB.Pool().QueryRow(context.Background(), `SELECT enabled, draining, revoked_at IS NOT NULL FROM agents WHERE id = $1`, id).
		Scan(&enabled, &draining, &revoked); err != nil {
		s.t.Fatal(err)
	}
	return
}

func TestAgents_ContentAndAdminControls(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	a := s.agent("builder-a", "")
	s.exec(`UPDATE agents SET connected = true, last_seen_at = now(), systems = '{x86_64-linux,i686-linux}', features = '{kvm,big-parallel}',
		max_jobs = 4, load1 = 1.25, free_disk_bytes = 10737418240, agent_version = '1.2.3', nix_version = '2.24.9' WHERE id = $1`, a)
	for i := range 2 {
		s.exec(`INSERT INTO steps (drv_path, system, status, agent_id) VALUES ($1, 'x86_64-linux', 'running', $2)`, drvPath(fmt.Sprint("r", i), "x"), a)
	}
	b := s.agent("builder-b", "enabled=false")
	gone := s.agent("old-one", "revoked_at=now()")

	_, body := s.get("/agents", nil)
	for _, want := range []string{"<title>Agents · FC</title>", `id="agent-` + fmt.Sprint(a) + `"`, "builder-a", "builder-b",
		`<span class="badge on">connected</span>`, `<span class="badge off">disabled</span>`, "<code>i686-linux</code>", "<code>kvm</code>",
		"2 / 4", "1.25", "10.0 GiB", "fc-agent 1.2.3", "nix 2.24.9", `Revoked <span class="count">1</span>`} {
		if !strings.Contains(body, want) {
			t.Errorf("/agents lacks %q", want)
		}
	}
	if strings.Contains(body, "old-one") {
		t.Error("/agents lists a revoked agent among the others")
	}
	if _, body := s.get("/agents?revoked=1", nil); !strings.Contains(body, "old-one") || strings.Contains(body, "builder-a") {
		t.Errorf("revoked tab:\n%s", body)
	}

	// Nobody but an admin sees a control, and a read-only person posting anyway is
	// refused by the API.
	reader, admin := s.person(storage.RoleReadOnly), s.person(storage.RoleAdmin)
	_, readerBody := s.get("/agents", reader)
	for who, page := range map[string]string{"anonymous": body, "read-only": readerBody} {
		if strings.Contains(page, `action="/agents/`) || strings.Contains(page, "/revoke") {
			t.Errorf("%s sees agent controls", who)
		}
	}
	res, page := s.post(fmt.Sprintf("/agents/%d/drain", a), nil, reader)
	if _, draining, _ := s.agentState(a); res.StatusCode != http.StatusForbidden || draining {
		t.Fatalf("read-only drain: %d, draining %v\n%s", res.StatusCode, draining, page)
	}
	if code, _ := s.get(fmt.Sprintf("/agents/%d/revoke", a), reader); code != http.StatusForbidden {
		t.Fatalf("read-only revoke page: %d", code)
	}
	if res := s.do(httptest.NewRequest(http.MethodGet, fmt.Sprintf("/agents/%d/revoke", a), nil), nil); res.StatusCode != http.StatusSeeOther ||
		!strings.HasPrefix(res.Header.Get("Location"), "/login?next=") {
		t.Fatalf("anonymous revoke page: %d %s", res.StatusCode, res.Header.Get("Location"))
	}

	_, body = s.get("/agents", admin)
	for _, want := range []string{fmt.Sprintf(`action="/agents/%d/drain"`, a), fmt.Sprintf(`action="/agents/%d/disable"`, a),
		fmt.Sprintf(`action="/agents/%d/enable"`, b), fmt.Sprintf(`href="/agents/%d/revoke"`, a)} {
		if !strings.Contains(body, want) {
			t.Errorf("admin's /agents lacks %q", want)
		}
	}
	if strings.Contains(body, fmt.Sprintf(`action="/agents/%d/enable"`, a)) || strings.Contains(body, fmt.Sprintf(`action="/agents/%d/drain"`, b)) {
		t.Error("admin's /agents offers an action that changes nothing")
	}
	// Without the CSRF token: refused, nothing done.
	res, _ = s.post(fmt.Sprintf("/agents/%d/drain", a), url.Values{"csrf": {""}}, admin)
	if _, draining, _ := s.agentState(a); res.StatusCode != http.StatusForbidden || draining {
		t.Fatalf("drain without CSRF: %d, draining %v", res.StatusCode, draining)
	}
	res, page = s.post(fmt.Sprintf("/agents/%d/drain", a), nil, admin)
	if _, draining, _ := s.agentState(a); res.StatusCode != http.StatusSeeOther || !draining || res.Header.Get("Location") != fmt.Sprintf("/agents#agent-%d", a) {
		t.Fatalf("admin drain: %d %s, draining %v\n%s", res.StatusCode, res.Header.Get("Location"), draining, page)
	}
	if _, body = s.get("/agents", admin); !strings.Contains(body, `<span class="badge warn">draining</span>`) || !strings.Contains(body, fmt.Sprintf(`action="/agents/%d/enable"`, a)) {
		t.Error("a drained agent is not shown draining, with Enable")
	}
	res, _ = s.post(fmt.Sprintf("/agents/%d/enable", b), nil, admin)
	if enabled, _, _ := s.agentState(b); res.StatusCode != http.StatusSeeOther || !enabled {
		t.Fatalf("admin enable: %d, enabled %v", res.StatusCode, enabled)
	}
	if res, page := s.post(fmt.Sprintf("/agents/%d/reboot", b), nil, admin); res.StatusCode != http.StatusNotFound {
		t.Fatalf("an unknown action: %d\n%s", res.StatusCode, page)
	}
	if res, page := s.post(fmt.Sprintf("/agents/%d/drain", gone), nil, admin); res.StatusCode != http.StatusConflict || !strings.Contains(page, "is revoked") {
		t.Fatalf("drain a revoked agent: %d\n%s", res.StatusCode, page)
	}

	// Revoking asks first; the box must be ticked.
	code, page := s.get(fmt.Sprintf("/agents/%d/revoke", a), admin)
	if code != http.StatusOK || !strings.Contains(page, `name="confirm" value="yes" required`) {
		t.Fatalf("revoke page: %d\n%s", code, page)
	}
	res, page = s.post(fmt.Sprintf("/agents/%d/revoke", a), nil, admin)
	if _, _, revoked := s.agentState(a); res.StatusCode != http.StatusUnprocessableEntity || revoked || !strings.Contains(page, "Tick the box") {
		t.Fatalf("revoke unconfirmed: %d, revoked %v", res.StatusCode, revoked)
	}
	res, _ = s.post(fmt.Sprintf("/agents/%d/revoke", a), url.Values{"confirm": {"yes"}}, reader)
	if _, _, revoked := s.agentState(a); res.StatusCode != http.StatusForbidden || revoked {
		t.Fatalf("read-only revoke: %d, revoked %v", res.StatusCode, revoked)
	}
	res, _ = s.post(fmt.Sprintf("/agents/%d/revoke", a), url.Values{"confirm": {"yes"}}, admin)
	if _, _, revoked := s.agentState(a); res.StatusCode != http.StatusSeeOther || !revoked {
		t.Fatalf("revoke: %d, revoked %v", res.StatusCode, revoked)
	}
	if _, body := s.get("/agents?revoked=1", nil); !strings.Contains(body, "builder-a") {
		t.Error("the revoked agent is not on the revoked tab")
	}
}

func TestAgents_Pagination(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	s.exec(`INSERT INTO agents (name, public_key, fingerprint) SELECT 'agent-' || lpad(i::text, 3, '0'), 'k', 'SHA256:' || i FROM generate_series(1, 55) i`)
	_, body := s.get("/agents", nil)
	if n := count(body, `<tr id="agent-`); n != 50 || !strings.Contains(body, "page 1 of 2 (55)") || !strings.Contains(body, "agent-001") {
		t.Fatalf("page 1: %d agents\n%s", n, body)
	}
	_, body = s.get("/agents?page=2", nil)
	if n := count(body, `<tr id="agent-`); n != 5 || !strings.Contains(body, "agent-055") {
		t.Fatalf("page 2: %d agents", n)
	}
}

// searchFixture adds to evalFixture's jobset builds of "shop.checkout" and
// "shop.cart" with a derivation and an output each.
func (s *site) searchFixture() (checkout, cart int64) {
	s.t.Helper()
	jobset, eval := s.evalFixture()
	build := func(job, seed string) int64 {
		id := s.sqlID(`INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, status)
			VALUES ($1, $2, $3, $4, 'x86_64-linux', 'succeeded') RETURNING id`, eval, jobset, job, drvPath(seed+"d", job))
		s.exec(`INSERT INTO build_outputs (build_id, name, path) VALUES ($1, 'out', $2)`, id, "/nix/store/"+nixHash(seed+"f")+"-"+job)
		return id
	}
	return build("shop.checkout", "c1"), build("shop.cart", "k1")
}

func TestSearch_Page(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	checkout, cart := s.searchFixture()

	code, body := s.get("/search", nil)
	if code != http.StatusOK || !strings.Contains(body, `<form class="search-page"`) || strings.Contains(body, "<section") {
		t.Fatalf("empty search: %d\n%s", code, body)
	}
	code, body = s.get("/search?q=x", nil)
	if code != http.StatusUnprocessableEntity || !strings.Contains(body, "Type at least 2 characters") {
		t.Fatalf("short search: %d\n%s", code, body)
	}
	for q, want := range map[string][]string{
		"webSHOP":                       {`<a href="/project/webshop">webshop</a>`},
		"main":                          {`<a href="/jobset/webshop/main">webshop:main</a>`},
		"checkout":                      {`<a href="/job/webshop/main/shop.checkout">shop.checkout</a>`},
		drvPath("c1d", "shop.checkout"): {fmt.Sprintf(`<a href="/build/%d">shop.checkout</a>`, checkout), "derivation"},
		nixHash("c1d"):                  {fmt.Sprintf(`<a href="/build/%d">`, checkout)},
		"k1f":                           {fmt.Sprintf(`<a href="/build/%d">shop.cart</a>`, cart), "output out"},
		"/nix/store/" + nixHash("k1f") + "-shop.cart/bin/cart": {fmt.Sprintf(`<a href="/build/%d">`, cart)},
	} {
		code, body := s.get("/search?q="+url.QueryEscape(q), nil)
		for _, w := range want {
			if code != http.StatusOK || !strings.Contains(body, w) {
				t.Errorf("search %q: %d, lacks %q", q, code, w)
			}
		}
	}
	_, body = s.get("/search?q=nothing-like-it", nil)
	if !strings.Contains(body, "Nothing matches <strong>nothing-like-it</strong>.") {
		t.Fatalf("no match:\n%s", body)
	}
	// The layout's search box keeps the query.
	if !strings.Contains(body, `name="q" placeholder="Search" aria-label="Search projects, jobs, builds, store paths" value="nothing-like-it"`) {
		t.Error("the layout's search box lost the query")
	}

	// Ten of each kind, then a link to all of them, paged.
	jobset := s.sqlID(`SELECT id FROM jobsets LIMIT 1`)
	eval := s.sqlID(`INSERT INTO evaluations (jobset_id) VALUES ($1) RETURNING id`, jobset)
	s.exec(`INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system)
		SELECT $1, $2, 'many.job' || i, '/nix/store/' || lpad(i::text, 32, '0') || '-m.drv', 'x86_64-linux' FROM generate_series(1, 60) i`, eval, jobset)
	_, body = s.get("/search?q=many.job", nil)
	if n := count(body, `<a href="/job/webshop/main/many.job`); n != 10 || !strings.Contains(body, `<a href="/search?in=jobs&amp;q=many.job">All 60 jobs →</a>`) {
		t.Fatalf("preview: %d jobs\n%s", n, body)
	}
	_, body = s.get("/search?in=jobs&q=many.job", nil)
	if n := count(body, `<a href="/job/webshop/main/many.job`); n != 50 || !strings.Contains(body, "page 1 of 2 (60)") || strings.Contains(body, `id="builds"`) {
		t.Fatalf("jobs page 1: %d jobs\n%s", n, body)
	}
	_, body = s.get("/search?in=jobs&q=many.job&page=2", nil)
	if n := count(body, `<a href="/job/webshop/main/many.job`); n != 10 {
		t.Fatalf("jobs page 2: %d jobs", n)
	}

	// The API on the same site: empty lists are [], a short query 422.
	code, body = s.get("/api/v1/search?q=nothing-like-it", nil)
	if code != http.StatusOK || strings.TrimSpace(body) != `{"projects":[],"jobsets":[],"jobs":[],"builds":[]}` {
		t.Fatalf("API no match: %d %s", code, body)
	}
	if code, body = s.get("/api/v1/search?q=x", nil); code != http.StatusUnprocessableEntity {
		t.Fatalf("API short: %d %s", code, body)
	}
}

var keyRE = regexp.MustCompile(`<code class="copy" id="secret-value">(fc_[0-9a-f]+)</code>`)

func TestAdmin_Permissions(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	res := s.do(httptest.NewRequest(http.MethodGet, "/admin", nil), nil)
	if res.StatusCode != http.StatusSeeOther || res.Header.Get("Location") != "/login?next=%2Fadmin" {
		t.Fatalf("anonymous /admin: %d %s", res.StatusCode, res.Header.Get("Location"))
	}
	for _, role := range []string{storage.RoleReadOnly, storage.RoleCreateProjects, storage.RoleCancelBuild} {
		who := s.person(role)
		if code, body := s.get("/admin", who); code != http.StatusForbidden || strings.Contains(body, "API keys") {
			t.Errorf("%s /admin: %d", role, code)
		}
		res, body := s.post("/admin/api-keys", url.Values{"name": {"sneaky"}, "role": {"admin"}}, who)
		if res.StatusCode != http.StatusForbidden || strings.Contains(body, "fc_") {
			t.Errorf("%s creates a key: %d", role, res.StatusCode)
		}
		res, _ = s.post("/admin/agent-tokens", url.Values{"token_name": {"sneaky"}}, who)
		if res.StatusCode != http.StatusForbidden {
			t.Errorf("%s creates a token: %d", role, res.StatusCode)
		}
	}
	var n int
	if err := s.DB.Pool().QueryRow(context.Background(), `SELECT (SELECT count(*) FROM api_keys WHERE name = 'sneaky') + (SELECT count(*) FROM enrollment_tokens)`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("refused forms made %d keys and tokens (%v)", n, err)
	}
	admin := s.person(storage.RoleAdmin)
	code, body := s.get("/admin", admin)
	for _, want := range []string{"<title>Admin · FC</title>", `<section id="api-keys">`, "admin-person", "read-only-person",
		`<section id="tokens">`, "extra-substituters = http://example.com/nix-cache", "extra-trusted-public-keys = "} {
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("admin /admin: %d, lacks %q", code, want)
		}
	}
	if !regexp.MustCompile(`extra-trusted-public-keys = [^\s<:]+:[^\s<]{40,}`).MatchString(body) {
		t.Error("the cache's public key is missing")
	}
	if res, _ := s.post("/admin/api-keys", url.Values{"name": {"x"}, "role": {"admin"}, "csrf": {""}}, admin); res.StatusCode != http.StatusForbidden {
		t.Fatalf("create a key without CSRF: %d", res.StatusCode)
	}
}

func TestAdmin_KeyShownOnceAndWorks(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	admin := s.person(storage.RoleAdmin)
	res, body := s.post("/admin/api-keys", url.Values{"name": {"deploy-bot"}, "role": {storage.RoleAdmin}}, admin)
	m := keyRE.FindStringSubmatch(body)
	if res.StatusCode != http.StatusCreated || m == nil || !strings.Contains(body, "API key deploy-bot (admin)") {
		t.Fatalf("create a key: %d\n%s", res.StatusCode, body)
	}
	key := m[1]
	if _, again := s.get("/admin", admin); strings.Contains(again, key) || !strings.Contains(again, "deploy-bot") {
		t.Fatal("the admin page shows the key again, or not its name")
	}
	bearer := func() int {
		req := httptest.NewRequest(http.MethodGet, "/api/v1/api-keys", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		return s.do(req, nil).StatusCode
	}
	if code := bearer(); code != http.StatusOK {
		t.Fatalf("the new key on the API: %d", code)
	}
	// A refused form keeps what was typed and says why.
	res, body = s.post("/admin/api-keys", url.Values{"name": {"bad name!"}, "role": {storage.RoleReadOnly}}, admin)
	if res.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(body, "Cannot create the API key") || !strings.Contains(body, `value="bad name!"`) {
		t.Fatalf("an invalid name: %d\n%s", res.StatusCode, body)
	}
	id := s.sqlID(`SELECT id FROM api_keys WHERE name = 'deploy-bot'`)
	res, _ = s.post(fmt.Sprintf("/admin/api-keys/%d/delete", id), nil, admin)
	if res.StatusCode != http.StatusSeeOther || bearer() != http.StatusUnauthorized {
		t.Fatalf("delete the key: %d, then the key answers %d", res.StatusCode, bearer())
	}
}

func TestAdmin_EnrollmentToken(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	admin := s.person(storage.RoleAdmin)
	res, body := s.post("/admin/agent-tokens", url.Values{"token_name": {"builder-9"}, "uses": {"3"}, "hours": {"2"}}, admin)
	token := regexp.MustCompile(`id="secret-value">(fcagent_[0-9a-f]+)<`).FindStringSubmatch(body)
	if res.StatusCode != http.StatusCreated || token == nil || !strings.Contains(body, "Enrollment token builder-9 (3 uses") {
		t.Fatalf("create a token: %d\n%s", res.StatusCode, body)
	}
	var uses int
	var hours float64
	if err := s.DB.Pool().QueryRow(context.Background(), `SELECT uses_left, extract(epoch FROM expires_at - now()) / 3600 FROM enrollment_tokens WHERE name = 'builder-9'`).
		Scan(&uses, &hours); err != nil || uses != 3 || hours < 1.9 || hours > 2 {
		t.Fatalf("stored token: uses %d, %.2f hours (%v)", uses, hours, err)
	}
	for form, want := range map[string]string{"token_name=b2&uses=x": "Uses must be a whole number",
		"token_name=b2&uses=0": "uses must be from 1", "token_name=&uses=1": "name"} {
		v, _ := url.ParseQuery(form)
		res, body := s.post("/admin/agent-tokens", v, admin)
		if res.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(body, want) || strings.Contains(body, "fcagent_") {
			t.Errorf("token form %s: %d, lacks %q", form, res.StatusCode, want)
		}
	}
}

// userRow reads an account's role, email and enabled flag (found: false when gone).
func (s *site) userRow(username string) (role, email string, enabled, found bool) {
	s.t.Helper()
	err := s.DB.Pool().QueryRow(context.Background(), `SELECT role, email, enabled FROM users WHERE username = $1`, username).
		Scan(&role, &email, &enabled)
	return role, email, enabled, err == nil
}

func TestAdmin_Users(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	admin := s.signedIn(storage.RoleAdmin)
	readerName, _ := s.user(storage.RoleReadOnly)

	code, body := s.getAs("/admin", admin)
	if code != http.StatusOK || !strings.Contains(body, `<section id="users">`) || !strings.Contains(body, readerName) ||
		!strings.Contains(body, `<span class="muted small">you</span>`) {
		t.Fatalf("/admin: %d\n%s", code, body)
	}
	// The admin's own row has no controls: the API would refuse disabling oneself.
	if n := count(body, `/disable"`); n != 1 {
		t.Fatalf("%d disable buttons, want the read-only user's only", n)
	}

	// Create: the account works at once; a refused form keeps the fields but never
	// the password.
	res, body := s.postAs("/admin/users", url.Values{"username": {"dana"}, "password": {"short"}, "role": {storage.RoleEvalJobset},
		"email": {"dana@example.org"}}, admin)
	if res.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(body, "Cannot create the user: password") ||
		!strings.Contains(body, `value="dana"`) || strings.Contains(body, "short") {
		t.Fatalf("a short password: %d\n%s", res.StatusCode, body)
	}
	res, _ = s.postAs("/admin/users", url.Values{"username": {"dana"}, "password": {"correct horse battery"}, "role": {storage.RoleEvalJobset},
		"email": {"dana@example.org"}}, admin)
	if role, email, enabled, ok := s.userRow("dana"); res.StatusCode != http.StatusSeeOther || !ok || role != storage.RoleEvalJobset ||
		email != "dana@example.org" || !enabled {
		t.Fatalf("create dana: %d, %s %s %v %v", res.StatusCode, role, email, enabled, ok)
	}
	dana := s.signIn("dana", "correct horse battery")
	id := s.sqlID(`SELECT id FROM users WHERE username = 'dana'`)

	// Disable signs her out and keeps her out; enable lets her back.
	res, _ = s.postAs(fmt.Sprintf("/admin/users/%d/disable", id), nil, admin)
	if _, _, enabled, _ := s.userRow("dana"); res.StatusCode != http.StatusSeeOther || enabled {
		t.Fatalf("disable: %d, enabled %v", res.StatusCode, enabled)
	}
	if _, body := s.getAs("/", dana); strings.Contains(body, `<span class="me">dana</span>`) {
		t.Fatal("a disabled user is still signed in")
	}
	if res := s.login(url.Values{"username": {"dana"}, "password": {"correct horse battery"}}); res.StatusCode == http.StatusSeeOther {
		t.Fatal("a disabled user signs in")
	}
	_, body = s.getAs("/admin", admin)
	if !strings.Contains(body, fmt.Sprintf(`action="/admin/users/%d/enable"`, id)) {
		t.Fatal("a disabled user has no Enable button")
	}
	res, _ = s.postAs(fmt.Sprintf("/admin/users/%d/enable", id), nil, admin)
	if _, _, enabled, _ := s.userRow("dana"); res.StatusCode != http.StatusSeeOther || !enabled {
		t.Fatalf("enable: %d, enabled %v", res.StatusCode, enabled)
	}

	// Edit: role, email, password.
	code, body = s.getAs(fmt.Sprintf("/admin/users/%d", id), admin)
	if code != http.StatusOK || !strings.Contains(body, `<option selected>eval-jobset</option>`) || !strings.Contains(body, `value="dana@example.org"`) {
		t.Fatalf("edit page: %d\n%s", code, body)
	}
	res, body = s.postAs(fmt.Sprintf("/admin/users/%d", id), url.Values{"role": {storage.RoleCancelBuild}, "email": {"not an address"}}, admin)
	if role, _, _, _ := s.userRow("dana"); res.StatusCode != http.StatusUnprocessableEntity || role != storage.RoleEvalJobset ||
		!strings.Contains(body, "Cannot change the user: email") || !strings.Contains(body, `value="not an address"`) {
		t.Fatalf("an invalid email: %d, role %s\n%s", res.StatusCode, role, body)
	}
	res, _ = s.postAs(fmt.Sprintf("/admin/users/%d", id), url.Values{"role": {storage.RoleCancelBuild}, "email": {"d@example.org"},
		"password": {"a new password here"}}, admin)
	if role, email, _, _ := s.userRow("dana"); res.StatusCode != http.StatusSeeOther || role != storage.RoleCancelBuild || email != "d@example.org" {
		t.Fatalf("edit: %d, %s %s", res.StatusCode, role, email)
	}
	s.signIn("dana", "a new password here")

	// Nobody else may: a signed-in read-only user is refused (with their own CSRF
	// token), and nothing changes.
	reader := s.signedIn(storage.RoleReadOnly)
	if code, _ := s.getAs("/admin", reader); code != http.StatusForbidden {
		t.Fatalf("read-only /admin: %d", code)
	}
	if code, _ := s.getAs(fmt.Sprintf("/admin/users/%d", id), reader); code != http.StatusForbidden {
		t.Fatalf("read-only user page: %d", code)
	}
	for path, form := range map[string]url.Values{
		"/admin/users": {"username": {"mallory"}, "password": {"long enough password"}, "role": {"admin"}},
		fmt.Sprintf("/admin/users/%d/disable", id): nil,
		fmt.Sprintf("/admin/users/%d", id):         {"role": {"admin"}},
		fmt.Sprintf("/admin/users/%d/delete", id):  {"confirm": {"yes"}},
	} {
		if res, _ := s.postAs(path, form, reader); res.StatusCode != http.StatusForbidden {
			t.Errorf("read-only POST %s: %d", path, res.StatusCode)
		}
	}
	if role, _, enabled, ok := s.userRow("dana"); !ok || !enabled || role != storage.RoleCancelBuild {
		t.Fatalf("refused forms changed dana: %s %v %v", role, enabled, ok)
	}
	if _, _, _, ok := s.userRow("mallory"); ok {
		t.Fatal("a read-only user created an account")
	}

	// Delete asks first.
	code, body = s.getAs(fmt.Sprintf("/admin/users/%d/delete", id), admin)
	if code != http.StatusOK || !strings.Contains(body, `name="confirm" value="yes" required`) {
		t.Fatalf("delete page: %d", code)
	}
	if res, body := s.postAs(fmt.Sprintf("/admin/users/%d/delete", id), nil, admin); res.StatusCode != http.StatusUnprocessableEntity ||
		!strings.Contains(body, "Tick the box") {
		t.Fatalf("delete unconfirmed: %d", res.StatusCode)
	}
	res, _ = s.postAs(fmt.Sprintf("/admin/users/%d/delete", id), url.Values{"confirm": {"yes"}}, admin)
	if _, _, _, ok := s.userRow("dana"); res.StatusCode != http.StatusSeeOther || ok {
		t.Fatalf("delete: %d, still there %v", res.StatusCode, ok)
	}
	if code, _ := s.getAs(fmt.Sprintf("/admin/users/%d", id), admin); code != http.StatusNotFound {
		t.Fatalf("a deleted user's page: %d", code)
	}
}
