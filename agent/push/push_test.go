package push

import (
	"bytes"
	"context"
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
// coordinator rejects the upload: files, an executable, a symlink, nested and empty
// directories, names that sort tricky ("a", "a-b", "a/z"), a name beginning with ".."
// (which go-nix refuses: nix-store dumps that one), a file over 1 MiB, and store
// paths that are one file or one symlink.
func TestDump_InProcessMatchesNix(t *testing.T) {
	t.Parallel()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	salt := hex.EncodeToString(b)
	expr := filepath.Join(t.TempDir(), "x.nix")
	src := `let mk = name: script: derivation { name = "nar-${name}-` + salt + `"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "export PATH=/bin:/usr/bin; ${script}" ]; }; in {
  tree = mk "tree" "mkdir -p $out/bin $out/share/deep/er $out/emptydir $out/a $out/a-b; echo hi > $out/a/z; echo y > $out/a-b/f;
    printf '' > $out/empty; printf '#!/bin/sh\necho x\n' > $out/bin/tool; chmod +x $out/bin/tool; ln -s ../a $out/share/link;
    echo z > $out/share/deep/er/f; head -c 3000000 /dev/zero > $out/big";
  dotdot = mk "dotdot" "mkdir -p $out/..2026_11_29 $out/x; echo data > $out/..2026_11_29/f; ln -s ..2026_11_29 $out/..data";
  file = mk "file" "echo one file > $out";
  link = mk "link" "ln -s /nix/store/nothing-here $out";
}`
	if err := os.WriteFile(expr, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, attr := range []string{"tree", "dotdot", "file", "link"} {
		out, err := exec.Command("nix-build", expr, "-A", attr, "--no-out-link", "--option", "substituters", "").Output()
		if err != nil {
			t.Fatalf("nix-build -A %s: %v%s", attr, err, stderrOf(err))
		}
		path := strings.TrimSpace(string(out))
		var ours bytes.Buffer
		if err := dump(context.Background(), path, &ours); err != nil {
			t.Fatalf("%s: %v", attr, err)
		}
		sum := sha256.Sum256(ours.Bytes())
		want, err := exec.Command("nix-store", "--query", "--hash", path).Output()
		if err != nil {
			t.Fatal(err)
		}
		if got := "sha256:" + nixbase32.EncodeToString(sum[:]); got != strings.TrimSpace(string(want)) {
			t.Errorf("%s: in-process NAR hash %s, Nix says %s", attr, got, want)
		}
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
