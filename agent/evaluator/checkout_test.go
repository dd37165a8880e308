package evaluator

import (
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func needGit(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/usr/bin/git"); err != nil {
		needNix(t)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCheckout_ConcurrentRevisionsAreIndependent(t *testing.T) {
	t.Parallel()
	needGit(t)
	ctx := testCtx(t)
	repo, rev1 := gitRepo(t, map[string]string{"v.txt": "1"})
	rev2 := commit(t, repo, map[string]string{"v.txt": "2"})
	cache := t.TempDir()

	type result struct {
		dir, rev, want string
		cleanup        func()
		err            error
	}
	results := make([]result, 6)
	var wg sync.WaitGroup
	for i := range results {
		rev, want := rev1, "1"
		if i%2 == 1 {
			rev, want = rev2, "2"
		}
		wg.Go(func() {
			dir, cleanup, err := Checkout(ctx, cache, repo, rev, Credentials{})
			results[i] = result{dir: dir, rev: rev, want: want, cleanup: cleanup, err: err}
		})
	}
	wg.Wait()
	dirs := map[string]bool{}
	for _, r := range results {
		if r.err != nil {
			t.Fatal(r.err)
		}
		defer r.cleanup()
		if dirs[r.dir] {
			t.Errorf("two checkouts share %s", r.dir)
		}
		dirs[r.dir] = true
		if head := run(t, r.dir, "git", "rev-parse", "HEAD"); head != r.rev {
			t.Errorf("%s is at %s, want %s", r.dir, head, r.rev)
		}
		if got := readFile(t, filepath.Join(r.dir, "v.txt")); got != r.want {
			t.Errorf("%s: v.txt = %q, want %q", r.dir, got, r.want)
		}
		if st := run(t, r.dir, "git", "status", "--porcelain"); st != "" {
			t.Errorf("%s is not clean: %s", r.dir, st)
		}
	}
	// Changing one working tree leaves the others alone.
	if err := os.WriteFile(filepath.Join(results[0].dir, "v.txt"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(results[2].dir, "v.txt")); got != "1" {
		t.Errorf("another checkout changed: %q", got)
	}
	mirrors, _ := filepath.Glob(filepath.Join(cache, "mirrors", "*.git"))
	if len(mirrors) != 1 {
		t.Errorf("mirrors = %v, want one", mirrors)
	}
	// Cleanup removes the working tree.
	results[1].cleanup()
	if _, err := os.Stat(results[1].dir); !os.IsNotExist(err) {
		t.Errorf("cleanup left %s: %v", results[1].dir, err)
	}
}

func TestCheckout_ReusesTheMirror(t *testing.T) {
	t.Parallel()
	needGit(t)
	ctx := testCtx(t)
	repo, rev1 := gitRepo(t, map[string]string{"v.txt": "1"})
	cache := t.TempDir()
	dir, cleanup, err := Checkout(ctx, cache, "file://"+repo, rev1, Credentials{})
	if err != nil {
		t.Fatal(err)
	}
	cleanup()
	mirrors, _ := filepath.Glob(filepath.Join(cache, "mirrors", "*.git"))
	if len(mirrors) != 1 {
		t.Fatalf("mirrors = %v", mirrors)
	}
	mirror := mirrors[0]
	marker := filepath.Join(mirror, "fc-test-marker")
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	objectsBefore := run(t, mirror, "git", "count-objects", "-v")

	// A new commit: fetched into the same mirror (not cloned again).
	rev2 := commit(t, repo, map[string]string{"v.txt": "2"})
	dir, cleanup, err = Checkout(ctx, cache, "file://"+repo, rev2, Credentials{})
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the mirror was made anew: %v", err)
	}
	if got := readFile(t, filepath.Join(dir, "v.txt")); got != "2" {
		t.Errorf("v.txt = %q", got)
	}
	if objectsBefore == run(t, mirror, "git", "count-objects", "-v") {
		t.Errorf("the fetch brought nothing")
	}

	// A branch name resolves to its head.
	dir3, cleanup3, err := Checkout(ctx, cache, "file://"+repo, "main", Credentials{})
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup3()
	if head := run(t, dir3, "git", "rev-parse", "HEAD"); head != rev2 {
		t.Errorf("main checked out at %s, want %s", head, rev2)
	}
	if n, err := RevCount(ctx, dir3, rev2); err != nil || n != 2 {
		t.Errorf("RevCount = %d, %v", n, err)
	}

	// A commit the mirror has needs no fetch: it works with the repository gone.
	if err := os.RemoveAll(repo); err != nil {
		t.Fatal(err)
	}
	dir4, cleanup4, err := Checkout(ctx, cache, "file://"+repo, rev1, Credentials{})
	if err != nil {
		t.Fatalf("checkout of a mirrored commit without its repository: %v", err)
	}
	defer cleanup4()
	if got := readFile(t, filepath.Join(dir4, "v.txt")); got != "1" {
		t.Errorf("v.txt = %q", got)
	}
}

func TestCheckout_UnknownRevision(t *testing.T) {
	t.Parallel()
	needGit(t)
	repo, _ := gitRepo(t, map[string]string{"v.txt": "1"})
	_, _, err := Checkout(testCtx(t), t.TempDir(), repo, strings.Repeat("ab", 20), Credentials{})
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("err = %v", err)
	}
	if _, _, err := Checkout(testCtx(t), t.TempDir(), filepath.Join(t.TempDir(), "nope"), "main", Credentials{}); err == nil {
		t.Errorf("a missing repository checked out")
	}
}

func TestCheckout_HTTPSToken(t *testing.T) {
	t.Parallel()
	needGit(t)
	ctx := testCtx(t)
	execPath := run(t, "", "git", "--exec-path")
	backend := filepath.Join(execPath, "git-http-backend")
	if _, err := os.Stat(backend); err != nil {
		t.Skip("no git-http-backend")
	}
	src, rev := gitRepo(t, map[string]string{"secret.txt": "s3cret"})
	root := t.TempDir()
	run(t, "", "git", "clone", "-q", "--bare", src, filepath.Join(root, "repo.git"))

	const token = "tok-0123456789abcdef"
	cgiHandler := &cgi.Handler{Path: backend, Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pass, ok := r.BasicAuth(); !ok || pass != token {
			w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		cgiHandler.ServeHTTP(w, r)
	}))
	defer srv.Close()
	url := srv.URL + "/repo.git"

	dir, cleanup, err := Checkout(ctx, t.TempDir(), url, rev, Credentials{HTTPSToken: token})
	if err != nil {
		t.Fatalf("with the token: %v", err)
	}
	defer cleanup()
	if got := readFile(t, filepath.Join(dir, "secret.txt")); got != "s3cret" {
		t.Errorf("secret.txt = %q", got)
	}
	for _, c := range []Credentials{{}, {HTTPSToken: "wrong-" + token}} {
		_, _, err := Checkout(ctx, t.TempDir(), url, rev, c)
		if err == nil {
			t.Errorf("checked out with %q", c.HTTPSToken)
		} else if strings.Contains(err.Error(), token) {
			t.Errorf("the error shows the token: %v", err)
		}
	}
	// The mirror's configuration keeps no credentials.
	mirrors, _ := filepath.Glob(filepath.Join(filepath.Dir(filepath.Dir(dir)), "mirrors", "*.git"))
	for _, m := range mirrors {
		if cfg := readFile(t, filepath.Join(m, "config")); strings.Contains(cfg, token) {
			t.Errorf("mirror config holds the token: %s", cfg)
		}
	}
}
