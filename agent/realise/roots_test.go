package realise

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRoots_AddedIndirectlyAndRemovedWithTheirAutoLinks(t *testing.T) {
	state := t.TempDir()
	t.Setenv("NIX_STATE_DIR", state) // gcroots/auto does not exist yet: made on demand
	dir := filepath.Join(t.TempDir(), "gcroots", "7-1")
	outs := map[string]string{"out": "/nix/store/aaaa-x", "dev": "/nix/store/bbbb-x-dev"}
	for range 2 { // a second time replaces what is there
		if err := addRoots(dir, outs); err != nil {
			t.Fatal(err)
		}
	}
	for name, path := range outs {
		link := filepath.Join(dir, rootName(name))
		if got, err := os.Readlink(link); err != nil || got != path {
			t.Errorf("%s -> %q (%v), want %s", link, got, err, path)
		}
		if got, err := os.Readlink(autoRoot(filepath.Join(state, "gcroots", "auto"), link)); err != nil || got != link {
			t.Errorf("auto root of %s -> %q (%v)", link, got, err)
		}
	}
	if err := RemoveRoots(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(dir); !os.IsNotExist(err) {
		t.Errorf("root directory left: %v", err)
	}
	if left, _ := os.ReadDir(filepath.Join(state, "gcroots", "auto")); len(left) != 0 {
		t.Errorf("auto roots left: %v", left)
	}
	if err := RemoveRoots(dir); err != nil {
		t.Errorf("removing again: %v", err)
	}
}
