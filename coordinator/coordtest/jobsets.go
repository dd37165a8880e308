package coordtest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
)

// The helpers in this package's other files are what the end-to-end tests and
// benchmarks of several packages share: a test package cannot import another's.

// Salt is a name unique to this run of tb: its name plus random hex. Derivations that
// carry it are never already built.
func Salt(tb testing.TB) string {
	p := make([]byte, 6)
	_, _ = rand.Read(p)
	return strings.NewReplacer("/", "-", "_", "-", " ", "-").Replace(tb.Name()) + "-" + hex.EncodeToString(p)
}

// MkLet is the preamble of a test jobset's let: mk name attrs makes a /bin/sh
// derivation whose name carries salt, and sh script is the builder's args for a
// shell script with PATH set.
func MkLet(salt string) string {
	return fmt.Sprintf(`mk = name: attrs: derivation ({ name = "${name}-%s"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo ${name} > $out" ]; } // attrs);
  sh = script: [ "-c" ("export PATH=/bin:/usr/bin; " + script) ];`, salt)
}
