package work

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fc-ci/fc/protocol"
)

// The coordinator's entry comes first (curl takes the first entry for a host), then
// Nix's own entries, so upstream caches keep their credentials; without a token only
// Nix's entries remain. The file is its owner's alone and replaced whole.
func TestCacheLogin_WritesTheCoordinatorsEntryThenNixs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	nixNetrc := filepath.Join(dir, "nix-netrc")
	if err := os.WriteFile(nixNetrc, []byte("machine cache.example.org login me password upstream-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	l := &CacheLogin{Path: filepath.Join(dir, "cache.netrc"), CacheURL: "https://fc.example.org:8443/nix-cache",
		NixNetrc: func() string { return nixNetrc }}
	l.Welcome(protocol.Welcome{Name: "builder-1", CacheToken: "fcc_0123"})
	want := "machine fc.example.org login builder-1 password fcc_0123\n" +
		"machine cache.example.org login me password upstream-secret\n"
	if b, err := os.ReadFile(l.Path); err != nil || string(b) != want {
		t.Errorf("netrc %q (%v), want %q", b, err, want)
	}
	if st, err := os.Stat(l.Path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("netrc mode %v (%v), want 0600", st.Mode().Perm(), err)
	}

	l.Welcome(protocol.Welcome{Name: "builder-1"}) // a coordinator that gives no token
	if b, _ := os.ReadFile(l.Path); string(b) != "machine cache.example.org login me password upstream-secret\n" {
		t.Errorf("without a token: %q, want Nix's entries alone", b)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Errorf("%d files in the directory, want the two netrc files (no temporary left)", len(entries))
	}
}

func TestNetrcText_RefusesWhatWouldNotReadBackWithoutShowingTheToken(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ url, login, token string }{
		{"http://127.0.0.1:3000/nix-cache", "a b", "fcc_1"},
		{"http://127.0.0.1:3000/nix-cache", "agent", "fcc_secret with space"},
		{"/nix-cache", "agent", "fcc_1"},
	} {
		_, err := netrcText(tc.url, tc.login, tc.token, nil)
		if err == nil {
			t.Errorf("%q %q: no error", tc.url, tc.login)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("the error shows the token: %v", err)
		}
	}
}
