package cache

import (
	"strings"
	"testing"
)

// Found by FuzzUploadRequest: go-nix's storepath.Validate takes any byte after
// /nix/store and after the hash, and names Nix refuses; an agent's path info with such
// a path, reference or deriver was accepted, and would have become a narinfo line.
func TestCheckInfo_RefusesWhatIsNoStorePath(t *testing.T) {
	good := realInfos(t)[5] // input-addressed, with a reference and a deriver
	if _, err := checkInfo(good); err != nil {
		t.Fatalf("a real path info refused: %v", err)
	}
	const h = "00hyh9mjjyy6iz9q9iwxzdyqiwlw3scb"
	bad := []string{
		"/nix/store0000000000000000000000000000000000", // fuzz crasher
		"/nix/storeX" + h + "-hello",
		"/nix/store\n" + h + "-hello",
		"/nix/store/" + h + "_hello",
		"/nix/store/" + h + "-",
		"/nix/store/" + h + "-.hello",
		"/nix/store/" + h + "-..",
		"/nix/store/" + h + "-" + strings.Repeat("a", maxNameLen+1),
	}
	for _, p := range bad {
		for _, where := range []string{"store path", "reference", "deriver"} {
			pi := good
			switch where {
			case "store path":
				pi.StorePath = p
			case "reference":
				pi.References = []string{good.References[0], p}
			case "deriver":
				pi.Deriver = p
			}
			if _, err := checkInfo(pi); err == nil {
				t.Errorf("%s %q accepted", where, p)
			}
		}
	}
	ok := good
	ok.StorePath = "/nix/store/" + h + "-" + strings.Repeat("a", maxNameLen)
	ok.References = nil
	if _, err := checkInfo(ok); err != nil {
		t.Errorf("a name of %d characters refused: %v", maxNameLen, err)
	}
}
