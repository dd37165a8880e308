package push

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fc-ci/fc/protocol"
)

// What ReadDrvClosure works out from the files must be what Nix has registered:
// hash, size, references and content address, for derivations with input sources and
// input derivations; in Nix's own store and in a store of the agent's own (an eval
// store, nix --eval-store), whose files are under its root directory.
func TestReadDrvClosure_AgreesWithNix(t *testing.T) {
	t.Parallel()
	for _, bin := range []string{"nix", "nix-instantiate", "nix-store"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not on PATH: the test needs Nix", bin)
		}
	}
	t.Run("nix's store", func(t *testing.T) { testReadDrvClosure(t, "") })
	t.Run("eval store", func(t *testing.T) {
		root := t.TempDir()
		// Nix leaves store paths read-only: writable again for t.TempDir's removal.
		t.Cleanup(func() { _ = exec.Command("chmod", "-R", "u+w", root).Run() })
		testReadDrvClosure(t, root)
	})
}

func testReadDrvClosure(t *testing.T, root string) {
	salt := make([]byte, 6)
	_, _ = rand.Read(salt)
	dir := t.TempDir()
	file := filepath.Join(dir, "default.nix")
	script := filepath.Join(dir, "build.sh")
	if err := os.WriteFile(script, []byte("echo built > $out\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	expr := `let salt = "` + hex.EncodeToString(salt) + `";
  mk = name: deps: derivation { inherit name salt deps; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ ./build.sh ]; helper = builtins.toFile "helper-${salt}" "data"; };
  a = mk "a" [ ];
  b = mk "b" [ a ];
in mk "top" [ a b ]`
	if err := os.WriteFile(file, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--option", "substituters", "", file}
	if root != "" {
		args = append(args, "--store", root)
	}
	out, err := exec.Command("nix-instantiate", args...).Output()
	if err != nil {
		t.Fatalf("nix-instantiate: %v%s", err, stderrOf(err))
	}
	top := strings.TrimSpace(string(out))
	if root != "" {
		if _, err := os.Stat(root + top); err != nil {
			t.Fatalf("the derivation is not in the eval store: %v", err)
		}
		if exec.Command("nix-store", "--check-validity", top).Run() == nil {
			t.Fatalf("%s is in Nix's own store too: the test would not tell the stores apart", top)
		}
	}

	seen := map[string]bool{}
	gotCl, err := ReadDrvClosure(context.Background(), root, []string{top}, seen)
	if err != nil {
		t.Fatal(err)
	}
	got := gotCl.Infos
	want, err := closureInfos(context.Background(), root, []string{top})
	if err != nil {
		t.Fatal(err)
	}
	norm := func(infos []protocol.PathInfo) []protocol.PathInfo {
		out := slices.Clone(infos)
		for i := range out {
			out[i].References = slices.Clone(out[i].References)
			slices.Sort(out[i].References)
		}
		slices.SortFunc(out, func(a, b protocol.PathInfo) int { return strings.Compare(a.StorePath, b.StorePath) })
		return out
	}
	g, w := norm(got), norm(want)
	// top, a and b, and the sources they share (build.sh and the helper file).
	if len(w) != 5 {
		t.Fatalf("nix says the closure is %d paths, want 5: %+v", len(w), w)
	}
	if len(g) != len(w) {
		t.Fatalf("%d paths, nix says %d:\n%+v\n%+v", len(g), len(w), g, w)
	}
	for i := range w {
		if g[i].StorePath != w[i].StorePath || g[i].NarHash != w[i].NarHash || g[i].NarSize != w[i].NarSize ||
			!slices.Equal(g[i].References, w[i].References) || g[i].CA != w[i].CA {
			t.Errorf("%s:\n got  %+v\n nix  %+v", w[i].StorePath, g[i], w[i])
		}
	}
	// The NARs uploaded from the contents read are Nix's, byte for byte.
	cl, err := ReadDrvClosure(context.Background(), root, []string{top}, map[string]bool{})
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range cl.Infos {
		var mine, nix bytes.Buffer
		if err := cl.Dump(context.Background(), i.StorePath, &mine); err != nil {
			t.Fatal(err)
		}
		if err := DumpWithNix(context.Background(), root+i.StorePath, &nix); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(mine.Bytes(), nix.Bytes()) {
			t.Errorf("%s: the NAR from memory differs from nix-store --dump", i.StorePath)
		}
	}

	// Everything returned is now seen: a second call sends nothing again.
	again, err := ReadDrvClosure(context.Background(), root, []string{top}, seen)
	if err != nil || len(again.Infos) != 0 {
		t.Fatalf("second call: %d paths, %v; want none", len(again.Infos), err)
	}
}
