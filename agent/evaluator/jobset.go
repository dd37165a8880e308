package evaluator

import (
	"fmt"
	"strings"
)

// TrivialJobset is a legacy release.nix of n trivial derivations (j0 … j<n-1>) whose
// paths depend on salt: the expression of the evaluation benchmark.
func TrivialJobset(n int, salt string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "let salt = %s; mk = i: derivation { name = \"trivial-${toString i}\"; inherit salt; "+
		"system = builtins.currentSystem; builder = \"/bin/sh\"; args = [ \"-c\" \"echo ${toString i} > $out\" ]; }; in\n", nixString(salt))
	fmt.Fprintf(&b, "builtins.listToAttrs (builtins.genList (i: { name = \"j${toString i}\"; value = mk i; }) %d)\n", n)
	return b.String()
}
