package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

func runLogin(ctx context.Context, c *cmdEnv, args []string) error {
	if err := wantArgs("login", args, 0, 1, "[URL] [--key KEY]"); err != nil {
		return err
	}
	stored, err := loadConfig(c.Getenv)
	if err != nil {
		return err
	}
	raw := stored.URL // FC_URL, else the stored one
	if len(args) == 1 {
		raw = args[0]
	}
	if raw == "" {
		return usagef("login: which coordinator? usage: fc login URL [--key KEY]")
	}
	base, err := normalizeURL(raw)
	if err != nil {
		return err
	}
	key := strings.TrimSpace(c.key)
	if key == "" {
		if key, err = readKey(c.Stdin, c.Stderr, base); err != nil {
			return err
		}
	}
	if key == "" {
		return usagef("login: no API key given (--key KEY, or the key on stdin)")
	}
	a := &api{base: base, key: key, http: &http.Client{}}
	// A read with the key: an unknown key is refused (401) even where reads are public.
	b, err := a.do(ctx, http.MethodGet, "/projects", url.Values{"limit": {"1"}}, nil)
	if err != nil {
		return fmt.Errorf("login to %s: %w", base, err)
	}
	var p page
	if err := json.Unmarshal(b, &p); err != nil || p.Items == nil {
		return fmt.Errorf("login: %s does not answer like an FC coordinator (GET /api/v1/projects)", base)
	}
	path, err := saveConfig(c.Getenv, Config{URL: base, APIKey: key})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.Stdout, "logged in to %s (saved in %s)\n", base, path)
	if c.Getenv("FC_API_KEY") != "" || c.Getenv("FC_URL") != "" {
		fmt.Fprintln(c.Stderr, "fc: note: FC_URL or FC_API_KEY is set and overrides the saved configuration")
	}
	return nil
}

// readKey reads the key from stdin: from a terminal after a prompt, without echo;
// otherwise its first line.
func readKey(in io.Reader, prompt io.Writer, base string) (string, error) {
	if in == nil {
		return "", nil
	}
	if f, ok := in.(*os.File); ok {
		if t, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			// Echo off before the prompt: a key pasted the moment the prompt shows
			// must not be echoed.
			quiet := *t
			quiet.Lflag &^= unix.ECHO
			if err := unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, &quiet); err == nil {
				defer func() {
					_ = unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, t)
					fmt.Fprintln(prompt)
				}()
			}
			fmt.Fprintf(prompt, "API key for %s: ", base)
		}
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read the API key: %w", err)
	}
	return strings.TrimSpace(line), nil
}

func runLogout(_ context.Context, c *cmdEnv, args []string) error {
	if err := wantArgs("logout", args, 0, 0, ""); err != nil {
		return err
	}
	path, removed, err := removeConfig(c.Getenv)
	if err != nil {
		return err
	}
	if removed {
		fmt.Fprintf(c.Stdout, "logged out (removed %s)\n", path)
	} else {
		fmt.Fprintln(c.Stdout, "not logged in: nothing to remove")
	}
	return nil
}
