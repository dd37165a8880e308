package probe

import (
	"context"
	"encoding/json"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseVersion(t *testing.T) {
	cases := []struct{ in, want string }{
		{"nix (Nix) 2.8.0\n", "2.8.0"},
		{"nix (Nix) 2.18.1", "2.18.1"},
		{"nix (Nix) 2.24.0pre20240725_abcdef1\n", "2.24.0pre20240725_abcdef1"},
		{"  nix (Nix) 2.3.16  \n\n", "2.3.16"},
		{"2.8.0", "2.8.0"},
		{"", ""},
		{" \n\t", ""},
	}
	for _, tc := range cases {
		if got := ParseVersion(tc.in); got != tc.want {
			t.Errorf("ParseVersion(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// Older Nix prints list settings as a space-separated string, newer Nix as a list.
func TestStringList_AcceptsListsAndSpaceSeparatedStrings(t *testing.T) {
	cases := []struct {
		raw  string
		want []string
	}{
		{`["kvm","big-parallel"]`, []string{"kvm", "big-parallel"}},
		{`"benchmark big-parallel  kvm"`, []string{"benchmark", "big-parallel", "kvm"}},
		{`""`, []string{}},
		{`[]`, []string{}},
		{`42`, nil},
		{``, nil},
	}
	for _, tc := range cases {
		got := stringList(json.RawMessage(tc.raw))
		if len(got) == 0 && len(tc.want) == 0 {
			continue
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("stringList(%s) = %q, want %q", tc.raw, got, tc.want)
		}
	}
}

func TestAppendUnique_KeepsOrderAndSkipsDuplicatesAndBlanks(t *testing.T) {
	got := appendUnique([]string{"x86_64-linux"}, "i686-linux", "x86_64-linux", "", "i686-linux", "aarch64-linux")
	want := []string{"x86_64-linux", "i686-linux", "aarch64-linux"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("appendUnique = %q, want %q", got, want)
	}
}

func TestProbeNix_ReadsTheRealNix(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n, err := ProbeNix(ctx)
	if err != nil {
		t.Fatalf("ProbeNix: %v", err)
	}
	t.Logf("nix %s, systems %v, features %v, netrc-file %s", n.Version, n.Systems, n.Features, n.NetrcFile)
	if !filepath.IsAbs(n.NetrcFile) {
		t.Errorf("netrc-file %q, want Nix's absolute path (by default $NIX_CONF_DIR/netrc)", n.NetrcFile)
	}
	if len(n.Systems) == 0 || n.Systems[0] != "x86_64-linux" {
		t.Errorf("systems %q, want Nix's system (x86_64-linux on this machine) first", n.Systems)
	}
	seen := map[string]bool{}
	for _, s := range n.Systems {
		if s == "" || seen[s] {
			t.Errorf("systems %q: blank or duplicate entry %q", n.Systems, s)
		}
		seen[s] = true
	}
	if !strings.HasPrefix(n.Version, "2.") {
		t.Errorf("version %q, want 2.x", n.Version)
	}
}

func TestLoadAndFreeDisk_ReportSomething(t *testing.T) {
	if l := Load1(); l < 0 {
		t.Errorf("Load1 = %v", l)
	}
	dir := t.TempDir()
	// A store that does not exist yet is measured on its nearest existing parent.
	if free := FreeDisk(filepath.Join(dir, "nix", "store")); free <= 0 {
		t.Errorf("FreeDisk of a missing path under %s = %d, want > 0", dir, free)
	}
	if free := FreeDisk(dir); free <= 0 {
		t.Errorf("FreeDisk(%s) = %d", dir, free)
	}
}
