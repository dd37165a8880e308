package channels_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

type channelJSON struct {
	Name         string `json:"name"`
	Project      string `json:"project"`
	Jobset       string `json:"jobset"`
	Aggregate    string `json:"aggregate"`
	EvaluationID *int64 `json:"evaluation_id"`
	Commit       string `json:"commit"`
}

func releaseNix(salt string, jobs ...string) string {
	return fmt.Sprintf("let\n  %s\nin {\n  %s\n}\n", coordtest.MkLet(salt), strings.Join(jobs, "\n  "))
}

// setup is a coordinator with an agent and a project "demo" on a real repository.
type setup struct {
	c        *coordtest.Coordinator
	repo     *coordtest.Repo
	salt     string
	pid, jid int64
}

func newSetup(t *testing.T) *setup {
	t.Helper()
	s := &setup{c: coordtest.Start(t, coordtest.Options{}), repo: coordtest.NewRepo(t), salt: coordtest.Salt(t)}
	coordtest.StartAgent(t, s.c, coordtest.AgentOptions{Name: "worker", Roles: []string{"build", "eval"}})
	s.repo.Commit(map[string]string{"release.nix": releaseNix(s.salt, `hello = mk "hello" { };`)})
	s.pid, s.jid = s.c.Project("demo", s.repo.Dir, nil)
	return s
}

// evaluate triggers an evaluation of the repository's head, waits for it and for
// its builds to finish, and returns its id and builds.
func (s *setup) evaluate(t *testing.T, after int64) (int64, map[string]coordtest.Build) {
	t.Helper()
	s.c.Trigger(s.jid, false)
	id := coordtest.Evaluated(t, s.c, s.jid, after)
	builds := coordtest.BuildsOf(t, s.c, id)
	for job, b := range builds {
		builds[job] = coordtest.WaitBuild(t, s.c, b.ID, 3*time.Minute, "finished", func(b coordtest.Build) bool { return b.Finished() })
	}
	return id, builds
}

func (s *setup) channel(t *testing.T, name string) channelJSON {
	t.Helper()
	var ch channelJSON
	if code := s.c.Do("GET", "/api/v1/channels/"+name, "", nil, &ch); code != 200 {
		t.Fatalf("get channel %s: %d", name, code)
	}
	return ch
}

func (s *setup) key(t *testing.T, role string) string {
	t.Helper()
	_, key, err := auth.CreateKey(context.Background(), s.c.DB, "k-"+role, role)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func run(t *testing.T, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, stderr.String())
	}
	return out
}

// With real PostgreSQL, git, Nix and an agent: a channel advances on a green
// evaluation and not on a red one (one following an aggregate job that stays green
// does), promotion moves it by hand and is refused to read-only keys and to other
// owners, and /channel/ serves the evaluated source, the cache URL and the outputs.
func TestChannels_FollowJobset(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	c := s.c
	green := releaseNix(s.salt, `hello = mk "hello" { };`)

	if code := c.Do("POST", "/api/v1/channels", c.Admin, map[string]any{"name": "stable", "jobset": "demo/main"}, nil); code != 201 {
		t.Fatalf("create channel: %d", code)
	}
	if code := c.Do("POST", "/api/v1/channels", c.Admin, map[string]any{"name": "hello-only", "project": "demo",
		"jobset": s.jid, "aggregate": "hello"}, nil); code != 201 {
		t.Fatalf("create aggregate channel: %d", code)
	}
	if code := c.Do("POST", "/api/v1/channels", c.Admin, map[string]any{"name": "stable", "jobset": "demo/main"}, nil); code != 409 {
		t.Fatalf("a second channel called stable: %d, want 409", code)
	}
	if code := c.Do("POST", "/api/v1/channels", s.key(t, storage.RoleReadOnly), map[string]any{"name": "x", "jobset": "demo/main"}, nil); code != 403 {
		t.Fatalf("read-only key creates a channel: %d, want 403", code)
	}
	if ch := s.channel(t, "stable"); ch.EvaluationID != nil {
		t.Fatalf("a channel before any evaluation points at %d", *ch.EvaluationID)
	}
	if code, _ := get(t, c.URL+"/channel/stable/nixexprs.tar.xz"); code != 404 {
		t.Fatalf("nixexprs before any evaluation: %d, want 404", code)
	}

	// Green: the channel advances by itself.
	e1, builds := s.evaluate(t, 0)
	if builds["hello"].Status != "succeeded" {
		t.Fatalf("hello: %s", builds["hello"].Status)
	}
	coordtest.Eventually(t, 30*time.Second, "stable advances to the green evaluation", func() bool {
		ch := s.channel(t, "stable")
		return ch.EvaluationID != nil && *ch.EvaluationID == e1
	})

	// Red: hello still passes, broken fails. stable stays, hello-only advances.
	s.repo.Commit(map[string]string{"release.nix": releaseNix(s.salt, `hello = mk "hello" { };`,
		`broken = mk "broken" { args = sh "exit 1"; };`)})
	e2, builds := s.evaluate(t, e1)
	if builds["broken"].Status != "failed" {
		t.Fatalf("broken: %s", builds["broken"].Status)
	}
	coordtest.Eventually(t, 30*time.Second, "hello-only advances to the red evaluation", func() bool {
		ch := s.channel(t, "hello-only")
		return ch.EvaluationID != nil && *ch.EvaluationID == e2
	})
	if _, err := c.DB.AdvanceChannels(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ch := s.channel(t, "stable"); ch.EvaluationID == nil || *ch.EvaluationID != e1 {
		t.Fatalf("stable after a red evaluation: %v, want %d", ch.EvaluationID, e1)
	}

	checkServed(t, s, "stable", e1, green)
	nixChannel(t, c.URL+"/channel/stable", green)

	// Promotion: refused to read-only keys and to another project's owner.
	promote := map[string]any{"evaluation_id": e2}
	if code := c.Do("POST", "/api/v1/channels/stable/promote", s.key(t, storage.RoleReadOnly), promote, nil); code != 403 {
		t.Fatalf("read-only promote: %d, want 403", code)
	}
	if code := c.Do("POST", "/api/v1/channels/stable/promote", s.key(t, storage.RoleCreateProjects), promote, nil); code != 403 {
		t.Fatalf("another owner promotes: %d, want 403", code)
	}
	if code := c.Do("POST", "/api/v1/channels/stable/promote", c.Admin, map[string]any{"evaluation_id": e2 + 1000}, nil); code != 422 {
		t.Fatalf("promote to no evaluation of the jobset: %d, want 422", code)
	}
	var ch channelJSON
	if code := c.Do("POST", "/api/v1/channels/stable/promote", c.Admin, promote, &ch); code != 200 || ch.EvaluationID == nil || *ch.EvaluationID != e2 {
		t.Fatalf("promote: %d %+v", code, ch)
	}
	var latest struct {
		EvaluationID int64    `json:"evaluation_id"`
		StorePaths   []string `json:"store_paths"`
	}
	if code := c.Do("GET", "/api/v1/channels/stable/latest", "", nil, &latest); code != 200 || latest.EvaluationID != e2 ||
		len(latest.StorePaths) != 2 {
		t.Fatalf("latest after promote: %d %+v", code, latest)
	}
	var list struct {
		Items []channelJSON `json:"items"`
	}
	if code := c.Do("GET", "/api/v1/channels", "", nil, &list); code != 200 || len(list.Items) != 2 || list.Items[0].Name != "hello-only" {
		t.Fatalf("list: %d %+v", code, list)
	}
	if code := c.Do("DELETE", "/api/v1/channels/stable", s.key(t, storage.RoleReadOnly), nil, nil); code != 403 {
		t.Fatalf("read-only delete: %d, want 403", code)
	}
	if code := c.Do("DELETE", "/api/v1/channels/stable", c.Admin, nil, nil); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	if code := c.Do("GET", "/api/v1/channels/stable", "", nil, nil); code != 404 {
		t.Fatalf("deleted channel: %d, want 404", code)
	}
}

// checkServed checks /channel/<name>/: nixexprs.tar.xz unpacks to one top-level
// directory holding the evaluated release.nix, binary-cache-url names the
// coordinator's cache and store-paths.xz lists the evaluation's outputs.
func checkServed(t *testing.T, s *setup, name string, evalID int64, releaseNix string) {
	t.Helper()
	base := s.c.URL + "/channel/" + name
	if code, body := get(t, base); code != 200 || !strings.Contains(string(body), "nixexprs.tar.xz") {
		t.Fatalf("channel page: %d %s", code, body)
	}
	code, tarball := get(t, base+"/nixexprs.tar.xz")
	if code != 200 {
		t.Fatalf("nixexprs.tar.xz: %d %s", code, tarball)
	}
	dir := t.TempDir()
	run(t, tarball, "tar", "-xJ", "-C", dir)
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 || !entries[0].IsDir() {
		t.Fatalf("tarball top level: %v %v", entries, err)
	}
	got, err := os.ReadFile(filepath.Join(dir, entries[0].Name(), "release.nix"))
	if err != nil || string(got) != releaseNix {
		t.Fatalf("release.nix in the tarball: %v\n%s\nwant\n%s", err, got, releaseNix)
	}
	if code, body := get(t, base+"/binary-cache-url"); code != 200 || string(body) != s.c.URL+"/nix-cache" {
		t.Fatalf("binary-cache-url: %d %q, want %q", code, body, s.c.URL+"/nix-cache")
	}
	code, xz := get(t, base+"/store-paths.xz")
	if code != 200 {
		t.Fatalf("store-paths.xz: %d", code)
	}
	want, err := s.c.DB.EvaluationOutputPaths(context.Background(), evalID)
	if err != nil || len(want) == 0 {
		t.Fatalf("outputs of %d: %v %v", evalID, want, err)
	}
	if got := string(run(t, xz, "xz", "-d")); got != strings.Join(want, "\n")+"\n" {
		t.Fatalf("store-paths: %q, want %q", got, want)
	}
}

// nixChannel subscribes to the channel at url with the real nix-channel (--add, then
// --update) and checks the channel it unpacked holds releaseNix. Its HOME, profiles
// (NIX_STATE_DIR) and caches are the test's own, so the machine's channels stay
// untouched; the store stays the machine's (state=/nix/var/nix keeps its database).
func nixChannel(t *testing.T, url, releaseNix string) {
	t.Helper()
	tmp := t.TempDir()
	home, state := filepath.Join(tmp, "home"), filepath.Join(tmp, "state")
	for _, d := range []string{home, filepath.Join(state, "profiles", "per-user", userName())} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	env := append(os.Environ(), "HOME="+home, "NIX_STATE_DIR="+state, "XDG_CACHE_HOME="+filepath.Join(tmp, "cache"),
		"NIX_PATH=", "NIX_CONFIG=store = local?state=/nix/var/nix\nsubstituters =")
	for _, args := range [][]string{{"--add", url, "fcstable"}, {"--update"}} {
		cmd := exec.Command("nix-channel", args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nix-channel %v: %v\n%s", args, err, out)
		}
	}
	got, err := os.ReadFile(filepath.Join(home, ".nix-defexpr", "channels", "fcstable", "release.nix"))
	if err != nil || string(got) != releaseNix {
		t.Fatalf("release.nix of the channel nix-channel unpacked: %v\n%s", err, got)
	}
}

// userName is who nix-channel keeps the channels profile for.
func userName() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return "root"
}
