package cache

import (
	"bytes"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/fc-ci/fc/storage"
)

// An upstream's answer counts only when it is a well-formed narinfo of the path asked
// for. Found by FuzzUpstreamNarinfo: any answer that parsed counted, even an empty
// one or another path's; and with upstream_keys set, a narinfo without a NarHash
// line crashed the coordinator (nil dereference) in the middle of an upload.
func TestUpstreamServes_OnlyAWellFormedNarinfoOfThatPath(t *testing.T) {
	sk, pk, err := signature.GenerateKeypair("upstream-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	pi := realInfos(t)[0]
	h, _ := checkInfo(pi)
	a, _ := admitPath(storage.UploadScope{Push: true}, pi)
	n := newNarinfo(pi, a, h.Digest(), nil, pi.NarSize)
	sig, err := (&Cache{key: sk}).sign(n)
	if err != nil {
		t.Fatal(err)
	}
	n.Sigs = []string{sig}
	good, err := Render(n)
	if err != nil {
		t.Fatal(err)
	}
	want := hashPart(pi.StorePath)
	keys := []signature.PublicKey{pk}
	for _, k := range [][]signature.PublicKey{nil, keys} {
		if !upstreamServes(strings.NewReader(good), want, k) {
			t.Fatalf("a signed narinfo of the path does not count (keys %d)", len(k))
		}
	}
	other := strings.Repeat("0", 32)
	dropLine := func(prefix string) string {
		var out []string
		for _, l := range strings.Split(good, "\n") {
			if !strings.HasPrefix(l, prefix) {
				out = append(out, l)
			}
		}
		return strings.Join(out, "\n")
	}
	bad := map[string]string{
		"empty":              "",
		"no store path":      dropLine("StorePath:"),
		"another path":       strings.Replace(good, want, other, 1),
		"no nar hash":        dropLine("NarHash:"),
		"no nar size":        dropLine("NarSize:"),
		"md5 nar hash":       strings.Replace(good, "NarHash: "+dropAfter(good, "NarHash: "), "NarHash: "+"md5:"+nixbase32.EncodeToString(bytes.Repeat([]byte{1}, 16)), 1),
		"invalid reference":  strings.Replace(good, "References: ", "References: not-a-path", 1),
		"invalid store path": strings.Replace(good, "/nix/store/"+want, "/nix/storeX"+want, 1),
	}
	for name, body := range bad {
		for _, k := range [][]signature.PublicKey{nil, keys} {
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Errorf("%s (keys %d): panic %v", name, len(k), r)
					}
				}()
				if upstreamServes(strings.NewReader(body), want, k) {
					t.Errorf("%s (keys %d) counts as serving the path:\n%s", name, len(k), body)
				}
			}()
		}
	}
}

// dropAfter is the rest of the line after prefix in s.
func dropAfter(s, prefix string) string {
	_, rest, _ := strings.Cut(s, prefix)
	line, _, _ := strings.Cut(rest, "\n")
	return line
}
