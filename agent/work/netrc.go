package work

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/fc-ci/fc/protocol"
)

// CacheLogin keeps the netrc file through which the agent's Nix presents its cache
// read token (protocol.Welcome.CacheToken) to the coordinator's binary cache, which
// refuses readers without one when it is private. StepRunner.NetrcFile names the file.
type CacheLogin struct {
	// Path is the netrc file, in the agent's state directory; it is written 0600.
	Path string
	// CacheURL is the coordinator's cache; its host is the netrc entry's machine.
	CacheURL string
	// CurrentCacheURL, if set, replaces CacheURL: the cache of the coordinator the
	// agent is connected to now, asked at each Welcome.
	CurrentCacheURL func() string
	// NixNetrc returns Nix's own netrc-file ("" when unknown); it must be quick (the
	// session waits for Welcome). Its entries follow the coordinator's, so upstream
	// caches still get the credentials they got before the agent's file replaced Nix's.
	NixNetrc func() string
	Logger   *slog.Logger
}

// Welcome writes the file for a new session's token (called before the session takes
// work). A failure is logged: steps then substitute without the token, as before.
func (l *CacheLogin) Welcome(w protocol.Welcome) {
	log := l.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var nixEntries []byte
	if l.NixNetrc != nil {
		if p := l.NixNetrc(); p != "" && p != l.Path {
			b, err := os.ReadFile(p)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				log.Warn("read Nix's netrc file; its credentials are not passed on", "path", p, "err", err)
			}
			nixEntries = b
		}
	}
	cacheURL := l.CacheURL
	if l.CurrentCacheURL != nil {
		cacheURL = l.CurrentCacheURL()
	}
	text, err := netrcText(cacheURL, w.Name, w.CacheToken, nixEntries)
	if err == nil {
		err = writePrivate(l.Path, text)
	}
	if err != nil {
		log.Warn("write the cache credentials; a private cache will refuse this agent's Nix", "path", l.Path, "err", err)
		return
	}
	log.Debug("wrote the cache credentials", "path", l.Path, "with_token", w.CacheToken != "")
}

// netrcText is the coordinator's entry (none without a token), then Nix's own entries.
func netrcText(cacheURL, login, token string, nixEntries []byte) (string, error) {
	var b strings.Builder
	if token != "" {
		u, err := url.Parse(cacheURL)
		if err != nil || u.Hostname() == "" {
			return "", fmt.Errorf("cache URL %q has no host", cacheURL)
		}
		if login == "" {
			login = "fc-agent"
		}
		// curl takes the first entry for a host, so the coordinator's comes first.
		for field, v := range map[string]string{"machine": u.Hostname(), "login": login, "password": token} {
			if strings.ContainsAny(v, " \t\r\n\"#") {
				return "", fmt.Errorf("the netrc %s would not read back as written", field) // never the token itself
			}
		}
		fmt.Fprintf(&b, "machine %s login %s password %s\n", u.Hostname(), login, token)
	}
	if len(nixEntries) > 0 {
		b.Write(nixEntries)
		if nixEntries[len(nixEntries)-1] != '\n' {
			b.WriteByte('\n')
		}
	}
	return b.String(), nil
}

// writePrivate replaces path with text, readable by its owner only, at once: a Nix
// process reading it meanwhile sees the old file or the new one.
func writePrivate(path, text string) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*") // mode 0600
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.WriteString(text)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
