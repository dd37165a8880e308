package declare_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/coordinator/declare"
)

type projectState struct {
	DeclarativeFile  string `json:"declarative_file"`
	DeclarativeError string `json:"declarative_error"`
}

// TestRepositoryDeclaresJobsets: a project's .fc.toml in a real git repository
// creates its jobsets (read by the coordinator's own loop), a commit changing it
// updates them and disables the one it drops, and a broken file is recorded on the
// project and changes nothing.
func TestRepositoryDeclaresJobsets(t *testing.T) {
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{".fc.toml": `# the jobsets of this repository
[[jobsets]]
name = "main"
branch = "main"
check_interval = 0

[[jobsets]]
name = "docs"
branch = "main"
check_interval = 0
`})
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) { cfg.Eval.DeclarativeInterval = 1 }})
	if code := c.Do("POST", "/api/v1/projects", c.Admin, map[string]any{"name": "spec", "repository_url": repo.Dir,
		"declarative_file": ".fc.toml"}, nil); code != 201 {
		t.Fatalf("create project: %d", code)
	}
	jobsets := func() map[string]object {
		return byName(get[list[object]](t, c, "/api/v1/projects/spec/jobsets", "").Items)
	}
	var js map[string]object
	coordtest.Eventually(t, 30*time.Second, "the repository's jobsets are created", func() bool {
		js = jobsets()
		return len(js) == 2
	})
	if m := js["main"]; !m.Declared || m.DeclaredIn != "repository:spec/.fc.toml" || m.Branch != "main" {
		t.Errorf("main = %+v", m)
	}
	var out struct {
		Error string `json:"error"`
	}
	if code := c.Do("PUT", "/api/v1/projects/spec/jobsets/main", c.Admin, map[string]any{"branch": "x"}, &out); code != 409 ||
		!strings.Contains(out.Error, "declared in the repository's spec/.fc.toml; change it there") {
		t.Errorf("edit a jobset the repository declares: %d %q, want 409", code, out.Error)
	}
	// A jobset made through the API beside them is the API's.
	if code := c.Do("POST", "/api/v1/projects/spec/jobsets", c.Admin, map[string]any{"name": "mine", "check_interval": 0}, nil); code != 201 {
		t.Errorf("create a jobset by hand in a project with a declarative file: %d, want 201", code)
	}

	repo.Commit(map[string]string{".fc.toml": `[[jobsets]]
name = "main"
branch = "release"
check_interval = 0

[[jobsets]]
name = "nightly"
flake_mode = false
nix_expression = "release.nix"
check_interval = 0
`})
	coordtest.Eventually(t, 30*time.Second, "the next check applies the changed file", func() bool {
		js = jobsets()
		return js["main"].Branch == "release" && js["nightly"].Declared
	})
	if d := js["docs"]; d.State != "disabled" || d.Declared {
		t.Errorf("docs, dropped from the file = %+v, want disabled and no longer declared", d)
	}
	if m := js["mine"]; m.Declared || m.State != "enabled" {
		t.Errorf("the hand-made jobset = %+v, want left alone", m)
	}

	repo.Commit(map[string]string{".fc.toml": "[[jobsets]]\nname = \"main\"\nbranch = \"release\"\n\n[[jobsets]]\nname = \"nightly\"\nstate = \"sometimes\"\n"})
	var p projectState
	coordtest.Eventually(t, 30*time.Second, "the broken file is recorded on the project", func() bool {
		p = get[projectState](t, c, "/api/v1/projects/spec", "")
		return p.DeclarativeError != ""
	})
	if !strings.Contains(p.DeclarativeError, "line 7: jobsets[1].state") || !strings.Contains(p.DeclarativeError, ".fc.toml at ") {
		t.Errorf("declarative_error = %q, want the file, line and key", p.DeclarativeError)
	}
	js = jobsets()
	if js["nightly"].State != "enabled" || !js["nightly"].Declared || js["main"].Branch != "release" {
		t.Errorf("a broken file changed jobsets: %+v", js)
	}

	// A file that parses again clears the error (checked directly, as the loop does).
	repo.Commit(map[string]string{".fc.toml": "[[jobsets]]\nname = \"main\"\nbranch = \"release\"\ncheck_interval = 0\n"})
	r := declare.NewRepositories(declare.RepositoriesConfig{GitDir: t.TempDir(), GitTimeout: time.Minute}, c.DB)
	if err := r.CheckAll(t.Context()); err != nil {
		t.Fatal(err)
	}
	if p = get[projectState](t, c, "/api/v1/projects/spec", ""); p.DeclarativeError != "" {
		t.Errorf("declarative_error after a good file = %q", p.DeclarativeError)
	}
	if js = jobsets(); js["nightly"].State != "disabled" {
		t.Errorf("nightly, dropped = %+v", js["nightly"])
	}
}

// A push webhook has the project's .fc.toml read at once: with an hour between
// reads, a jobset a pushed commit adds exists right after the push, and a push to a
// project whose file did not change changes nothing.
func TestRepositoryDeclaresJobsets_ReadOnPush(t *testing.T) {
	repo := coordtest.NewRepo(t)
	const jobset = "[[jobsets]]\nname = %q\nbranch = \"main\"\ncheck_interval = 0\n"
	repo.Commit(map[string]string{".fc.toml": fmt.Sprintf(jobset, "main")})
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) { cfg.Eval.DeclarativeInterval = 3600 }})
	const secret = "push-secret-0123456789"
	if code := c.Do("POST", "/api/v1/projects", c.Admin, map[string]any{"name": "spec", "repository_url": repo.Dir,
		"declarative_file": ".fc.toml", "webhook_secret": secret}, nil); code != 201 {
		t.Fatalf("create project: %d", code)
	}
	jobsets := func() map[string]object {
		return byName(get[list[object]](t, c, "/api/v1/projects/spec/jobsets", "").Items)
	}
	push := func() {
		t.Helper()
		body := []byte(`{"ref":"refs/heads/main","repository":{"default_branch":"main"},"after":"` + repo.Git("rev-parse", "HEAD") + `"}`)
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write(body)
		req, err := http.NewRequest("POST", c.URL+"/api/v1/webhooks/spec/github", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-GitHub-Event", "push")
		req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("push webhook: %d", resp.StatusCode)
		}
	}
	// The first push reads the file the project was created with (the timer's first
	// pass may have read it already; either way one jobset).
	push()
	coordtest.Eventually(t, 30*time.Second, "the repository's jobset is created", func() bool { return len(jobsets()) == 1 })
	repo.Commit(map[string]string{".fc.toml": fmt.Sprintf(jobset, "main") + fmt.Sprintf(jobset, "docs")})
	push()
	coordtest.Eventually(t, 30*time.Second, "the jobset the pushed commit adds is created without waiting an hour", func() bool {
		_, ok := jobsets()["docs"]
		return ok
	})
	if js := jobsets(); len(js) != 2 || !js["docs"].Declared {
		t.Errorf("after the push: %+v", js)
	}
}
