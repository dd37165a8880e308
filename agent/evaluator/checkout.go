package evaluator

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fc-ci/fc/internal/gitcmd"
)

// Credentials fetch a private repository (see gitcmd.Credentials: scoped to the
// repository's scheme, host and port, never in argv, logs or errors).
type Credentials = gitcmd.Credentials

var fullSHA = regexp.MustCompile(`^[0-9a-f]{40}([0-9a-f]{24})?$`)

// Checkout gives a clean working tree of repoURL at revision (a commit, or a branch or
// tag name resolved in the mirror) in a new directory under cacheDir, and a cleanup
// that removes it. Every repository has one bare mirror under cacheDir/mirrors (cloned
// the first time, fetched later, only when the revision is not already there), guarded
// by a file lock so that concurrent evaluations of one repository are safe; every
// checkout is its own clone sharing the mirror's objects, so concurrent evaluations never
// share a working tree.
func Checkout(ctx context.Context, cacheDir, repoURL, revision string, creds Credentials) (dir string, cleanup func(), err error) {
	dir, _, cleanup, err = checkout(ctx, cacheDir, repoURL, revision, creds)
	return dir, cleanup, err
}

// checkout is Checkout that also returns the commit it checked out.
func checkout(ctx context.Context, cacheDir, repoURL, revision string, creds Credentials) (dir, rev string, cleanup func(), err error) {
	if repoURL == "" {
		return "", "", nil, errors.New("checkout: no repository URL")
	}
	cacheDir, err = filepath.Abs(cacheDir)
	if err != nil {
		return "", "", nil, err
	}
	mirrors := filepath.Join(cacheDir, "mirrors")
	work := filepath.Join(cacheDir, "work")
	for _, d := range []string{mirrors, work} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", "", nil, fmt.Errorf("checkout: %w", err)
		}
	}
	g, err := gitcmd.New(cacheDir, repoURL, creds)
	if err != nil {
		return "", "", nil, err
	}
	defer g.Close()

	sum := sha256.Sum256([]byte(repoURL))
	mirror := filepath.Join(mirrors, hex.EncodeToString(sum[:12])+".git")
	lock, err := lockFile(ctx, mirror+".lock", true)
	if err != nil {
		return "", "", nil, fmt.Errorf("checkout %s: lock mirror: %w", g.Redact(repoURL), err)
	}
	defer lock.unlock()

	rev, err = updateMirror(ctx, g, mirror, repoURL, revision)
	if err != nil {
		return "", "", nil, err
	}
	// Readers may clone side by side; only a fetch needs the mirror to itself.
	if err := lock.share(ctx); err != nil {
		return "", "", nil, fmt.Errorf("checkout %s: lock mirror: %w", g.Redact(repoURL), err)
	}
	dir, err = os.MkdirTemp(work, "checkout-")
	if err != nil {
		return "", "", nil, fmt.Errorf("checkout: %w", err)
	}
	cleanup = func() { _ = os.RemoveAll(dir) }
	if _, err := g.Run(ctx, "", "clone", "--quiet", "--shared", "--no-checkout", "--", mirror, dir); err != nil {
		cleanup()
		return "", "", nil, fmt.Errorf("checkout %s: clone from mirror: %w", g.Redact(repoURL), err)
	}
	if _, err := g.Run(ctx, dir, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", rev); err != nil {
		cleanup()
		return "", "", nil, fmt.Errorf("checkout %s at %s: %w", g.Redact(repoURL), rev, err)
	}
	return dir, rev, cleanup, nil
}

// RevCount is the number of commits reachable from rev (git rev-list --count), the
// revCount of a git input.
func RevCount(ctx context.Context, dir, rev string) (int, error) {
	out, err := gitcmd.Run(ctx, dir, nil, "rev-list", "--count", rev)
	if err != nil {
		return 0, fmt.Errorf("rev-list --count %s: %w", rev, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		return 0, fmt.Errorf("rev-list --count %s: %q: %w", rev, out, err)
	}
	return n, nil
}

// HeadRev is the commit checked out in dir.
func HeadRev(ctx context.Context, dir string) (string, error) {
	out, err := gitcmd.Run(ctx, dir, nil, "rev-parse", "--verify", "HEAD^{commit}")
	if err != nil {
		return "", fmt.Errorf("rev-parse HEAD: %w", err)
	}
	return strings.TrimSpace(out), nil
}

// updateMirror makes sure mirror holds revision and returns its commit.
func updateMirror(ctx context.Context, g *gitcmd.Git, mirror, repoURL, revision string) (string, error) {
	name := g.Redact(repoURL)
	if _, err := os.Stat(mirror); errors.Is(err, os.ErrNotExist) {
		tmp := fmt.Sprintf("%s.tmp-%d", mirror, time.Now().UnixNano())
		defer os.RemoveAll(tmp)
		if _, err := g.Run(ctx, "", "clone", "--quiet", "--mirror", "--", repoURL, tmp); err != nil {
			return "", fmt.Errorf("clone %s: %w", name, err)
		}
		if err := os.Rename(tmp, mirror); err != nil {
			return "", fmt.Errorf("clone %s: %w", name, err)
		}
	} else if err != nil {
		return "", fmt.Errorf("mirror of %s: %w", name, err)
	} else if !fullSHA.MatchString(revision) || !hasCommit(ctx, g, mirror, revision) {
		// A branch may have moved; a commit we lack may have arrived.
		if _, err := g.Run(ctx, mirror, "fetch", "--quiet", "--prune", "--force", "--", repoURL, "+refs/*:refs/*"); err != nil {
			return "", fmt.Errorf("fetch %s: %w", name, err)
		}
	}
	spec := revision
	if spec == "" {
		spec = "HEAD"
	}
	if rev, err := resolve(ctx, g, mirror, spec); err == nil {
		return rev, nil
	}
	if fullSHA.MatchString(revision) {
		// Not on any ref: servers that allow it give a commit by its id.
		if _, err := g.Run(ctx, mirror, "fetch", "--quiet", "--", repoURL, revision); err == nil {
			if rev, err := resolve(ctx, g, mirror, revision); err == nil {
				return rev, nil
			}
		}
	}
	return "", fmt.Errorf("checkout %s: revision %q not found", name, revision)
}

func hasCommit(ctx context.Context, g *gitcmd.Git, mirror, rev string) bool {
	_, err := g.Run(ctx, mirror, "cat-file", "-e", rev+"^{commit}")
	return err == nil
}

func resolve(ctx context.Context, g *gitcmd.Git, mirror, spec string) (string, error) {
	if strings.HasPrefix(spec, "-") {
		return "", fmt.Errorf("bad revision %q", spec)
	}
	out, err := g.Run(ctx, mirror, "rev-parse", "--verify", "--quiet", spec+"^{commit}")
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(out), nil
}

// fileLock is a flock(2) on a lock file: exclusive or shared, waited for with ctx.
type fileLock struct{ f *os.File }

func lockFile(ctx context.Context, path string, exclusive bool) (*fileLock, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	l := &fileLock{f: f}
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	if err := l.lock(ctx, how); err != nil {
		f.Close()
		return nil, err
	}
	return l, nil
}

func (l *fileLock) lock(ctx context.Context, how int) error {
	for delay := time.Millisecond; ; delay = min(delay*2, 100*time.Millisecond) {
		err := syscall.Flock(int(l.f.Fd()), how|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
}

func (l *fileLock) share(ctx context.Context) error { return l.lock(ctx, syscall.LOCK_SH) }

func (l *fileLock) unlock() {
	_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	_ = l.f.Close()
}

// randomHex is n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
