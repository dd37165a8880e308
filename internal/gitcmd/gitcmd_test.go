package gitcmd

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNew_SSHKeyFile(t *testing.T) {
	t.Parallel()
	g, err := New(t.TempDir(), "ssh://git@example.org/r.git", Credentials{SSHKey: "-----BEGIN OPENSSH PRIVATE KEY-----\nxyz\n-----END OPENSSH PRIVATE KEY-----"})
	if err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(g.tmp, "id")
	st, err := os.Stat(key)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v %v", st, err)
	}
	if b, err := os.ReadFile(key); err != nil || !strings.HasSuffix(string(b), "-----\n") {
		t.Errorf("the key file lacks its final newline (%v)", err)
	}
	sshCmd := envValue(g, "GIT_SSH_COMMAND")
	want := fmt.Sprintf("ssh -i '%s' -o IdentitiesOnly=yes -o BatchMode=yes", key)
	if !strings.HasPrefix(sshCmd, want) || !strings.Contains(sshCmd, "StrictHostKeyChecking=accept-new") {
		t.Errorf("GIT_SSH_COMMAND = %q", sshCmd)
	}
	g.Close()
	if _, err := os.Stat(key); !os.IsNotExist(err) {
		t.Errorf("the key file outlived the checkout: %v", err)
	}
}

// An HTTPS token is offered by a helper git asks only for the repository's scheme,
// host and port, and no other helper is asked; errors never show it.
func TestNew_HTTPSTokenOnlyForTheRepositorysOrigin(t *testing.T) {
	t.Parallel()
	const token = "tok-0123456789abcdef"
	g, err := New(t.TempDir(), "https://Git.Example.org/r.git", Credentials{HTTPSToken: token})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if got := envValue(g, "FC_GIT_TOKEN"); got != token {
		t.Errorf("FC_GIT_TOKEN = %q", got)
	}
	if got := envValue(g, "GIT_CONFIG_KEY_0") + "=" + envValue(g, "GIT_CONFIG_VALUE_0"); got != "credential.helper=" {
		t.Errorf("other credential helpers are not switched off: %q", got)
	}
	if got := envValue(g, "GIT_CONFIG_KEY_1"); got != "credential.https://git.example.org:443.helper" {
		t.Errorf("the helper is configured for %q", got)
	}
	if got := g.Redact("fatal: " + token); strings.Contains(got, token) {
		t.Errorf("Redact left the token: %q", got)
	}

	// Nothing speaks HTTP to an SSH or local repository: no token, no files.
	for _, u := range []string{"ssh://git@git.example.org/r.git", "/srv/git/r", "file:///srv/git/r"} {
		g, err := New(t.TempDir(), u, Credentials{HTTPSToken: token})
		if err != nil {
			t.Fatal(err)
		}
		if g.tmp != "" || envValue(g, "FC_GIT_TOKEN") != "" {
			t.Errorf("%s: the token was set up (%q, %v)", u, g.tmp, g.env)
		}
		g.Close()
	}
}

func TestLsRemote_ResolvesABranchOrHEAD(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("no git")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	repo := t.TempDir()
	git := func(args ...string) string {
		t.Helper()
		out, err := Run(ctx, repo, []string{"GIT_CONFIG_GLOBAL=/dev/null"}, args...)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	git("init", "-q", "-b", "main", ".")
	git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "--allow-empty", "-m", "one")
	first := git("rev-parse", "HEAD")
	git("checkout", "-q", "-b", "dev")
	git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "--allow-empty", "-m", "two")
	second := git("rev-parse", "HEAD")
	git("checkout", "-q", "main")

	for _, tc := range []struct{ branch, want string }{{"", first}, {"main", first}, {"dev", second}} {
		got, err := LsRemote(ctx, t.TempDir(), repo, tc.branch, Credentials{})
		if err != nil || got != tc.want {
			t.Errorf("LsRemote(%q) = %q, %v; want %q", tc.branch, got, err, tc.want)
		}
	}
	if got, err := LsRemote(ctx, t.TempDir(), repo, "nope", Credentials{}); err == nil || !strings.Contains(err.Error(), "no refs/heads/nope") {
		t.Errorf("LsRemote of a missing branch = %q, %v", got, err)
	}
}

// envValue is the value g's environment gives name ("" if none).
func envValue(g *Git, name string) string {
	v := ""
	for _, e := range g.env {
		if s, ok := strings.CutPrefix(e, name+"="); ok {
			v = s
		}
	}
	return v
}
