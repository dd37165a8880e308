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

// Found by FuzzUploadRequest: go-nix reads 44 characters of base64 without its padding
// as a 33-byte digest, so "sha256:<44 such characters>" passed as a NAR hash or in a
// content address, and the address then wrote itself as a hash that does not parse.
func TestCheckInfo_RefusesAHashOfTheWrongSize(t *testing.T) {
	t.Parallel()
	good := realInfos(t)[5]
	const unpadded = "07bccv0wrchzxvpci9hcvd18jzqnnk5l6932rkm77xvc" // 44 base64 characters, no '='
	pi := good
	pi.NarHash = "sha256:" + unpadded
	if _, err := checkInfo(pi); err == nil {
		t.Errorf("nar hash %q accepted", pi.NarHash)
	}
	for _, ca := range []string{"fixed:sha256:" + unpadded, "fixed:r:sha256:" + unpadded, "text:sha256:" + unpadded} {
		if _, err := parseCA(ca); err == nil {
			t.Errorf("content address %q accepted", ca)
		}
	}
	// Padded base64 and SRI of the right size still read.
	const padded = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=" // sha256 of nothing
	for _, s := range []string{"sha256:" + padded, "sha256-" + padded} {
		pi.NarHash = s
		if _, err := checkInfo(pi); err != nil {
			t.Errorf("nar hash %q refused: %v", s, err)
		}
	}
	if _, err := parseCA("fixed:r:sha256:" + padded); err != nil {
		t.Errorf("a padded base64 content address refused: %v", err)
	}
}
