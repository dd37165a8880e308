package evaluator

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// gitHost is a real git HTTP server (git http-backend) that asks for basic
// authentication and records every Authorization header it is sent.
type gitHost struct {
	srv   *httptest.Server
	root  string
	mu    sync.Mutex
	auths []string // Authorization headers received, in order
	hits  int
}

// newGitHost serves the bare repositories under root; token, when not empty, is the
// password it accepts (otherwise it answers 401 to everything). redirect, when set,
// sends requests for /moved.git/… there.
func newGitHost(t *testing.T, token string, redirect func() string) *gitHost {
	t.Helper()
	backend := filepath.Join(run(t, "", "git", "--exec-path"), "git-http-backend")
	if _, err := os.Stat(backend); err != nil {
		t.Skip("no git-http-backend")
	}
	h := &gitHost{root: t.TempDir()}
	cgiHandler := &cgi.Handler{Path: backend, Env: []string{"GIT_PROJECT_ROOT=" + h.root, "GIT_HTTP_EXPORT_ALL=1"}}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.hits++
		if a := r.Header.Get("Authorization"); a != "" {
			h.auths = append(h.auths, a)
		}
		h.mu.Unlock()
		if rest, ok := strings.CutPrefix(r.URL.Path, "/moved.git/"); ok && redirect != nil {
			http.Redirect(w, r, redirect()+"/moved.git/"+rest+"?"+r.URL.RawQuery, http.StatusFound)
			return
		}
		if _, pass, ok := r.BasicAuth(); token == "" || !ok || pass != token {
			w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		cgiHandler.ServeHTTP(w, r)
	}))
	t.Cleanup(h.srv.Close)
	return h
}

// add publishes a repository with files as name.git and returns its commit.
func (h *gitHost) add(t *testing.T, name string, files map[string]string) string {
	t.Helper()
	src, rev := gitRepo(t, files)
	run(t, "", "git", "clone", "-q", "--bare", src, filepath.Join(h.root, name+".git"))
	return rev
}

// saw reports whether any Authorization header it received holds token, and how
// many requests it had.
func (h *gitHost) saw(token string) (bool, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, a := range h.auths {
		if raw, ok := strings.CutPrefix(a, "Basic "); ok {
			if dec, err := base64.StdEncoding.DecodeString(raw); err == nil && strings.Contains(string(dec), token) {
				return true, h.hits
			}
		}
		if strings.Contains(a, token) {
			return true, h.hits
		}
	}
	return false, h.hits
}

// A project's HTTPS token goes to the scheme, host and port of its repository_url
// and nowhere else: not to a git input on another port, nor to the same server under
// another host name, nor to where a redirect leads, even when they answer 401.
func TestEvaluate_FetchCredentialsStayWithTheProjectsHost(t *testing.T) {
	t.Parallel()
	needNix(t)
	ctx := testCtx(t)
	const token = "tok-project-0123456789abcdef"
	var other *gitHost
	project := newGitHost(t, token, func() string { return other.srv.URL })
	other = newGitHost(t, "", nil)
	s := salt(t)
	project.add(t, "repo", map[string]string{"release.nix": "{ }"})
	libRev := project.add(t, "lib", map[string]string{"lib.txt": "lib " + s})
	other.add(t, "other", map[string]string{"x.txt": "x"})
	projectURL := project.srv.URL + "/repo.git"
	creds := Credentials{HTTPSToken: token}

	dir, cleanup, err := Checkout(ctx, t.TempDir(), projectURL, "main", creds)
	if err != nil {
		t.Fatalf("the project's own repository with its token: %v", err)
	}
	defer cleanup()
	if err := os.WriteFile(filepath.Join(dir, "release.nix"), []byte(fmt.Sprintf(`{ src }: {
  input = derivation { name = "input-%s-${src.shortRev}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo > $out" ]; };
}
`, s)), 0o644); err != nil {
		t.Fatal(err)
	}
	evaluate := func(inputURL string) (Result, error) {
		return Evaluate(ctx, dir, Request{RepoURL: projectURL, HTTPSToken: token, CacheDir: t.TempDir(),
			Inputs: []Input{{Name: "src", Type: "git", Value: inputURL}}})
	}

	// Another repository on the project's own host gets the token, and works.
	res, err := evaluate(project.srv.URL + "/lib.git")
	if err != nil {
		t.Fatalf("a git input on the project's host: %v", err)
	}
	if j := jobsByAttr(res)["input"]; j.Name != "input-"+s+"-"+libRev[:7] {
		t.Errorf("git input on the project's host: %+v %+v", res.Jobs, res.Errors)
	}
	if ok, _ := project.saw(token); !ok {
		t.Fatalf("the project's host never received the token")
	}

	u, _ := url.Parse(project.srv.URL)
	for _, c := range []struct {
		name, url string
		host      *gitHost
	}{
		{"another port", other.srv.URL + "/other.git", other},
		{"the project's server under another host name", "http://localhost:" + u.Port() + "/lib.git", project},
		{"a redirect from the project's host", project.srv.URL + "/moved.git", other},
	} {
		t.Run(c.name, func(t *testing.T) {
			project.mu.Lock()
			project.auths = nil
			project.mu.Unlock()
			_, before := c.host.saw(token)
			if _, err := evaluate(c.url); err == nil {
				t.Errorf("a git input at %s evaluated without credentials", c.url)
			} else if strings.Contains(err.Error(), token) {
				t.Errorf("the error shows the token: %v", err)
			}
			leaked, after := c.host.saw(token)
			if after == before {
				t.Fatalf("git never asked %s", c.url)
			}
			if leaked {
				t.Errorf("%s received the project's token", c.url)
			}
		})
	}

	// The same holds for a checkout of the project's own URL that redirects elsewhere.
	other.mu.Lock()
	other.auths = nil
	other.mu.Unlock()
	if _, _, err := Checkout(ctx, t.TempDir(), project.srv.URL+"/moved.git", "main", creds); err == nil {
		t.Errorf("checked out through a redirect to a host that wants credentials")
	}
	if leaked, _ := other.saw(token); leaked {
		t.Errorf("a redirect from the project's host took its token elsewhere")
	}
}

func TestCredentials_ScopedToTheProjectsSchemeHostAndPort(t *testing.T) {
	t.Parallel()
	c := Credentials{HTTPSToken: "t", SSHKey: "k"}
	cases := []struct {
		project, repo string
		same          bool
	}{
		{"https://git.example.org/a.git", "https://git.example.org/b.git", true},
		{"https://git.example.org/a.git", "https://GIT.example.org:443/b.git", true},
		{"https://git.example.org/a.git", "https://user@git.example.org/b", true},
		{"https://git.example.org/a.git", "http://git.example.org/b.git", false},
		{"https://git.example.org/a.git", "https://git.example.org:8443/b.git", false},
		{"https://git.example.org/a.git", "https://example.org/b.git", false},
		{"https://git.example.org/a.git", "https://git.example.org.evil.test/b.git", false},
		{"ssh://git@git.example.org/a.git", "ssh://git@git.example.org:22/b.git", true},
		{"ssh://git@git.example.org/a.git", "git@git.example.org:b.git", true},
		{"ssh://git@git.example.org/a.git", "ssh://git@git.example.org:2222/b.git", false},
		{"ssh://git@git.example.org/a.git", "https://git.example.org/b.git", false},
		{"/srv/git/a", "/srv/git/b", false},
		{"file:///srv/git/a", "file:///srv/git/b", false},
		{"https://git.example.org/a.git", "/srv/git/b", false},
	}
	for _, tc := range cases {
		got := c.ScopedTo(tc.project, tc.repo)
		if want := map[bool]Credentials{true: c, false: {}}[tc.same]; got != want {
			t.Errorf("credentials of %s for %s = %+v, want %+v", tc.project, tc.repo, got, want)
		}
	}
}
