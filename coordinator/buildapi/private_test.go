package buildapi_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage"
)

// TestPrivateCache_ProductDownloadsAndLogsNeedAReadKey: with cache.private, a product
// download and /nix-cache/log need an API key of any role, as a bearer key or as the
// basic password a netrc sends; without cache.private anyone may read both. An agent's
// cache read token opens the cache (the log) but not the API (the download). One
// coordinator with a public cache builds; a second one on the same database and files
// serves them privately.
func TestPrivateCache_ProductDownloadsAndLogsNeedAReadKey(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf(`let
  %s
in {
  products = mk "products" { args = sh ''
    echo making the secret report
    mkdir -p $out/nix-support
    echo secret-product > $out/report.txt
    echo "file doc $out/report.txt" > $out/nix-support/hydra-build-products
  ''; };
}
`, coordtest.MkLet(coordtest.Salt(t)))})
	_, js := c.Project("private", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	builder := coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "builder"})
	c.Trigger(js, false)
	id := coordtest.BuildsOf(t, c, coordtest.Evaluated(t, c, js, 0))["products"].ID
	b := coordtest.WaitBuild(t, c, id, 120*time.Second, "finished", coordtest.Build.Finished)
	if b.Status != "succeeded" || len(b.Products) != 1 || b.Products[0].DownloadURL == "" {
		t.Fatalf("build %s with products %+v", b.Status, b.Products)
	}
	download := b.Products[0].DownloadURL
	logPath := "/nix-cache/log/" + strings.TrimPrefix(b.DrvPath, "/nix/store/")
	const product, logLine = "secret-product\n", "making the secret report"
	anonymous := func(*http.Request) {}
	for path, want := range map[string]string{download: product, logPath: logLine} {
		if status, _, body := fetch(t, c.URL+path, anonymous); status != 200 || !strings.Contains(body, want) {
			t.Errorf("public cache, anonymous %s: %d %q, want 200 with %q", path, status, body, want)
		}
	}

	private := coordtest.Start(t, coordtest.Options{DB: c.DB, Config: func(cfg *config.Config) {
		cfg.StateDir = c.Cfg.StateDir
		cfg.Cache.Private = true
	}})
	_, reader, err := auth.CreateKey(context.Background(), c.DB, "reader", storage.RoleReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	bearer := func(key string) func(*http.Request) {
		return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+key) }
	}
	basic := func(key string) func(*http.Request) { return func(r *http.Request) { r.SetBasicAuth("nix", key) } }
	unknown := bearer("fc_00000000000000000000000000000000")
	agentToken := basic(cacheToken(t, builder))
	cases := []struct {
		name, path string
		auth       func(*http.Request)
		status     int
		body       string // contained in the answer when 200
	}{
		{"download, anonymous", download, anonymous, 401, ""},
		{"download, unknown key", download, unknown, 401, ""},
		{"download, read-only bearer key", download, bearer(reader), 200, product},
		{"download, read-only key as basic password", download, basic(reader), 200, product},
		{"log, anonymous", logPath, anonymous, 401, ""},
		{"log, unknown key", logPath, unknown, 401, ""},
		{"log, read-only bearer key", logPath, bearer(reader), 200, logLine},
		{"log, read-only key as basic password", logPath, basic(reader), 200, logLine},
		{"download, an agent's cache token", download, agentToken, 401, ""},
		{"log, an agent's cache token", logPath, agentToken, 200, logLine},
	}
	for _, tc := range cases {
		status, header, body := fetch(t, private.URL+tc.path, tc.auth)
		switch {
		case status != tc.status:
			t.Errorf("%s: %d, want %d; body %q", tc.name, status, tc.status, body)
		case status == 200 && !strings.Contains(body, tc.body):
			t.Errorf("%s: body %q, want %q", tc.name, body, tc.body)
		case status == 401 && (strings.Contains(body, product) || strings.Contains(body, logLine)):
			t.Errorf("%s: refused, but the answer holds the content: %q", tc.name, body)
		case status == 401 && strings.HasSuffix(tc.name, "anonymous") && !strings.HasPrefix(header.Get("WWW-Authenticate"), "Basic "):
			// Asked for a key, a browser prompts for one (any user, the key as password).
			t.Errorf("%s: 401 without a basic challenge (WWW-Authenticate %q)", tc.name, header.Get("WWW-Authenticate"))
		}
	}
	// A write never takes basic credentials: a browser would send them by itself.
	req, _ := http.NewRequest("POST", fmt.Sprintf("%s/api/v1/builds/%d/restart", private.URL, id), nil)
	req.SetBasicAuth("admin", private.Admin)
	if resp, err := http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != 401 {
		t.Errorf("a write with basic credentials: %d, want 401", resp.StatusCode)
	}

}

// cacheToken is the cache read token the agent's Nix presents: the password of the
// first entry of its netrc file.
func cacheToken(t *testing.T, a *coordtest.Agent) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(a.StateDir, "cache.netrc"))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])
	if len(f) != 6 || f[4] != "password" {
		t.Fatalf("agent %s's netrc file starts with %d fields, want machine, login and password", a.Name, len(f))
	}
	return f[5]
}

func fetch(t *testing.T, url string, set func(*http.Request)) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	set(req)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(body)
}
