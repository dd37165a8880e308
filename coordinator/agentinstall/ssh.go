package agentinstall

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Target is the host to install on: ssh://user@host[:port].
type Target struct {
	User string
	Host string
	Port int
}

// Addr is host:port as the SSH client dials it.
func (t Target) Addr() string { return net.JoinHostPort(t.Host, strconv.Itoa(t.Port)) }

func (t Target) String() string { return "ssh://" + t.User + "@" + t.Addr() }

// ParseTarget reads ssh://user@host[:port]; the user defaults to root and the port to 22.
func ParseTarget(s string) (Target, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "ssh" || u.Hostname() == "" || (u.Path != "" && u.Path != "/") ||
		u.RawQuery != "" || u.Fragment != "" {
		return Target{}, fmt.Errorf("target %q is not ssh://user@host[:port]", s)
	}
	if _, hasPassword := u.User.Password(); hasPassword {
		return Target{}, fmt.Errorf("target %q: passwords are not accepted; use a key (ssh-agent, ~/.ssh or --identity)", s)
	}
	t := Target{User: u.User.Username(), Host: u.Hostname(), Port: 22}
	if t.User == "" {
		t.User = "root"
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return Target{}, fmt.Errorf("target %q: port %q is not a port number", s, p)
		}
		t.Port = n
	}
	return t, nil
}

// SSHOptions say how to authenticate and which host keys to trust.
type SSHOptions struct {
	// Identity is a private key file; empty: ~/.ssh/id_ed25519, id_ecdsa, id_rsa.
	Identity string
	// KnownHosts is the known_hosts file; empty: ~/.ssh/known_hosts.
	KnownHosts string
	// AcceptNew records the key of a host known_hosts does not list (never one that
	// differs from a listed key).
	AcceptNew bool
	// Home and AgentSocket are $HOME and $SSH_AUTH_SOCK.
	Home        string
	AgentSocket string
	// Out is told which new host key was accepted.
	Out io.Writer
}

// UnknownHostError is a host known_hosts does not list.
type UnknownHostError struct {
	Addr, Fingerprint, KnownHosts string
}

func (e *UnknownHostError) Error() string {
	return fmt.Sprintf("host %s is not in %s (its key is %s); check the fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) and rerun with --accept-new-host-key, or add it to known_hosts yourself",
		e.Addr, e.KnownHosts, e.Fingerprint)
}

// HostKeyMismatchError is a host whose key is not the one known_hosts lists for it.
type HostKeyMismatchError struct {
	Addr, Fingerprint, KnownHosts string
	Line                          int
}

func (e *HostKeyMismatchError) Error() string {
	return fmt.Sprintf("HOST KEY MISMATCH for %s: it presented %s, which is not the key %s:%d lists for it; someone may be intercepting the connection, or the host was reinstalled (then remove the old line and verify the new key) — refusing to connect",
		e.Addr, e.Fingerprint, e.KnownHosts, e.Line)
}

// Dial connects and authenticates, verifying the host key against known_hosts.
func Dial(ctx context.Context, t Target, o SSHOptions) (*ssh.Client, error) {
	if o.KnownHosts == "" {
		o.KnownHosts = filepath.Join(o.Home, ".ssh", "known_hosts")
	}
	signers, closeAgent, err := signers(o)
	if err != nil {
		return nil, err
	}
	defer closeAgent()
	if len(signers) == 0 {
		return nil, errors.New("no SSH key to log in with: start ssh-agent with a key, put one in ~/.ssh (id_ed25519, id_ecdsa, id_rsa), or give --identity")
	}
	check, algos, err := hostKeyCheck(t, o)
	if err != nil {
		return nil, err
	}
	cfg := &ssh.ClientConfig{User: t.User, Auth: []ssh.AuthMethod{ssh.PublicKeys(signers...)},
		HostKeyCallback: check, HostKeyAlgorithms: algos, Timeout: 30 * time.Second}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", t.Addr())
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", t.Addr(), err)
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, t.Addr(), cfg)
	if err != nil {
		conn.Close()
		var unknown *UnknownHostError
		var mismatch *HostKeyMismatchError
		if errors.As(err, &unknown) {
			return nil, unknown
		}
		if errors.As(err, &mismatch) {
			return nil, mismatch
		}
		return nil, fmt.Errorf("ssh %s: %w", t, err)
	}
	return ssh.NewClient(c, chans, reqs), nil
}

// signers are the keys to offer: ssh-agent's, then --identity or the usual files.
func signers(o SSHOptions) ([]ssh.Signer, func(), error) {
	var out []ssh.Signer
	closeAgent := func() {}
	if o.AgentSocket != "" {
		if conn, err := net.Dial("unix", o.AgentSocket); err == nil {
			closeAgent = func() { conn.Close() }
			if s, err := agent.NewClient(conn).Signers(); err == nil {
				out = append(out, s...)
			}
		}
	}
	files := []string{o.Identity}
	if o.Identity == "" {
		files = nil
		for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			files = append(files, filepath.Join(o.Home, ".ssh", n))
		}
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) && o.Identity == "" {
			continue
		}
		if err != nil {
			closeAgent()
			return nil, nil, fmt.Errorf("read SSH key: %w", err)
		}
		s, err := ssh.ParsePrivateKey(b)
		var encrypted *ssh.PassphraseMissingError
		switch {
		case errors.As(err, &encrypted) && o.Identity == "":
			continue // ssh-agent holds it, if anything does
		case errors.As(err, &encrypted):
			closeAgent()
			return nil, nil, fmt.Errorf("SSH key %s is encrypted: add it to ssh-agent (ssh-add %s) instead", f, f)
		case err != nil:
			closeAgent()
			return nil, nil, fmt.Errorf("SSH key %s: %w", f, err)
		}
		out = append(out, s)
	}
	return out, closeAgent, nil
}

// hostKeyCheck verifies the host's key against known_hosts, recording a new host's
// key when told to. The algorithms are those of the keys known_hosts has for the
// host, so the server presents one of them rather than another it also has.
func hostKeyCheck(t Target, o SSHOptions) (ssh.HostKeyCallback, []string, error) {
	if err := os.MkdirAll(filepath.Dir(o.KnownHosts), 0o700); err != nil {
		return nil, nil, fmt.Errorf("known_hosts: %w", err)
	}
	f, err := os.OpenFile(o.KnownHosts, os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("known_hosts: %w", err)
	}
	f.Close()
	known, err := knownhosts.New(o.KnownHosts)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", o.KnownHosts, err)
	}
	algos := knownAlgorithms(known, t.Addr())
	check := func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		err := known(hostname, remote, key)
		var ke *knownhosts.KeyError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &ke) && len(ke.Want) > 0:
			return &HostKeyMismatchError{Addr: knownhosts.Normalize(hostname), Fingerprint: ssh.FingerprintSHA256(key),
				KnownHosts: ke.Want[0].Filename, Line: ke.Want[0].Line}
		case !errors.As(err, &ke):
			return fmt.Errorf("host key of %s: %w", hostname, err) // revoked, or unreadable
		case !o.AcceptNew:
			return &UnknownHostError{Addr: knownhosts.Normalize(hostname), Fingerprint: ssh.FingerprintSHA256(key), KnownHosts: o.KnownHosts}
		}
		line := knownhosts.Line([]string{knownhosts.Normalize(hostname)}, key)
		w, err := os.OpenFile(o.KnownHosts, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("record host key: %w", err)
		}
		if _, err := fmt.Fprintln(w, line); err != nil {
			w.Close()
			return fmt.Errorf("record host key: %w", err)
		}
		if err := w.Close(); err != nil {
			return fmt.Errorf("record host key: %w", err)
		}
		fmt.Fprintf(o.Out, "accepted new host key for %s: %s %s (recorded in %s)\n",
			knownhosts.Normalize(hostname), key.Type(), ssh.FingerprintSHA256(key), o.KnownHosts)
		return nil
	}
	return check, algos, nil
}

// knownAlgorithms asks known_hosts, with a key no host has, which keys it lists for
// addr: their algorithms (nil when it lists none, to accept any).
func knownAlgorithms(known ssh.HostKeyCallback, addr string) []string {
	probe, err := ssh.NewSignerFromKey(probeKey())
	if err != nil {
		return nil
	}
	var ke *knownhosts.KeyError
	if !errors.As(known(addr, &net.TCPAddr{}, probe.PublicKey()), &ke) {
		return nil
	}
	var out []string
	for _, k := range ke.Want {
		switch typ := k.Key.Type(); typ {
		case ssh.KeyAlgoRSA:
			out = append(out, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA)
		default:
			out = append(out, typ)
		}
	}
	return dedupe(out)
}

func dedupe(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range s {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	return out
}

// errTrim shortens a remote command's output for an error message.
func errTrim(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 2000 {
		s = "…" + s[len(s)-2000:]
	}
	return s
}

// probeKey is a fixed key no host presents, to ask known_hosts what it lists.
func probeKey() ed25519.PrivateKey { return ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize)) }
