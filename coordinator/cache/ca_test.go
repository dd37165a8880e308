package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/fc-ci/fc/agent/push"
	"github.com/fc-ci/fc/protocol"
)

func nixOut(t *testing.T, name string, args ...string) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// caPaths makes, with real Nix, one store path of every kind of content address: a
// .drv with references (text), the source it refers to (recursive sha256), fixed
// outputs hashed flat (sha256; sha512; one over caBuffer), recursively with sha256
// and recursively with sha1. It returns their path infos, as Nix gives them.
func caPaths(t *testing.T) []protocol.PathInfo {
	t.Helper()
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "f"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	salt := hex.EncodeToString(b)
	if err := os.WriteFile(filepath.Join(dir, "script-"+salt+".sh"), []byte("echo "+salt+" > $out\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	recSHA256 := nixOut(t, "nix", "--extra-experimental-features", "nix-command", "hash", "path", "--type", "sha256", tree)
	recSHA1 := nixOut(t, "nix", "--extra-experimental-features", "nix-command", "hash", "path", "--type", "sha1", tree)
	zeros := sha256.Sum256(make([]byte, 3_000_000))
	file := filepath.Join(dir, "default.nix")
	expr := fmt.Sprintf(`let
  fod = name: mode: algo: hash: script: derivation { name = "${name}-%[1]s"; system = builtins.currentSystem;
    builder = "/bin/sh"; args = [ "-c" ("export PATH=/bin:/usr/bin; " + script) ];
    outputHashMode = mode; outputHashAlgo = algo; outputHash = hash; };
in rec {
  flat = fod "flat" "flat" "sha256" (builtins.hashString "sha256" "hello\n") "echo hello > $out";
  flat512 = fod "flat512" "flat" "sha512" (builtins.hashString "sha512" "hello\n") "echo hello > $out";
  big = fod "big" "flat" "sha256" "%[2]s" "dd if=/dev/zero bs=1000 count=3000 of=$out 2>/dev/null";
  rec256 = fod "rec" "recursive" "sha256" "%[3]s" "mkdir $out; echo hello > $out/f";
  rec1 = fod "recsha1" "recursive" "sha1" "%[4]s" "mkdir $out; echo hello > $out/f";
  top = derivation { name = "top-%[1]s"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ ./script-%[1]s.sh flat ]; };
}`, salt, hex.EncodeToString(zeros[:]), recSHA256, recSHA1)
	if err := os.WriteFile(file, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	outs := strings.Fields(nixOut(t, "nix-build", file, "-A", "flat", "-A", "flat512", "-A", "big", "-A", "rec256", "-A", "rec1",
		"--no-out-link", "--option", "substituters", ""))
	drv := nixOut(t, "nix-instantiate", file, "-A", "top")
	infos, err := push.PathInfos(context.Background(), append(outs, drv))
	if err != nil {
		t.Fatal(err)
	}
	for _, pi := range infos {
		if pi.StorePath == drv {
			for _, r := range pi.References {
				if !strings.HasSuffix(r, ".drv") {
					src, err := push.PathInfos(context.Background(), []string{r})
					if err != nil {
						t.Fatal(err)
					}
					infos = append(infos, src...)
				}
			}
		}
	}
	if len(infos) != 7 {
		t.Fatalf("%d path infos, want 7: %+v", len(infos), infos)
	}
	return infos
}

func narOf(t *testing.T, p string) []byte {
	t.Helper()
	out, err := exec.Command("nix-store", "--dump", p).Output()
	if err != nil {
		t.Fatalf("nix-store --dump %s: %v", p, err)
	}
	return out
}

// check runs a caCheck over nar, a few bytes at a time as an upload arrives.
func check(ca contentAddress, nar []byte) error {
	c := newCACheck(ca)
	for rest := nar; len(rest) > 0; {
		n := min(len(rest), 7919)
		if _, err := c.Write(rest[:n]); err != nil {
			c.Abort()
			return err
		}
		rest = rest[n:]
	}
	sum := sha256.Sum256(nar)
	return c.Finish(sum[:])
}

func TestContentAddress_RecomputesNixsPathsAndChecksTheContent(t *testing.T) {
	t.Parallel()
	infos := caPaths(t)
	methods := map[string]bool{}
	for _, pi := range infos {
		t.Run(pathName(pi.StorePath), func(t *testing.T) {
			ca, err := parseCA(pi.CA)
			if err != nil {
				t.Fatalf("%s: %v", pi.StorePath, err)
			}
			methods[ca.method+":"+ca.hash.Algo().String()] = true
			if ca.String() != pi.CA {
				t.Errorf("content address written back as %s, Nix wrote %s", ca, pi.CA)
			}
			if err := checkCAPath(pi.StorePath, ca, pi.References); err != nil {
				t.Errorf("Nix's own path refused: %v", err)
			}
			nar := narOf(t, pi.StorePath)
			if err := check(ca, nar); err != nil {
				t.Errorf("Nix's own content refused: %v", err)
			}

			// Other content under the same address: one byte of the file changed.
			forged := bytes.Clone(nar)
			i := len(forged) - 16 // inside the last file's contents or its padding
			if ca.method != caRecursive || ca.hash.Algo() != nixhash.SHA256 {
				i = bytes.LastIndex(forged, []byte("hello"))
				if i < 0 {
					i = len(forged) - 24 // big: zeros
				}
			}
			forged[i] ^= 1
			if err := check(ca, forged); err == nil {
				t.Errorf("changed content accepted under %s", ca)
			}
			// The same address with other references, or under another name, makes
			// another path.
			if err := checkCAPath(pi.StorePath, ca, append(pi.References, "/nix/store/00000000000000000000000000000000-x")); err == nil {
				t.Error("an added reference was accepted")
			}
			renamed := pi.StorePath[:len(pi.StorePath)-1] + "Z"
			if err := checkCAPath(renamed, ca, pi.References); err == nil {
				t.Error("a path with another name was accepted")
			}
		})
	}
	for _, m := range []string{"text:sha256", "fixed:sha256", "fixed:sha512", "fixed:r:sha256", "fixed:r:sha1"} {
		if !methods[m] {
			t.Errorf("no path with content address method %s was checked (have %v)", m, methods)
		}
	}
}

func TestContentAddress_MalformedIsRefused(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "fixed", "text:sha1:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73", "fixed:r:sha256:xyz",
		"nar:sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73", "fixed:r:blake3:abc"} {
		if _, err := parseCA(s); err == nil {
			t.Errorf("parseCA(%q) accepted", s)
		}
	}
	// A text or flat address needs a NAR of one regular file.
	ca, err := parseCA("fixed:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	nar, err := exec.Command("nix-store", "--dump", dir).Output()
	if err != nil {
		t.Fatal(err)
	}
	if err := check(ca, nar); err == nil || !strings.Contains(err.Error(), "one regular file") {
		t.Errorf("a directory under a flat address: %v", err)
	}
	// An aborted check of a large NAR ends its parser (the race detector and the
	// test's end would show a goroutine stuck writing).
	c := newCACheck(ca)
	if _, err := c.Write(make([]byte, caBuffer+1)); err != nil {
		t.Fatal(err)
	}
	c.Abort()
	c.Abort()
}
