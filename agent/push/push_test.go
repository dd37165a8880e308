package push

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/fc-ci/fc/protocol"
)

// The in-process NAR of a store path must be byte for byte what Nix writes, or the
// coordinator rejects the upload: files, an executable, a symlink, nested directories.
func TestDump_InProcessMatchesNix(t *testing.T) {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	expr := filepath.Join(t.TempDir(), "x.nix")
	src := `derivation { name = "nar-` + hex.EncodeToString(b) + `"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "export PATH=/bin:/usr/bin; mkdir -p $out/bin $out/share/deep/er; echo hi > $out/a; printf '' > $out/empty;
    printf '#!/bin/sh\necho x\n' > $out/bin/tool; chmod +x $out/bin/tool; ln -s ../a $out/share/link; echo z > $out/share/deep/er/f" ]; }`
	if err := os.WriteFile(expr, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nix-build", expr, "--no-out-link", "--option", "substituters", "").Output()
	if err != nil {
		t.Fatalf("nix-build: %v", err)
	}
	path := strings.TrimSpace(string(out))
	var ours bytes.Buffer
	if err := dump(path, &ours); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(ours.Bytes())
	want, err := exec.Command("nix-store", "--query", "--hash", path).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := "sha256:" + nixbase32.EncodeToString(sum[:]); got != strings.TrimSpace(string(want)) {
		t.Fatalf("in-process NAR hash %s, Nix says %s", got, want)
	}
}

func TestSortByDependencies_PutsReferencesFirst(t *testing.T) {
	a, b, c := "/nix/store/aaaa-a", "/nix/store/bbbb-b", "/nix/store/cccc-c"
	got := SortByDependencies([]protocol.PathInfo{{StorePath: a, References: []string{b, a}}, {StorePath: c}, {StorePath: b, References: []string{c}}})
	var order []string
	for _, i := range got {
		order = append(order, i.StorePath)
	}
	if strings.Join(order, " ") != c+" "+b+" "+a {
		t.Fatalf("order %v", order)
	}
}
