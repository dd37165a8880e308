package evaluator

import (
	"path/filepath"
	"testing"
)

// A pull request's head lives on no branch, only under the forge's ref for it
// (refs/pull/N/head, refs/merge-requests/N/head), and may arrive after the agent
// mirrored the repository: checking its commit out fetches it, from a fresh mirror
// and from one made before the pull request existed, and so does each new push to it.
func TestCheckout_PullRequestHeads(t *testing.T) {
	t.Parallel()
	needGit(t)
	ctx := testCtx(t)
	repo, base := gitRepo(t, map[string]string{"v.txt": "base"})
	cache := t.TempDir()
	dir, cleanup, err := Checkout(ctx, cache, repo, base, Credentials{}) // the mirror predates the pull requests
	if err != nil {
		t.Fatal(err)
	}
	cleanup()

	for _, ref := range []string{"refs/pull/1/head", "refs/merge-requests/2/head"} {
		head := commit(t, repo, map[string]string{"v.txt": ref})
		run(t, repo, "git", "update-ref", ref, head)
		run(t, repo, "git", "reset", "-q", "--hard", base) // on no branch any more
		for _, c := range []string{cache, t.TempDir()} {
			dir, cleanup, err = Checkout(ctx, c, repo, head, Credentials{})
			if err != nil {
				t.Fatalf("%s at %s: %v", ref, head, err)
			}
			if got := readFile(t, filepath.Join(dir, "v.txt")); got != ref {
				t.Errorf("%s: checked out %q", ref, got)
			}
			cleanup()
		}
		// A push to the pull request moves its ref.
		run(t, repo, "git", "checkout", "-q", "--detach", head)
		next := commit(t, repo, map[string]string{"v.txt": ref + " again"})
		run(t, repo, "git", "update-ref", ref, next)
		run(t, repo, "git", "checkout", "-q", "main")
		dir, cleanup, err = Checkout(ctx, cache, repo, next, Credentials{})
		if err != nil {
			t.Fatalf("%s after a push: %v", ref, err)
		}
		if got := readFile(t, filepath.Join(dir, "v.txt")); got != ref+" again" {
			t.Errorf("%s after a push: checked out %q", ref, got)
		}
		cleanup()
	}
}
