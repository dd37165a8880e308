// Package gitcmd runs the git command line for FC: with a repository's fetch
// credentials (an HTTPS token or an SSH deploy key) scoped to that repository's
// scheme, host and port, never in argv, logs or errors, and never prompting. The
// agent's evaluator checks repositories out with it (agent/evaluator); the
// coordinator's evaluation scheduler resolves branches with LsRemote
// (coordinator/evalqueue), so neither side imports the other for git.
package gitcmd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Credentials fetch a private repository: an SSH deploy key (PEM/OpenSSH private key)
// or an HTTPS token. Neither ever appears in argv, logs or errors.
type Credentials struct {
	SSHKey     string
	HTTPSToken string
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

// Git runs git with the credentials of one repository in its environment. Close
// removes the files it made for them.
type Git struct {
	env     []string
	secrets []string
	tmp     string
}

// New prepares git for repoURL with creds. stateDir keeps the SSH known_hosts file
// (host keys are trusted on first use).
func New(stateDir, repoURL string, creds Credentials) (*Git, error) {
	g := &Git{env: []string{"GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=/bin/false", "SSH_ASKPASS=/bin/false", "LC_ALL=C"}}
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
		if err := g.addToken(o, creds.HTTPSToken); err != nil {
			g.Close()
			return nil, err
		}
	}
	if creds.SSHKey != "" {
		if err := g.addSSHKey(creds.SSHKey, filepath.Join(stateDir, "known_hosts")); err != nil {
			g.Close()
			return nil, err
		}
	}
	return g, nil
}

// addToken lets git answer a 401 from o with token. git asks credential helpers
// for a user name and password when a server says 401. This one answers from the
// environment (the token is in neither argv nor a file), and git asks it only for
// the repository's own scheme, host and port (credential.<origin>.helper): a
// redirect, another repository or a submodule elsewhere is asked nothing, and no
// other helper (a user's credential store) is asked at all.
func (g *Git) addToken(o origin, token string) error {
	helper := filepath.Join(g.tmp, "credential-helper")
	if err := os.WriteFile(helper, []byte(credentialHelper), 0o700); err != nil {
		return fmt.Errorf("checkout: %w", err)
	}
	g.env = append(g.env, "FC_GIT_TOKEN="+token,
		"GIT_CONFIG_COUNT=2", "GIT_CONFIG_KEY_0=credential.helper", "GIT_CONFIG_VALUE_0=",
		"GIT_CONFIG_KEY_1=credential."+o.String()+".helper", "GIT_CONFIG_VALUE_1=!"+shellQuote(helper))
	return nil
}

// addSSHKey makes ssh use the deploy key k, and only it.
func (g *Git) addSSHKey(k, knownHosts string) error {
	key := filepath.Join(g.tmp, "id")
	if !strings.HasSuffix(k, "\n") {
		k += "\n"
	}
	if err := os.WriteFile(key, []byte(k), 0o600); err != nil {
		return fmt.Errorf("checkout: %w", err)
	}
	g.env = append(g.env, "GIT_SSH_COMMAND="+sshCommand(key, knownHosts))
	return nil
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

// sshCommand is GIT_SSH_COMMAND for a deploy key: only that key, no prompts, and host
// keys trusted on first use in the agent's own known_hosts.
func sshCommand(key, knownHosts string) string {
	return "ssh -i " + shellQuote(key) + " -o IdentitiesOnly=yes -o BatchMode=yes" +
		" -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=" + shellQuote(knownHosts)
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// Close removes the credential files.
func (g *Git) Close() {
	if g.tmp != "" {
		_ = os.RemoveAll(g.tmp)
	}
}

// Redact hides credentials in s.
func (g *Git) Redact(s string) string {
	for _, sec := range g.secrets {
		s = strings.ReplaceAll(s, sec, "***")
	}
	return s
}

// Run runs git in dir (none: the current directory) with the credentials, and
// returns its standard output; errors have the credentials redacted.
func (g *Git) Run(ctx context.Context, dir string, args ...string) (string, error) {
	out, err := Run(ctx, dir, g.env, args...)
	if err != nil {
		return out, errors.New(g.Redact(err.Error()))
	}
	return out, nil
}

// Run runs git in dir (none: the current directory) with extra environment, and
// returns its standard output; an error carries git's standard error, or ctx's
// error when ctx ended.
func Run(ctx context.Context, dir string, env []string, args ...string) (string, error) {
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

// LsRemote resolves branch (HEAD when empty) of repoURL to a commit without cloning,
// using the repository's credentials like a checkout does. A branch starting with
// refs/ is a full ref (a pull request's head: refs/pull/N/head). stateDir keeps the
// SSH known_hosts file.
func LsRemote(ctx context.Context, stateDir, repoURL, branch string, creds Credentials) (string, error) {
	g, err := New(stateDir, repoURL, creds)
	if err != nil {
		return "", err
	}
	defer g.Close()
	ref := RefOf(branch)
	out, err := g.Run(ctx, "", "ls-remote", "--", repoURL, ref)
	if err != nil {
		return "", fmt.Errorf("git ls-remote %s %s: %w", g.Redact(repoURL), ref, err)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[1] == ref {
			return f[0], nil
		}
	}
	return "", fmt.Errorf("git ls-remote %s: no %s", g.Redact(repoURL), ref)
}

// RefOf is the ref a jobset's branch names: HEAD for none, a full ref as it is
// (refs/pull/1/head), refs/heads/<branch> otherwise.
func RefOf(branch string) string {
	switch {
	case branch == "":
		return "HEAD"
	case strings.HasPrefix(branch, "refs/"):
		return branch
	}
	return "refs/heads/" + branch
}

// DefaultBranch is the branch the HEAD of repoURL points to (git ls-remote --symref),
// without cloning, with the repository's credentials.
func DefaultBranch(ctx context.Context, stateDir, repoURL string, creds Credentials) (string, error) {
	g, err := New(stateDir, repoURL, creds)
	if err != nil {
		return "", err
	}
	defer g.Close()
	out, err := g.Run(ctx, "", "ls-remote", "--symref", "--", repoURL, "HEAD")
	if err != nil {
		return "", fmt.Errorf("git ls-remote --symref %s HEAD: %w", g.Redact(repoURL), err)
	}
	// "ref: refs/heads/main\tHEAD" precedes the commit line.
	for _, line := range strings.Split(out, "\n") {
		target, ok := strings.CutPrefix(line, "ref: ")
		if !ok {
			continue
		}
		if f := strings.Fields(target); len(f) == 2 && f[1] == "HEAD" {
			if branch, ok := strings.CutPrefix(f[0], "refs/heads/"); ok {
				return branch, nil
			}
		}
	}
	return "", fmt.Errorf("git ls-remote --symref %s: HEAD names no branch", g.Redact(repoURL))
}
