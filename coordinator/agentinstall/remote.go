package agentinstall

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"

	"golang.org/x/crypto/ssh"
)

// remote runs shell scripts on the host, through sudo when the user is not root.
type remote struct {
	c    *ssh.Client
	sudo bool
}

// nixPath puts Nix's usual places on PATH: a non-interactive SSH session does not
// read the profile that a multi-user Nix install extends PATH in.
const nixPath = `PATH="$PATH:/nix/var/nix/profiles/default/bin:/run/current-system/sw/bin"; export PATH; `

// run runs script with sh on the host (stdin may be nil) and returns its stdout; a
// failure's error carries its stderr.
func (r *remote) run(ctx context.Context, script string, stdin io.Reader) ([]byte, error) {
	s, err := r.c.NewSession()
	if err != nil {
		return nil, fmt.Errorf("open SSH session: %w", err)
	}
	defer s.Close()
	var out, errOut bytes.Buffer
	s.Stdout, s.Stderr, s.Stdin = &out, &errOut, stdin
	cmd := "sh -c " + shQuote(nixPath+script)
	if r.sudo {
		cmd = "sudo -n " + cmd
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(cmd) }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = s.Signal(ssh.SIGKILL)
		s.Close()
		return nil, ctx.Err()
	}
	if err != nil {
		msg := errTrim(errOut.Bytes())
		if msg == "" {
			msg = errTrim(out.Bytes())
		}
		return out.Bytes(), fmt.Errorf("%w: %s", err, msg)
	}
	return out.Bytes(), nil
}

// output is run's stdout, trimmed.
func (r *remote) output(ctx context.Context, script string) (string, error) {
	b, err := r.run(ctx, script, nil)
	return strings.TrimSpace(string(b)), err
}

// writeFile replaces path with content: uploaded beside it, then renamed.
func (r *remote) writeFile(ctx context.Context, path string, mode uint32, content io.Reader) error {
	tmp := path + ".fc-install"
	if err := r.upload(ctx, tmp, mode, content); err != nil {
		return err
	}
	if _, err := r.run(ctx, "mv -f "+shQuote(tmp)+" "+shQuote(path), nil); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// shQuote quotes s for sh.
func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func dirOf(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return "/"
	}
	return p[:i]
}
