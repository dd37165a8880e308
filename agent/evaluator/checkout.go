package evaluator

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Credentials fetch a private repository: an SSH deploy key (PEM/OpenSSH private key)
// or an HTTPS token. Neither ever appears in argv, logs or errors.
type Credentials struct {
	SSHKey     string
	HTTPSToken string
}

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
	g, err := newGit(cacheDir, repoURL, creds)
	if err != nil {
		return "", "", nil, err
	}
	defer g.close()

	sum := sha256.Sum256([]byte(repoURL))
	mirror := filepath.Join(mirrors, hex.EncodeToString(sum[:12])+".git")
	lock, err := lockFile(ctx, mirror+".lock", true)
	if err != nil {
		return "", "", nil, fmt.Errorf("checkout %s: lock mirror: %w", g.redact(repoURL), err)
	}
	defer lock.unlock()

	rev, err = g.updateMirror(ctx, mirror, repoURL, revision)
	if err != nil {
		return "", "", nil, err
	}
	// Readers may clone side by side; only a fetch needs the mirror to itself.
	if err := lock.share(ctx); err != nil {
		return "", "", nil, fmt.Errorf("checkout %s: lock mirror: %w", g.redact(repoURL), err)
	}
	dir, err = os.MkdirTemp(work, "checkout-")
	if err != nil {
		return "", "", nil, fmt.Errorf("checkout: %w", err)
	}
	cleanup = func() { _ = os.RemoveAll(dir) }
	if _, err := g.run(ctx, "", "clone", "--quiet", "--shared", "--no-checkout", "--", mirror, dir); err != nil {
		cleanup()
		return "", "", nil, fmt.Errorf("checkout %s: clone from mirror: %w", g.redact(repoURL), err)
	}
	if _, err := g.run(ctx, dir, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", rev); err != nil {
		cleanup()
		return "", "", nil, fmt.Errorf("checkout %s at %s: %w", g.redact(repoURL), rev, err)
	}
	return dir, rev, cleanup, nil
}

// RevCount is the number of commits reachable from rev (git rev-list --count), the
// revCount of a git input.
func RevCount(ctx context.Context, dir, rev string) (int, error) {
	out, err := runGit(ctx, dir, nil, "rev-list", "--count", rev)
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
	out, err := runGit(ctx, dir, nil, "rev-parse", "--verify", "HEAD^{commit}")
	if err != nil {
		return "", fmt.Errorf("rev-parse HEAD: %w", err)
	}
	return strings.TrimSpace(out), nil
}

// git runs git with the credentials of one repository in its environment.
type git struct {
	env     []string
	secrets []string
	tmp     string
}

func newGit(cacheDir, repoURL string, creds Credentials) (*git, error) {
	g := &git{env: []string{"GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=/bin/false", "SSH_ASKPASS=/bin/false", "LC_ALL=C"}}
	if u, err := url.Parse(repoURL); err == nil && u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			g.secrets = append(g.secrets, p)
		}
	}
	if creds.HTTPSToken != "" {
		g.secrets = append(g.secrets, creds.HTTPSToken)
	}
	o, hasOrigin := originOf(repoURL)
	if creds.HTTPSToken != "" && (!hasOrigin || (o.scheme != "https" && o.scheme != "http")) {
		creds.HTTPSToken = "" // nothing here speaks HTTP
	}
	if creds.SSHKey == "" && creds.HTTPSToken == "" {
		return g, nil
	}
	tmp, err := os.MkdirTemp("", "fc-git-")
	if err != nil {
		return nil, fmt.Errorf("checkout: %w", err)
	}
	g.tmp = tmp
	if creds.HTTPSToken != "" {
		// git asks credential helpers for a user name and password when a server
		// says 401. This one answers from the environment (the token is in neither
		// argv nor a file), and git asks it only for the repository's own scheme,
		// host and port (credential.<origin>.helper): a redirect, another
		// repository or a submodule elsewhere is asked nothing, and no other helper
		// (a user's credential store) is asked at all.
		helper := filepath.Join(tmp, "credential-helper")
		if err := os.WriteFile(helper, []byte(credentialHelper), 0o700); err != nil {
			g.close()
			return nil, fmt.Errorf("checkout: %w", err)
		}
		g.env = append(g.env, "FC_GIT_TOKEN="+creds.HTTPSToken,
			"GIT_CONFIG_COUNT=2", "GIT_CONFIG_KEY_0=credential.helper", "GIT_CONFIG_VALUE_0=",
			"GIT_CONFIG_KEY_1=credential."+o.String()+".helper", "GIT_CONFIG_VALUE_1=!"+shellQuote(helper))
	}
	if creds.SSHKey != "" {
		key := filepath.Join(tmp, "id")
		k := creds.SSHKey
		if !strings.HasSuffix(k, "\n") {
			k += "\n"
		}
		if err := os.WriteFile(key, []byte(k), 0o600); err != nil {
			g.close()
			return nil, fmt.Errorf("checkout: %w", err)
		}
		g.env = append(g.env, "GIT_SSH_COMMAND="+sshCommand(key, filepath.Join(cacheDir, "known_hosts")))
	}
	return g, nil
}

// credentialHelper is a git credential helper that gives the token in FC_GIT_TOKEN
// (user x-access-token unless the URL names one).
const credentialHelper = `#!/bin/sh
test "$1" = get || exit 0
user=
while IFS= read -r line && test -n "$line"; do
	case "$line" in username=*) user=1 ;; esac
done
test -n "$user" || echo username=x-access-token
printf 'password=%s\n' "$FC_GIT_TOKEN"
`

// origin is the scheme, host and port of a repository URL: what fetch credentials
// are scoped to.
type origin struct{ scheme, host, port string }

func (o origin) String() string { return o.scheme + "://" + net.JoinHostPort(o.host, o.port) }

var defaultPorts = map[string]string{"https": "443", "http": "80", "ssh": "22", "git": "9418"}

// originOf is the origin of a network repository URL (https, http, ssh or git, or
// scp-like user@host:path), with the host in lower case and the scheme's default
// port filled in; local repositories (paths, file://) have none.
func originOf(repoURL string) (origin, bool) {
	if u, err := url.Parse(repoURL); err == nil && u.Scheme != "" {
		scheme := strings.ToLower(u.Scheme)
		def, known := defaultPorts[scheme]
		if !known || u.Hostname() == "" {
			return origin{}, false
		}
		port := u.Port()
		if port == "" {
			port = def
		}
		return origin{scheme: scheme, host: strings.ToLower(u.Hostname()), port: port}, true
	}
	// scp-like syntax: [user@]host:path, no slash before the colon.
	if i := strings.Index(repoURL, ":"); i > 0 && !strings.Contains(repoURL[:i], "/") {
		host := repoURL[:i]
		if at := strings.LastIndex(host, "@"); at >= 0 {
			host = host[at+1:]
		}
		host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
		if host != "" {
			return origin{scheme: "ssh", host: strings.ToLower(host), port: "22"}, true
		}
	}
	return origin{}, false
}

// ScopedTo is c for a repository at repoURL when it has the scheme, host and port
// of projectURL (the project's repository_url, whose credentials c are), and no
// credentials otherwise: a jobset's other inputs never receive the project's.
func (c Credentials) ScopedTo(projectURL, repoURL string) Credentials {
	p, ok1 := originOf(projectURL)
	r, ok2 := originOf(repoURL)
	if !ok1 || !ok2 || p != r {
		return Credentials{}
	}
	return c
}

// sshCommand is GIT_SSH_COMMAND for a deploy key: only that key, no prompts, and host
// keys trusted on first use in the agent's own known_hosts.
func sshCommand(key, knownHosts string) string {
	return "ssh -i " + shellQuote(key) + " -o IdentitiesOnly=yes -o BatchMode=yes" +
		" -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=" + shellQuote(knownHosts)
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func (g *git) close() {
	if g.tmp != "" {
		_ = os.RemoveAll(g.tmp)
	}
}

// redact hides credentials in s.
func (g *git) redact(s string) string {
	for _, sec := range g.secrets {
		s = strings.ReplaceAll(s, sec, "***")
	}
	return s
}

func (g *git) run(ctx context.Context, dir string, args ...string) (string, error) {
	out, err := runGit(ctx, dir, g.env, args...)
	if err != nil {
		return out, errors.New(g.redact(err.Error()))
	}
	return out, nil
}

// runGit runs git in dir (none: the current directory) with extra environment.
func runGit(ctx context.Context, dir string, env []string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-c", "protocol.file.allow=always"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return stdout.String(), fmt.Errorf("git %s: %s", args[0], msg)
	}
	return stdout.String(), nil
}

// updateMirror makes sure mirror holds revision and returns its commit.
func (g *git) updateMirror(ctx context.Context, mirror, repoURL, revision string) (string, error) {
	name := g.redact(repoURL)
	if _, err := os.Stat(mirror); errors.Is(err, os.ErrNotExist) {
		tmp := fmt.Sprintf("%s.tmp-%d", mirror, time.Now().UnixNano())
		defer os.RemoveAll(tmp)
		if _, err := g.run(ctx, "", "clone", "--quiet", "--mirror", "--", repoURL, tmp); err != nil {
			return "", fmt.Errorf("clone %s: %w", name, err)
		}
		if err := os.Rename(tmp, mirror); err != nil {
			return "", fmt.Errorf("clone %s: %w", name, err)
		}
	} else if err != nil {
		return "", fmt.Errorf("mirror of %s: %w", name, err)
	} else if !fullSHA.MatchString(revision) || !g.hasCommit(ctx, mirror, revision) {
		// A branch may have moved; a commit we lack may have arrived.
		if _, err := g.run(ctx, mirror, "fetch", "--quiet", "--prune", "--force", "--", repoURL, "+refs/*:refs/*"); err != nil {
			return "", fmt.Errorf("fetch %s: %w", name, err)
		}
	}
	spec := revision
	if spec == "" {
		spec = "HEAD"
	}
	if rev, err := g.resolve(ctx, mirror, spec); err == nil {
		return rev, nil
	}
	if fullSHA.MatchString(revision) {
		// Not on any ref: servers that allow it give a commit by its id.
		if _, err := g.run(ctx, mirror, "fetch", "--quiet", "--", repoURL, revision); err == nil {
			if rev, err := g.resolve(ctx, mirror, revision); err == nil {
				return rev, nil
			}
		}
	}
	return "", fmt.Errorf("checkout %s: revision %q not found", name, revision)
}

func (g *git) hasCommit(ctx context.Context, mirror, rev string) bool {
	_, err := g.run(ctx, mirror, "cat-file", "-e", rev+"^{commit}")
	return err == nil
}

func (g *git) resolve(ctx context.Context, mirror, spec string) (string, error) {
	if strings.HasPrefix(spec, "-") {
		return "", fmt.Errorf("bad revision %q", spec)
	}
	out, err := g.run(ctx, mirror, "rev-parse", "--verify", "--quiet", spec+"^{commit}")
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
