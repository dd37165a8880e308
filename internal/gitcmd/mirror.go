package gitcmd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// FetchCommit makes sure the bare mirror (created when missing) holds commit,
// fetching it from repoURL with creds when it does not: by commit first (most
// servers allow it), else every branch and pull request head. stateDir keeps the SSH
// known_hosts file. Channels' source tarballs and repositories' declarative files
// are read from such mirrors.
func FetchCommit(ctx context.Context, stateDir, mirror, repoURL, commit string, creds Credentials) error {
	if _, err := os.Stat(mirror); err != nil {
		if err := os.MkdirAll(filepath.Dir(mirror), 0o755); err != nil {
			return fmt.Errorf("mirror: %w", err)
		}
		if _, err := Run(ctx, "", nil, "init", "--bare", "-q", mirror); err != nil {
			return fmt.Errorf("mirror: %w", err)
		}
	}
	if _, err := Run(ctx, mirror, nil, "cat-file", "-e", commit+"^{commit}"); err == nil {
		return nil
	}
	g, err := New(stateDir, repoURL, creds)
	if err != nil {
		return err
	}
	defer g.Close()
	if _, err := g.Run(ctx, mirror, "fetch", "-q", "--no-tags", "--", repoURL, commit); err == nil {
		return nil
	}
	if _, err := g.Run(ctx, mirror, "fetch", "-q", "--no-tags", "--", repoURL,
		"+refs/heads/*:refs/heads/*", "+refs/pull/*/head:refs/pull/*/head"); err != nil {
		return fmt.Errorf("fetch %s: %w", g.Redact(repoURL), err)
	}
	if _, err := Run(ctx, mirror, nil, "cat-file", "-e", commit+"^{commit}"); err != nil {
		return fmt.Errorf("commit %s is not in %s", commit, g.Redact(repoURL))
	}
	return nil
}

// ErrNoFile is ShowFile's answer for a path the commit does not have.
var ErrNoFile = fmt.Errorf("no such file in the commit")

// ShowFile is the content of path at commit in mirror (FetchCommit first).
func ShowFile(ctx context.Context, mirror, commit, path string) ([]byte, error) {
	if _, err := Run(ctx, mirror, nil, "cat-file", "-e", commit+":"+path); err != nil {
		return nil, fmt.Errorf("%s at %.12s: %w", path, commit, ErrNoFile)
	}
	out, err := Run(ctx, mirror, nil, "cat-file", "blob", commit+":"+path)
	if err != nil {
		return nil, fmt.Errorf("read %s at %.12s: %w", path, commit, err)
	}
	return []byte(out), nil
}
