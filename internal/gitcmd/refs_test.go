package gitcmd

import (
	"context"
	"os/exec"
	"strings"
	"testing"
)

func gitIn(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "user.name=t", "-c", "user.email=t@example.org"}, args...)...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// The default branch is whatever HEAD points to, whatever its name; a pull request's
// head ref (outside refs/heads) resolves as a full ref.
func TestDefaultBranchAndFullRefs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	gitIn(t, dir, "init", "-q", "-b", "trunk")
	gitIn(t, dir, "commit", "-q", "--allow-empty", "-m", "one")
	head := gitIn(t, dir, "rev-parse", "HEAD")
	gitIn(t, dir, "commit", "-q", "--allow-empty", "-m", "two")
	pr := gitIn(t, dir, "rev-parse", "HEAD")
	gitIn(t, dir, "update-ref", "refs/pull/7/head", pr)
	gitIn(t, dir, "reset", "-q", "--hard", head)
	ctx := context.Background()

	if b, err := DefaultBranch(ctx, t.TempDir(), dir, Credentials{}); err != nil || b != "trunk" {
		t.Errorf("DefaultBranch = %q, %v; want trunk", b, err)
	}
	gitIn(t, dir, "symbolic-ref", "HEAD", "refs/heads/release/2.0")
	gitIn(t, dir, "update-ref", "refs/heads/release/2.0", head)
	if b, err := DefaultBranch(ctx, t.TempDir(), dir, Credentials{}); err != nil || b != "release/2.0" {
		t.Errorf("DefaultBranch after moving HEAD = %q, %v; want release/2.0", b, err)
	}
	for branch, want := range map[string]string{"refs/pull/7/head": pr, "trunk": head, "": head} {
		if got, err := LsRemote(ctx, t.TempDir(), dir, branch, Credentials{}); err != nil || got != want {
			t.Errorf("LsRemote(%q) = %q, %v; want %s", branch, got, err, want)
		}
	}
	if _, err := LsRemote(ctx, t.TempDir(), dir, "refs/pull/8/head", Credentials{}); err == nil {
		t.Error("LsRemote of a missing pull request ref succeeded")
	}
	for branch, want := range map[string]string{"": "HEAD", "main": "refs/heads/main", "refs/merge-requests/3/head": "refs/merge-requests/3/head"} {
		if got := RefOf(branch); got != want {
			t.Errorf("RefOf(%q) = %q, want %q", branch, got, want)
		}
	}
}
