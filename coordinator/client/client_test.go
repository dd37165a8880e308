package client_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/client"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage"
)

// demoJobset: hello succeeds, broken fails (and needs with it), stuck needs a
// feature no agent has (it stays queued), bad does not evaluate.
func demoJobset(t *testing.T) string {
	return fmt.Sprintf(`let
  %s
  broken = mk "broken" { args = sh "echo boom; exit 1"; };
in {
  inherit broken;
  needs = mk "needs" { args = sh "echo ${broken} > $out"; };
  hello = mk "hello" { args = sh "echo hello from fc; echo > $out"; };
  stuck = mk "stuck" { requiredSystemFeatures = [ "fc-test-nobody-has-this" ]; };
  bad = throw "bad does not evaluate";
}
`, coordtest.MkLet(coordtest.Salt(t)))
}

type listJSON struct {
	Items []map[string]any `json:"items"`
	Total int              `json:"total"`
	Limit int              `json:"limit"`
}

// TestCommands runs every fc command against a real coordinator with real builds,
// checking the table or key/value output and the --json.
func TestCommands(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) {
		cfg.Queue.UnsupportedWait = 3600 // stuck stays queued
	}})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": demoJobset(t)})
	_, js := c.Project("demo", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "builder"})
	fc := newEnv(t, map[string]string{"FC_URL": c.URL, "FC_API_KEY": c.Admin})

	out := fc.ok("eval", "trigger", "demo/main")
	if !regexp.MustCompile(`^[0-9]+\n$`).MatchString(out) {
		t.Fatalf("fc eval trigger printed %q, want an evaluation id", out)
	}
	evalID, _ := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if got := coordtest.Evaluated(t, c, js, 0); got != evalID {
		t.Fatalf("evaluated %d, fc printed %d", got, evalID)
	}
	builds := coordtest.BuildsOf(t, c, evalID)
	hello, broken, stuck, needs := builds["hello"].ID, builds["broken"].ID, builds["stuck"].ID, builds["needs"].ID
	coordtest.WaitBuild(t, c, hello, 2*time.Minute, "succeeded", func(b coordtest.Build) bool { return b.Status == "succeeded" })
	coordtest.WaitBuild(t, c, broken, 2*time.Minute, "failed", func(b coordtest.Build) bool { return b.Status == "failed" })
	coordtest.WaitBuild(t, c, needs, 2*time.Minute, "dependency_failed", func(b coordtest.Build) bool { return b.Status == "dependency_failed" })

	t.Run("trigger unchanged", func(t *testing.T) {
		fc := sub(t, fc)
		if out := fc.ok("eval", "trigger", "demo/main"); out != "unchanged\n" {
			t.Errorf("second trigger: %q", out)
		}
		var j map[string]any
		fc.okJSON(&j, "eval", "trigger", "demo/main")
		if j["evaluation_id"] != nil || j["reason"] != "unchanged" {
			t.Errorf("trigger --json: %v", j)
		}
		fc.fails(client.ExitUsage, `"demo" is not PROJECT/JOBSET`, "eval", "trigger", "demo")
		fc.fails(client.ExitError, `jobset_id: there is no jobset "demo/nope" (HTTP 422 Unprocessable Entity)`, "eval", "trigger", "demo/nope")
	})
	t.Run("projects", func(t *testing.T) { testProjects(t, fc, repo.Dir) })
	t.Run("jobsets", func(t *testing.T) { testJobsets(t, fc) })
	t.Run("evals", func(t *testing.T) { testEvals(t, fc, evalID) })
	t.Run("builds", func(t *testing.T) { testBuilds(t, fc, evalID, hello, broken, stuck, needs) })
	t.Run("agents", func(t *testing.T) { testAgents(t, fc) })
	t.Run("log", func(t *testing.T) { testLog(t, fc, hello, broken, needs) })
	t.Run("actions", func(t *testing.T) { testActions(t, c, fc, broken, stuck) })
	t.Run("login", func(t *testing.T) { testLogin(t, c) })
	t.Run("login on a terminal", func(t *testing.T) { testLoginTerminal(t, c) })
	t.Run("errors", func(t *testing.T) { testErrors(t, c, fc) })
	t.Run("pages", func(t *testing.T) { testPages(t, c, fc) }) // last: it adds projects
}

// testPages: a list longer than the API's largest page is followed to its end.
func testPages(t *testing.T, c *coordtest.Coordinator, fc fcEnv) {
	fc = sub(t, fc)
	const n = 1100 // three pages of 500
	if _, err := c.DB.Pool().Exec(context.Background(), `INSERT INTO projects (name, repository_url)
		SELECT 'many-' || g, 'https://example.org/' || g || '.git' FROM generate_series(1, $1::int) g`, n); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, r := range table(t, fc.ok("projects"))[1:] {
		seen[r[1]]++
	}
	var l listJSON
	fc.okJSON(&l, "projects")
	if len(seen) != n+1 || l.Total != n+1 || len(l.Items) != n+1 || l.Limit != n+1 {
		t.Errorf("fc projects: %d names in the table; --json: total %d, %d items, limit %d; want %d", len(seen), l.Total, len(l.Items), l.Limit, n+1)
	}
	for _, it := range l.Items {
		seen[it["name"].(string)]++
	}
	for name, k := range seen {
		if k != 2 {
			t.Errorf("project %s listed %d times in the table and the JSON together, want 2", name, k)
		}
	}
	if rows := table(t, fc.ok("projects", "--limit", "5", "--offset", "1098")); len(rows) != 4 {
		t.Errorf("fc projects --limit 5 --offset 1098: %d rows, want the last 3", len(rows)-1)
	}
}

func sub(t *testing.T, fc fcEnv) fcEnv { fc.t = t; return fc }

func testProjects(t *testing.T, fc fcEnv, repoDir string) {
	fc = sub(t, fc)
	out := fc.ok("projects")
	aligned(t, out)
	rows := table(t, out)
	if len(rows) != 2 || strings.Join(rows[0], "|") != "ID|NAME|ENABLED|OWNER|REPOSITORY" ||
		rows[1][1] != "demo" || rows[1][2] != "true" || rows[1][3] != "test-admin" || rows[1][4] != repoDir {
		t.Errorf("fc projects:\n%s", out)
	}
	var l listJSON
	fc.okJSON(&l, "projects")
	if l.Total != 1 || len(l.Items) != 1 || l.Items[0]["name"] != "demo" {
		t.Errorf("fc projects --json: %+v", l)
	}
	kv := show(fc.ok("projects", "demo"))
	if kv["name"] != "demo" || kv["repository_url"] != repoDir || kv["webhook_secret_set"] != "true" || kv["forge"] != "-" {
		t.Errorf("fc projects demo: %v", kv)
	}
	var p map[string]any
	fc.okJSON(&p, "projects", "demo")
	if p["name"] != "demo" || p["owner_key_name"] != "test-admin" {
		t.Errorf("fc projects demo --json: %v", p)
	}
	fc.fails(client.ExitNotFound, "(HTTP 404 Not Found)", "projects", "nope")
}

func testJobsets(t *testing.T, fc fcEnv) {
	fc = sub(t, fc)
	out := fc.ok("jobsets", "demo")
	aligned(t, out)
	rows := table(t, out)
	if len(rows) != 2 || rows[0][1] != "NAME" || rows[1][1] != "main" || rows[1][2] != "enabled" || rows[1][3] != "main" {
		t.Errorf("fc jobsets demo:\n%s", out)
	}
	var l listJSON
	fc.okJSON(&l, "jobsets", "demo")
	if l.Total != 1 || l.Items[0]["name"] != "main" || l.Items[0]["project"] != "demo" {
		t.Errorf("fc jobsets demo --json: %+v", l)
	}
	for _, args := range [][]string{{"jobsets", "demo", "main"}, {"jobsets", "demo/main"}} {
		kv := show(fc.ok(args...))
		if kv["name"] != "main" || kv["project"] != "demo" || kv["nix_expression"] != "release.nix" || kv["flake_mode"] != "false" {
			t.Errorf("fc %s: %v", strings.Join(args, " "), kv)
		}
	}
	var j map[string]any
	fc.okJSON(&j, "jobsets", "demo", "main")
	if j["name"] != "main" || j["state"] != "enabled" {
		t.Errorf("fc jobsets demo main --json: %v", j)
	}
	fc.fails(client.ExitNotFound, "HTTP 404", "jobsets", "demo", "nope")
	fc.fails(client.ExitUsage, "usage: fc jobsets PROJECT [JOBSET]", "jobsets")
}

func testEvals(t *testing.T, fc fcEnv, evalID int64) {
	fc = sub(t, fc)
	out := fc.ok("evals", "demo/main")
	aligned(t, out)
	rows := table(t, out)
	id := strconv.FormatInt(evalID, 10)
	if len(rows) != 2 || rows[0][0] != "ID" || rows[1][0] != id || rows[1][1] != "succeeded" || rows[1][3] != "4" {
		t.Errorf("fc evals demo/main:\n%s", out)
	}
	var l listJSON
	fc.okJSON(&l, "evals", "demo/main")
	if l.Total != 1 || l.Items[0]["id"] != float64(evalID) {
		t.Errorf("fc evals --json: %+v", l)
	}
	out = fc.ok("eval", id)
	kv := show(out)
	if kv["id"] != id || kv["status"] != "succeeded" || kv["nr_jobs"] != "4" || kv["nr_errors"] != "1" {
		t.Errorf("fc eval %s:\n%s", id, out)
	}
	if !regexp.MustCompile(`(?m)^errors:\n  ATTRIBUTE +MESSAGE\n  bad +.*bad does not evaluate`).MatchString(out) {
		t.Errorf("fc eval %s: no errors table naming bad:\n%s", id, out)
	}
	var e map[string]any
	fc.okJSON(&e, "eval", id)
	if e["status"] != "succeeded" || e["nr_builds"] != float64(4) {
		t.Errorf("fc eval --json: %v", e)
	}
	fc.fails(client.ExitNotFound, "HTTP 404", "eval", "999999")
	fc.fails(client.ExitUsage, "must be a number", "eval", "x")
}

func testBuilds(t *testing.T, fc fcEnv, evalID, hello, broken, stuck, needs int64) {
	fc = sub(t, fc)
	out := fc.ok("builds", "--jobset", "demo/main")
	aligned(t, out)
	rows := table(t, out)
	if len(rows) != 5 || strings.Join(rows[0], "|") != "ID|EVAL|PROJECT|JOBSET|JOB|SYSTEM|STATUS" {
		t.Fatalf("fc builds --jobset demo/main:\n%s", out)
	}
	got := map[string]string{}
	for _, r := range rows[1:] {
		got[r[4]] = r[0] + " " + r[1] + " " + r[2] + " " + r[3] + " " + r[6]
	}
	want := map[string]string{
		"hello":  fmt.Sprintf("%d %d demo main succeeded", hello, evalID),
		"broken": fmt.Sprintf("%d %d demo main failed", broken, evalID),
		"stuck":  fmt.Sprintf("%d %d demo main queued", stuck, evalID),
		"needs":  fmt.Sprintf("%d %d demo main dependency_failed", needs, evalID),
	}
	for job, w := range want {
		if got[job] != w {
			t.Errorf("fc builds: %s is %q, want %q", job, got[job], w)
		}
	}
	rows = table(t, fc.ok("builds", "--status", "failed", "--eval", strconv.FormatInt(evalID, 10)))
	if len(rows) != 2 || rows[1][4] != "broken" {
		t.Errorf("fc builds --status failed: %v", rows)
	}
	// One page as the API answers it.
	var l listJSON
	fc.okJSON(&l, "builds", "--jobset", "demo/main", "--limit", "1")
	if l.Total != 4 || len(l.Items) != 1 || l.Limit != 1 {
		t.Errorf("fc builds --limit 1 --json: %+v", l)
	}
	fc.okJSON(&l, "builds", "--jobset", "demo/main", "--limit", "3", "--offset", "2")
	if l.Total != 4 || len(l.Items) != 2 {
		t.Errorf("fc builds --limit 2 --offset 2 --json: %+v", l)
	}
	out = fc.ok("build", strconv.FormatInt(broken, 10))
	kv := show(out)
	if kv["id"] != strconv.FormatInt(broken, 10) || kv["job"] != "broken" || kv["status"] != "failed" || kv["status_code"] != "1" {
		t.Errorf("fc build %d:\n%s", broken, out)
	}
	if !regexp.MustCompile(`(?m)^steps:\n  ID +STATUS +AGENT +ATTEMPTS +LOG +DERIVATION\n  [0-9]+ +failed +builder +1 +[0-9]+ +broken-.*\.drv$`).MatchString(out) {
		t.Errorf("fc build %d: no steps table:\n%s", broken, out)
	}
	var b map[string]any
	fc.okJSON(&b, "build", strconv.FormatInt(hello, 10))
	if b["status"] != "succeeded" || b["job"] != "hello" {
		t.Errorf("fc build --json: %v", b)
	}
	if outs, _ := b["outputs"].(map[string]any); outs["out"] == nil {
		t.Errorf("fc build --json without outputs: %v", b)
	}
	fc.fails(client.ExitNotFound, "HTTP 404", "build", "999999")
	fc.fails(client.ExitUsage, `"demo" is not PROJECT/JOBSET`, "builds", "--jobset", "demo")
	fc.fails(client.ExitUsage, "flag provided but not defined: -bogus", "builds", "--bogus")
}

func testAgents(t *testing.T, fc fcEnv) {
	fc = sub(t, fc)
	out := fc.ok("agents")
	aligned(t, out)
	names := map[string][]string{}
	for _, r := range table(t, out)[1:] {
		names[r[1]] = r
	}
	if len(names) != 2 || names["builder"] == nil || names["builder"][2] != "true" || names["evaluator"][7] != "eval" {
		t.Errorf("fc agents:\n%s", out)
	}
	var l listJSON
	fc.okJSON(&l, "agents")
	if l.Total != 2 {
		t.Errorf("fc agents --json: %+v", l)
	}
	kv := show(fc.ok("agents", "builder"))
	if kv["name"] != "builder" || kv["connected"] != "true" || kv["roles"] != "build" {
		t.Errorf("fc agents builder: %v", kv)
	}
	var a map[string]any
	fc.okJSON(&a, "agents", kv["id"])
	if a["name"] != "builder" {
		t.Errorf("fc agents %s --json: %v", kv["id"], a)
	}
	fc.fails(client.ExitNotFound, `no agent is named "nobody"`, "agents", "nobody")
	fc.fails(client.ExitNotFound, "HTTP 404", "agents", "999999")
}

func testLog(t *testing.T, fc fcEnv, hello, broken, needs int64) {
	fc = sub(t, fc)
	if out := fc.ok("log", strconv.FormatInt(hello, 10)); out != "hello from fc\n" {
		t.Errorf("fc log: %q", out)
	}
	if out := fc.ok("log", "-f", strconv.FormatInt(hello, 10)); out != "hello from fc\n" {
		t.Errorf("fc log -f of a finished build: %q", out)
	}
	r := fc.fails(client.ExitFailed, fmt.Sprintf("build %d ended failed", broken), "log", "--follow", strconv.FormatInt(broken, 10))
	if !strings.HasPrefix(r.Stdout, "boom\nerror: builder for ") || strings.Count(r.Stdout, "boom") != 1 {
		t.Errorf("fc log -f of a failed build printed %q", r.Stdout)
	}
	// A build that never ran has no log; fc log -f still answers with its result.
	r = fc.fails(client.ExitFailed, fmt.Sprintf("build %d ended dependency_failed", needs), "log", "-f", strconv.FormatInt(needs, 10))
	if r.Stdout != "" {
		t.Errorf("fc log -f of a dependency_failed build: %+v", r)
	}
	// --json: the stream's messages, each with its offset, the last the end.
	out := fc.ok("log", "-f", "--json", strconv.FormatInt(hello, 10))
	msgs := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	var first, last map[string]any
	if len(msgs) != 2 || json.Unmarshal([]byte(msgs[0]), &first) != nil || json.Unmarshal([]byte(msgs[1]), &last) != nil ||
		first["type"] != "log" || first["offset"] != float64(0) || first["data"] != "hello from fc\n" || first["next"] != float64(14) ||
		last["type"] != "end" || last["status"] != "succeeded" {
		t.Errorf("fc log -f --json:\n%s", out)
	}
	fc.fails(client.ExitUsage, "--json needs -f", "log", "--json", strconv.FormatInt(hello, 10))
	fc.fails(client.ExitNotFound, "HTTP 404", "log", "-f", "999999")
	fc.fails(client.ExitNotFound, "HTTP 404", "log", "999999")
}

func testActions(t *testing.T, c *coordtest.Coordinator, fc fcEnv, broken, stuck int64) {
	fc = sub(t, fc)
	id := strconv.FormatInt(stuck, 10)
	if out := fc.ok("build", "bump", id); out != fmt.Sprintf("build %d: 1 step moved to the front of the queue\n", stuck) {
		t.Errorf("fc build bump: %q", out)
	}
	var j map[string]any
	fc.okJSON(&j, "build", "bump", id)
	if j["bumped_steps"] != float64(1) {
		t.Errorf("fc build bump --json: %v", j)
	}
	// fc log -f waits for a build that has not started; Ctrl-C stops it.
	waiting := fmt.Sprintf("build %d has not started yet; waiting", stuck)
	ctx, interrupt := context.WithCancel(context.Background())
	stderr, done := fc.start(ctx, "log", "-f", id)
	stderr.waitFor(t, waiting)
	interrupt()
	if r := <-done; r.Code != client.ExitStopped || !strings.HasSuffix(r.Stderr, "fc: interrupted\n") {
		t.Errorf("fc log -f interrupted: %+v", r)
	}
	// Cancelled while fc follows it, the build ends fc log -f with its status.
	stderr, done = fc.start(context.Background(), "log", "-f", id)
	stderr.waitFor(t, waiting)
	if out := fc.ok("build", "cancel", id); out != fmt.Sprintf("build %d: cancelled\n", stuck) {
		t.Errorf("fc build cancel: %q", out)
	}
	if r := <-done; r.Code != client.ExitFailed || !strings.Contains(r.Stderr, fmt.Sprintf("build %d ended cancelled", stuck)) {
		t.Errorf("fc log -f of a build cancelled meanwhile: %+v", r)
	}
	if b := coordtest.GetBuild(t, c, stuck); b.Status != "cancelled" {
		t.Errorf("after fc build cancel the build is %s", b.Status)
	}
	fc.fails(client.ExitError, "has finished: nothing to do (HTTP 409 Conflict)", "build", "cancel", id)
	fc.fails(client.ExitError, "(HTTP 409 Conflict)", "build", "bump", id)
	out := fc.ok("build", "restart", strconv.FormatInt(broken, 10))
	if out != fmt.Sprintf("build %d: 2 steps restarted\n", broken) { // broken's and needs'

		t.Errorf("fc build restart: %q", out)
	}
	coordtest.WaitBuild(t, c, broken, 2*time.Minute, "failed again", func(b coordtest.Build) bool {
		return b.Status == "failed" && len(b.Steps) > 0 && b.Steps[0].Attempts >= 1
	})
	var rj map[string]any
	fc.okJSON(&rj, "build", "restart", strconv.FormatInt(broken, 10))
	if rj["restarted_steps"] != float64(2) {
		t.Errorf("fc build restart --json: %v", rj)
	}
	fc.fails(client.ExitUsage, "usage: fc build restart ID", "build", "restart")
}

func testLogin(t *testing.T, c *coordtest.Coordinator) {
	home := t.TempDir()
	fc := newEnv(t, map[string]string{"XDG_CONFIG_HOME": home})
	fc.fails(client.ExitAuth, "not logged in", "projects")
	fc.fails(client.ExitAuth, "not logged in", "build", "cancel", "1")
	fc.fails(client.ExitUsage, "which coordinator?", "login", "--key", c.Admin)

	fc.fails(client.ExitAuth, "unknown API key (HTTP 401 Unauthorized)", "login", c.URL, "--key", "fc_00000000000000000000000000000000")
	path := filepath.Join(home, "fc", "config.toml")
	if _, err := os.Stat(path); err == nil {
		t.Errorf("a refused login wrote %s", path)
	}
	r := fc.runIn(c.Admin+"\n", "login", c.URL+"/")
	if r.Code != 0 || r.Stdout != fmt.Sprintf("logged in to %s (saved in %s)\n", c.URL, path) {
		t.Fatalf("fc login with the key on stdin: %+v", r)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("config file: %v %v", st, err)
	}
	if dir, _ := os.Stat(filepath.Dir(path)); dir.Mode().Perm() != 0o700 {
		t.Errorf("config directory mode %v", dir.Mode().Perm())
	}
	body, _ := os.ReadFile(path)
	if !strings.Contains(string(body), fmt.Sprintf("url = %q", c.URL)) || !strings.Contains(string(body), fmt.Sprintf("api_key = %q", c.Admin)) {
		t.Errorf("config file:\n%s", body)
	}
	if rows := table(t, fc.ok("projects")); len(rows) != 2 || rows[1][1] != "demo" {
		t.Errorf("fc projects after login: %v", rows)
	}
	// FC_URL and FC_API_KEY override what is stored: a read-only key may not cancel.
	_, readOnly, err := auth.CreateKey(context.Background(), c.DB, "viewer", storage.RoleReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	fc.with("FC_API_KEY", readOnly).fails(client.ExitAuth, "HTTP 403 Forbidden", "build", "cancel", "1")
	fc.with("FC_URL", "http://127.0.0.1:1").fails(client.ExitError, "connection refused", "projects")

	// Without XDG_CONFIG_HOME: ~/.config/fc/config.toml, the key from --key.
	fc2 := newEnv(t, nil)
	fc2.ok("login", c.URL, "--key", c.Admin)
	st, err = os.Stat(filepath.Join(fc2.env["HOME"], ".config", "fc", "config.toml"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("~/.config/fc/config.toml: %v %v", st, err)
	}
	if out := fc2.ok("logout"); !strings.HasPrefix(out, "logged out") {
		t.Errorf("fc logout: %q", out)
	}
	fc2.fails(client.ExitAuth, "not logged in", "projects")
	if out := fc2.ok("logout"); out != "not logged in: nothing to remove\n" {
		t.Errorf("second fc logout: %q", out)
	}
}

func testErrors(t *testing.T, c *coordtest.Coordinator, fc fcEnv) {
	fc = sub(t, fc)
	fc.with("FC_API_KEY", "fc_00000000000000000000000000000000").fails(client.ExitAuth, "unknown API key (HTTP 401 Unauthorized)", "projects")
	// Without a key reads work; the API's message says why a write is refused.
	anon := newEnv(t, map[string]string{"FC_URL": c.URL})
	if rows := table(t, anon.ok("projects")); len(rows) != 2 {
		t.Errorf("fc projects without a key: %v", rows)
	}
	anon.fails(client.ExitAuth, "not logged in", "eval", "trigger", "demo/main")
	fc.fails(client.ExitUsage, "no command given", []string{}...)
	fc.fails(client.ExitUsage, `unknown command "frob"`, "frob")
	fc.fails(client.ExitUsage, "usage: fc projects [NAME]", "projects", "a", "b")
	fc.fails(client.ExitUsage, "--limit and --offset must not be negative", "builds", "--limit", "-1")
	fc.fails(client.ExitError, "limit must be an integer from 1 to 500 (HTTP 422", "builds", "--limit", "501")
	fc.with("FC_URL", "ftp://x").fails(client.ExitUsage, "must be http://", "projects")
}
