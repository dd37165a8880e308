package realise

import (
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/fc-ci/fc/protocol"
)

// An output that declares no products is a "nix-build" product itself, as Hydra
// adds them; an output that declares its products gets only those.
func TestRealise_UndeclaredOutputsAreNixBuildProducts(t *testing.T) {
	t.Parallel()
	drv := instantiate(t, `
    mkdir -p $out/share $doc/nix-support
    echo hello > $out/share/x
    printf 'dev file' > $dev
    printf 'file manual %s/index.html\n' "$doc" > $doc/nix-support/hydra-build-products
    echo '<html/>' > $doc/index.html`, `outputs = [ "out" "dev" "doc" ];`)
	res := realise(t, Realise, request(t, drv, newLogBuffer()))
	if res.Status != protocol.StepSucceeded {
		t.Fatalf("result %+v", res)
	}
	out, dev, doc := res.OutputPaths["out"], res.OutputPaths["dev"], res.OutputPaths["doc"]
	name := func(p string) string { b := filepath.Base(p); return b[strings.IndexByte(b, '-')+1:] }
	sum := sha256.Sum256([]byte("dev file"))
	html := sha256.Sum256([]byte("<html/>\n"))
	want := []protocol.BuildProduct{
		{Type: "nix-build", Subtype: "", Path: out, Name: name(out)},
		{Type: "nix-build", Subtype: "dev", Path: dev, Name: name(dev), FileSize: 8, SHA256: hex.EncodeToString(sum[:])},
		{Type: "file", Subtype: "manual", Path: doc + "/index.html", Name: "index.html", FileSize: 8, SHA256: hex.EncodeToString(html[:])},
	}
	if !slices.Equal(res.Products, want) {
		t.Errorf("products\n got  %+v\n want %+v", res.Products, want)
	}
}
