package declare_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	agentcli "github.com/fc-ci/fc/agent/cli"
	agentconfig "github.com/fc-ci/fc/agent/config"
	"github.com/fc-ci/fc/agent/identity"
	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/coordinator/people"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

// fixture is a config directory: secrets in files, an agent's key, and the TOML.
type fixture struct {
	dir, path            string
	fileKey, hashKey     string
	alicePW, bobPW       string
	agentState, agentPub string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), alicePW: "correct horse battery", bobPW: "bob's long password"}
	f.path = filepath.Join(f.dir, "coordinator.toml")
	var err error
	if f.fileKey, _, err = auth.NewKey(); err != nil {
		t.Fatal(err)
	}
	if f.hashKey, _, err = auth.NewKey(); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(f.dir, "deploy.key"), f.fileKey+"\n")
	writeFile(t, filepath.Join(f.dir, "alice.pw"), f.alicePW+"\n")
	writeFile(t, filepath.Join(f.dir, "bob.pw"), f.bobPW)
	f.agentState = t.TempDir()
	acfg := agentconfig.Defaults()
	acfg.Agent.StateDir = f.agentState
	id, err := identity.Generate(acfg.KeyPath(), "builder-1")
	if err != nil {
		t.Fatal(err)
	}
	f.agentPub = filepath.Join(f.dir, "builder-1.pub")
	writeFile(t, f.agentPub, id.PublicKey("builder-1")+"\n")
	return f
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// toml is the fixture's configuration; changed is the second version (a key, a
// user, a jobset and the agent removed; a branch changed).
func (f *fixture) toml(changed bool) string {
	sum := sha256.Sum256([]byte(f.hashKey))
	var b strings.Builder
	fmt.Fprintf(&b, "[[users]]\nusername = \"alice\"\nrole = \"admin\"\nemail = \"alice@example.org\"\npassword_file = \"alice.pw\"\n\n")
	if !changed {
		fmt.Fprintf(&b, "[[users]]\nusername = \"bob\"\nrole = \"read-only\"\npassword_file = %q\n\n", filepath.Join(f.dir, "bob.pw"))
		fmt.Fprintf(&b, "[[api_keys]]\nname = \"deploy\"\nrole = \"admin\"\nkey_file = \"deploy.key\"\n\n")
		fmt.Fprintf(&b, "[[agents]]\nname = \"builder-1\"\npublic_key_file = %q\npush = true\n\n", f.agentPub)
	}
	fmt.Fprintf(&b, "[[api_keys]]\nname = \"ops\"\nrole = \"admin\"\nkey_hash = %q\n\n", hex.EncodeToString(sum[:]))
	branch := "main"
	if changed {
		branch = "stable"
	}
	fmt.Fprintf(&b, `[[projects]]
name = "web"
display_name = "Web site"
repository_url = "https://example.org/web.git"
owner = "alice"

[[projects.jobsets]]
name = "main"
branch = %q
check_interval = 0
pull_requests = true

[[projects.jobsets]]
name = "release"
flake_mode = false
nix_expression = "release.nix"
inputs = [{ name = "nixpkgs", type = "git", value = "https://example.org/nixpkgs.git" }]
`, branch)
	if !changed {
		b.WriteString("\n[[projects.jobsets]]\nname = \"docs\"\n")
	}
	return b.String()
}

func (f *fixture) load(t *testing.T, changed bool) config.Declarations {
	t.Helper()
	writeFile(t, f.path, f.toml(changed))
	cfg, err := config.Load(f.path, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Declarations
}

type list[T any] struct {
	Items []T `json:"items"`
	Total int `json:"total"`
}

type object struct {
	ID         int64  `json:"id"`
	Name       string `json:"name"`
	Username   string `json:"username"`
	Branch     string `json:"branch"`
	State      string `json:"state"`
	Enabled    bool   `json:"enabled"`
	Connected  bool   `json:"connected"`
	Revoked    bool   `json:"revoked"`
	Push       bool   `json:"push"`
	PRs        bool   `json:"pull_requests"`
	Owner      string `json:"owner_user_name"`
	Declared   bool   `json:"declared"`
	DeclaredIn string `json:"declared_in"`
	Inputs     []struct {
		Name, Type, Value string
	} `json:"inputs"`
}

func get[T any](t *testing.T, c *coordtest.Coordinator, path, key string) T {
	t.Helper()
	var out T
	if code := c.Do("GET", path, key, nil, &out); code != 200 {
		t.Fatalf("GET %s: %d", path, code)
	}
	return out
}

func byName(items []object) map[string]object {
	m := map[string]object{}
	for _, o := range items {
		m[o.Name+o.Username] = o
	}
	return m
}

// startAgent runs an agent with the declared key and no enrollment token: it can
// connect only because its key is pinned by the declaration.
func startAgent(t *testing.T, c *coordtest.Coordinator, stateDir string) {
	t.Helper()
	cfg := agentconfig.Defaults()
	cfg.Coordinator.URL = c.URL
	cfg.Agent.Name = "builder-1"
	cfg.Agent.StateDir = stateDir
	cfg.Agent.Roles = []string{"build"}
	d, err := agentcli.NewDaemon(cfg, slog.New(slog.NewTextHandler(c.Log, nil)).With("side", "agent"), 0)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func TestDeclarations_AppliedAtStartKeptOnRestartRefusedByTheAPIAndChanged(t *testing.T) {
	f := newFixture(t)
	decl := f.load(t, false)
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) { cfg.Declarations = decl }})

	// Both kinds of declared key authenticate (as admins); an unknown one does not.
	for _, key := range []string{f.fileKey, f.hashKey} {
		keys := get[list[object]](t, c, "/api/v1/api-keys", key)
		if m := byName(keys.Items); !m["deploy"].Declared || m["ops"].DeclaredIn != f.path || m["test-admin"].Declared {
			t.Errorf("api keys = %+v, want deploy and ops declared in %s, test-admin not", keys.Items, f.path)
		}
	}
	if code := c.Do("GET", "/api/v1/api-keys", "fc_00000000000000000000000000000000", nil, nil); code != 401 {
		t.Errorf("an undeclared key: %d, want 401", code)
	}

	p := get[object](t, c, "/api/v1/projects/web", "")
	if !p.Declared || p.DeclaredIn != f.path || p.Owner != "alice" {
		t.Errorf("project = %+v, want declared in %s, owned by alice", p, f.path)
	}
	js := byName(get[list[object]](t, c, "/api/v1/projects/web/jobsets", "").Items)
	if len(js) != 3 || js["main"].Branch != "main" || !js["main"].PRs || js["release"].PRs || !js["release"].Declared || len(js["release"].Inputs) != 1 ||
		js["release"].Inputs[0].Value != "https://example.org/nixpkgs.git" {
		t.Errorf("jobsets = %+v", js)
	}

	// Declared users sign in with the password from their file.
	accounts := people.New(people.Config{}, c.DB)
	ctx := context.Background()
	if _, err := accounts.SignIn(ctx, "alice", f.alicePW); err != nil {
		t.Errorf("alice signs in: %v", err)
	}
	if _, err := accounts.SignIn(ctx, "bob", "not bob's password"); !errors.Is(err, auth.ErrBadCredentials) {
		t.Errorf("bob with a wrong password: %v, want refused", err)
	}
	users := byName(get[list[object]](t, c, "/api/v1/users", c.Admin).Items)
	if !users["alice"].Declared || !users["bob"].Declared {
		t.Errorf("users = %+v, want alice and bob declared", users)
	}

	// The declared agent connects without an enrollment token.
	startAgent(t, c, f.agentState)
	var agent object
	coordtest.Eventually(t, 30*time.Second, "the declared agent connects", func() bool {
		as := byName(get[list[object]](t, c, "/api/v1/agents", "").Items)
		agent = as["builder-1"]
		return agent.Connected
	})
	if !agent.Declared || !agent.Push {
		t.Errorf("agent = %+v, want declared with push", agent)
	}

	refusedByTheAPI(t, c, f, p.ID, users["alice"].ID, agent.ID, byName(get[list[object]](t, c, "/api/v1/api-keys", c.Admin).Items)["deploy"].ID)

	// A restart applies the same declarations again: nothing new, the password hash kept.
	hash, err := c.DB.UserPasswordHash(ctx, users["alice"].ID)
	if err != nil {
		t.Fatal(err)
	}
	before := totals(t, c)
	c.Restart()
	if after := totals(t, c); after != before {
		t.Errorf("after a restart: %v, before %v: duplicates", after, before)
	}
	if again, _ := c.DB.UserPasswordHash(ctx, users["alice"].ID); again != hash {
		t.Errorf("alice's hash changed on restart although her password file did not")
	}
	if !c.Log.Contains("declarations applied", "changed=false") {
		t.Errorf("the restart's apply did not log an unchanged apply")
	}
	var secrets struct {
		WebhookSecretSet bool `json:"webhook_secret_set"`
	}
	if c.Do("GET", "/api/v1/projects/web", "", nil, &secrets); !secrets.WebhookSecretSet {
		t.Errorf("applying the declarations again dropped the secret set through the API")
	}

	changed(t, c, f, users["bob"].ID)
}

// refusedByTheAPI: each write to a declared object is 409 naming the file.
func refusedByTheAPI(t *testing.T, c *coordtest.Coordinator, f *fixture, projectID, userID, agentID, keyID int64) {
	t.Helper()
	for _, w := range []struct {
		method, path string
		body         any
	}{
		{"PUT", fmt.Sprint("/api/v1/projects/", projectID), map[string]any{"description": "edited"}},
		{"DELETE", "/api/v1/projects/web", nil},
		{"POST", "/api/v1/projects/web/jobsets", map[string]any{"name": "extra"}},
		{"PUT", "/api/v1/projects/web/jobsets/main", map[string]any{"branch": "other"}},
		{"DELETE", "/api/v1/projects/web/jobsets/docs", nil},
		{"DELETE", fmt.Sprint("/api/v1/api-keys/", keyID), nil},
		{"PUT", fmt.Sprint("/api/v1/users/", userID), map[string]any{"full_name": "Eve"}},
		{"DELETE", fmt.Sprint("/api/v1/users/", userID), nil},
		{"PUT", fmt.Sprint("/api/v1/agents/", agentID), map[string]any{"push": false}},
		{"DELETE", fmt.Sprint("/api/v1/agents/", agentID), nil},
	} {
		var out struct {
			Error string `json:"error"`
		}
		code := c.Do(w.method, w.path, c.Admin, w.body, &out)
		if code != 409 || !strings.Contains(out.Error, "declared in "+f.path+"; change it there") {
			t.Errorf("%s %s: %d %q, want 409 naming %s", w.method, w.path, code, out.Error, f.path)
		}
	}
	// Nothing changed.
	if p := get[object](t, c, "/api/v1/projects/web", ""); !p.Declared {
		t.Errorf("project after refused writes: %+v", p)
	}
	// What a config cannot declare (secrets, forge, notifications) is still the API's.
	var secrets struct {
		WebhookSecretSet    bool `json:"webhook_secret_set"`
		FetchCredentialsSet bool `json:"fetch_credentials_set"`
		Declared            bool `json:"declared"`
	}
	if code := c.Do("PUT", "/api/v1/projects/web", c.Admin, map[string]any{"webhook_secret": "a-long-webhook-secret",
		"fetch_credentials": map[string]string{"https_token": "token"}}, &secrets); code != 200 ||
		!secrets.WebhookSecretSet || !secrets.FetchCredentialsSet || !secrets.Declared {
		t.Errorf("set a declared project's secrets: %d %+v, want 200 with both set", code, secrets)
	}
	// Operations that are not edits still work on a declared agent.
	if code := c.Do("POST", fmt.Sprint("/api/v1/agents/", agentID, "/drain"), c.Admin, nil, nil); code != 200 {
		t.Errorf("drain a declared agent: %d, want 200", code)
	}
	if code := c.Do("POST", fmt.Sprint("/api/v1/agents/", agentID, "/enable"), c.Admin, nil, nil); code != 200 {
		t.Errorf("enable a declared agent: %d, want 200", code)
	}
}

func totals(t *testing.T, c *coordtest.Coordinator) [5]int {
	t.Helper()
	return [5]int{
		get[list[object]](t, c, "/api/v1/projects", "").Total,
		get[list[object]](t, c, "/api/v1/projects/web/jobsets", "").Total,
		get[list[object]](t, c, "/api/v1/api-keys", c.Admin).Total,
		get[list[object]](t, c, "/api/v1/users", c.Admin).Total,
		get[list[object]](t, c, "/api/v1/agents", "").Total,
	}
}

// changed applies the second configuration as SIGHUP does.
func changed(t *testing.T, c *coordtest.Coordinator, f *fixture, bobID int64) {
	t.Helper()
	if err := c.ApplyDeclarations(f.load(t, true)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"projects=\"0 created, 0 updated, 0 removed\"", "jobsets=\"0 created, 1 updated, 1 removed\"",
		"api_keys=\"0 created, 0 updated, 1 removed\"", "agents=\"0 created, 0 updated, 1 removed\"", "users=\"0 created, 0 updated, 1 removed\""} {
		if !c.Log.Contains("declarations applied", want) {
			t.Errorf("the apply's log lacks %s", want)
		}
	}
	// The removed key stops working; the other goes on.
	if code := c.Do("GET", "/api/v1/api-keys", f.fileKey, nil, nil); code != 401 {
		t.Errorf("the removed key: %d, want 401", code)
	}
	if code := c.Do("GET", "/api/v1/api-keys", f.hashKey, nil, nil); code != 200 {
		t.Errorf("the kept key: %d, want 200", code)
	}
	js := byName(get[list[object]](t, c, "/api/v1/projects/web/jobsets", "").Items)
	if js["main"].Branch != "stable" || !js["main"].Declared {
		t.Errorf("main = %+v, want branch stable", js["main"])
	}
	// A jobset no longer declared is kept, no longer declared: the API may edit it now.
	if d, ok := js["docs"]; !ok || d.Declared {
		t.Errorf("docs = %+v (present %v), want kept and not declared", d, ok)
	}
	if code := c.Do("PUT", "/api/v1/projects/web/jobsets/docs", c.Admin, map[string]any{"description": "mine now"}, nil); code != 200 {
		t.Errorf("edit the jobset no longer declared: %d, want 200", code)
	}
	bob := get[object](t, c, fmt.Sprint("/api/v1/users/", bobID), c.Admin)
	if bob.Enabled || bob.Declared {
		t.Errorf("bob = %+v, want disabled and no longer declared", bob)
	}
	if _, err := people.New(people.Config{}, c.DB).SignIn(context.Background(), "bob", f.bobPW); !errors.Is(err, auth.ErrBadCredentials) {
		t.Errorf("bob signs in after removal: %v, want refused", err)
	}
	coordtest.Eventually(t, 30*time.Second, "the removed agent is revoked and disconnected", func() bool {
		a := byName(get[list[object]](t, c, "/api/v1/agents", "").Items)["builder-1"]
		return a.Revoked && !a.Connected && !a.Declared
	})
}
