package channels

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/fc-ci/fc/internal/gitcmd"
	"github.com/fc-ci/fc/storage"
)

// archive returns the file holding ch's nixexprs.tar.xz, making it on first use from
// a bare mirror of the project's repository (GitDir/channels/<project id>.git):
// git archive of the evaluation's commit, under the top-level directory
// <channel>-<commit>, compressed with xz. Files are kept by project and commit, so
// a commit's tarball is made once.
func (c *Channels) archive(ctx context.Context, ch storage.NixChannel) (string, error) {
	if !isCommit(ch.Commit) {
		return "", fmt.Errorf("channel %q: evaluation %d has no commit to archive", ch.Name, *ch.EvaluationID)
	}
	dir := filepath.Join(c.cfg.GitDir, "channels")
	file := filepath.Join(dir, fmt.Sprintf("%d-%s-%s.tar.xz", ch.ProjectID, ch.Name, ch.Commit))
	c.archiving.Lock()
	defer c.archiving.Unlock()
	if _, err := os.Stat(file); err == nil {
		return file, nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.GitTimeout)
	defer cancel()
	mirror := filepath.Join(dir, strconv.FormatInt(ch.ProjectID, 10)+".git")
	if err := c.fetch(ctx, ch.ProjectID, mirror, ch.Commit); err != nil {
		return "", fmt.Errorf("channel %q: %w", ch.Name, err)
	}
	tmp, err := os.CreateTemp(dir, "nixexprs-*.tmp")
	if err != nil {
		return "", fmt.Errorf("channel %q: %w", ch.Name, err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	prefix := fmt.Sprintf("%s-%s/", ch.Name, ch.Commit[:12])
	archive := exec.CommandContext(ctx, "git", "-C", mirror, "archive", "--format=tar", "--prefix="+prefix, ch.Commit)
	xz := exec.CommandContext(ctx, "xz", "-c", "-q")
	pr, pw, err := os.Pipe()
	if err != nil {
		return "", fmt.Errorf("channel %q: %w", ch.Name, err)
	}
	var stderr bytes.Buffer
	archive.Stdout, archive.Stderr = pw, &stderr
	xz.Stdin, xz.Stdout = pr, tmp
	err = xz.Start()
	pr.Close() // xz has its own copy
	if err != nil {
		pw.Close()
		return "", fmt.Errorf("channel %q: start xz: %w", ch.Name, err)
	}
	aerr := archive.Run()
	pw.Close() // xz sees the end of the tar
	if err := xz.Wait(); err != nil {
		return "", fmt.Errorf("channel %q: xz: %w", ch.Name, err)
	}
	if aerr != nil {
		return "", fmt.Errorf("channel %q: git archive %s: %w: %s", ch.Name, ch.Commit, aerr, stderr.String())
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("channel %q: %w", ch.Name, err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return "", fmt.Errorf("channel %q: %w", ch.Name, err)
	}
	return file, nil
}

// fetch makes sure the mirror holds commit, fetching it from the project's
// repository with the project's fetch credentials when it does not.
func (c *Channels) fetch(ctx context.Context, projectID int64, mirror, commit string) error {
	p, err := c.db.GetProject(ctx, projectID)
	if err != nil {
		return err
	}
	var creds gitcmd.Credentials
	if fc, err := c.db.ProjectFetchCredentials(ctx, projectID); err != nil {
		return err
	} else if fc != nil {
		creds = gitcmd.Credentials{SSHKey: fc.SSHKey, HTTPSToken: fc.HTTPSToken}
	}
	return gitcmd.FetchCommit(ctx, c.cfg.GitDir, mirror, p.RepositoryURL, commit, creds)
}

// isCommit reports whether s is a full hexadecimal commit id (SHA-1 or SHA-256).
func isCommit(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for _, r := range s {
		if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') {
			return false
		}
	}
	return true
}
