package evaluator

import (
	"context"
	"fmt"
	"strings"
)

// LsRemote resolves branch (HEAD when empty) of repoURL to a commit without cloning,
// using the repository's credentials like Checkout does. stateDir keeps the SSH
// known_hosts file.
func LsRemote(ctx context.Context, stateDir, repoURL, branch string, creds Credentials) (string, error) {
	g, err := newGit(stateDir, repoURL, creds)
	if err != nil {
		return "", err
	}
	defer g.close()
	ref := "HEAD"
	if branch != "" {
		ref = "refs/heads/" + branch
	}
	out, err := g.run(ctx, "", "ls-remote", "--", repoURL, ref)
	if err != nil {
		return "", fmt.Errorf("git ls-remote %s %s: %w", g.redact(repoURL), ref, err)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[1] == ref {
			return f[0], nil
		}
	}
	return "", fmt.Errorf("git ls-remote %s: no %s", g.redact(repoURL), ref)
}
