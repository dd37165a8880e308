package evals

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// LsRemote resolves a branch (or HEAD when branch is empty) of a repository to a
// commit, without cloning it.
func LsRemote(ctx context.Context, repo, branch string) (string, error) {
	ref := "HEAD"
	if branch != "" {
		ref = "refs/heads/" + branch
	}
	cmd := exec.CommandContext(ctx, "git", "-c", "protocol.file.allow=always", "ls-remote", "--", repo, ref)
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0")
	out, err := cmd.Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = strings.TrimSpace(string(ee.Stderr))
		}
		return "", fmt.Errorf("git ls-remote %s %s: %w %s", repo, ref, err, msg)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[1] == ref {
			return f[0], nil
		}
	}
	return "", fmt.Errorf("git ls-remote %s: no %s", repo, ref)
}
