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
// input derivations.
func TestReadDrvClosure_AgreesWithNix(t *testing.T) {
	for _, bin := range []string{"nix", "nix-instantiate", "nix-store"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not on PATH: the test needs Nix", bin)
		}
	}
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
	out, err := exec.Command("nix-instantiate", "--option", "substituters", "", file).Output()
	if err != nil {
		t.Fatalf("nix-instantiate: %v%s", err, stderrOf(err))
	}
	top := strings.TrimSpace(string(out))

	seen := map[string]bool{}
	gotCl, err := ReadDrvClosure(context.Background(), []string{top}, seen)
	if err != nil {
		t.Fatal(err)
	}
	got := gotCl.Infos
	want, err := ClosureInfos(context.Background(), []string{top})
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
	cl, err := ReadDrvClosure(context.Background(), []string{top}, map[string]bool{})
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range cl.Infos {
		var mine, nix bytes.Buffer
		if err := cl.Dump(context.Background(), i.StorePath, &mine); err != nil {
			t.Fatal(err)
		}
		if err := DumpWithNix(context.Background(), i.StorePath, &nix); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(mine.Bytes(), nix.Bytes()) {
			t.Errorf("%s: the NAR from memory differs from nix-store --dump", i.StorePath)
		}
	}

	// Everything returned is now seen: a second call sends nothing again.
	again, err := ReadDrvClosure(context.Background(), []string{top}, seen)
	if err != nil || len(again.Infos) != 0 {
		t.Fatalf("second call: %d paths, %v; want none", len(again.Infos), err)
	}
}
