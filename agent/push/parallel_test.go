package push

import (
	"slices"
	"testing"

	"github.com/fc-ci/fc/protocol"
)

// Large leaves are spread over the streams by size, each with the cached paths it
// refers to; a path that refers to a missing one waits for the last stream.
func TestLeafBins_SplitsLargeLeavesAndKeepsDependentsBack(t *testing.T) {
	const mb = 1 << 20
	p := func(name string, size int64, refs ...string) protocol.PathInfo {
		return protocol.PathInfo{StorePath: "/nix/store/" + name, NarSize: size, References: refs}
	}
	infos := []protocol.PathInfo{
		p("cached", mb),
		p("a", 40*mb, "/nix/store/cached"),
		p("b", 30*mb, "/nix/store/b"),
		p("c", 20*mb),
		p("d", 10*mb),
		p("root", mb, "/nix/store/a", "/nix/store/b", "/nix/store/c", "/nix/store/d"),
	}
	missing := []string{"/nix/store/a", "/nix/store/b", "/nix/store/c", "/nix/store/d", "/nix/store/root"}
	bins := leafBins(infos, missing, 2)
	if len(bins) != 2 {
		t.Fatalf("%d bins, want 2", len(bins))
	}
	names := func(bin []protocol.PathInfo) []string {
		var out []string
		for _, i := range bin {
			out = append(out, i.StorePath[len("/nix/store/"):])
		}
		return out
	}
	// a (40) to the first, b (30) to the second, c (20) to the second (30 < 40), d
	// (10) to the first (40 < 50); a's cached reference goes with it, before it.
	if got, want := names(bins[0]), []string{"cached", "a", "d"}; !slices.Equal(got, want) {
		t.Errorf("first bin %v, want %v", got, want)
	}
	if got, want := names(bins[1]), []string{"b", "c"}; !slices.Equal(got, want) {
		t.Errorf("second bin %v, want %v", got, want)
	}
	for _, bin := range bins {
		if slices.ContainsFunc(bin, func(i protocol.PathInfo) bool { return i.StorePath == "/nix/store/root" }) {
			t.Errorf("root, which refers to missing paths, is in a leaf bin: %v", names(bin))
		}
	}
	// Too few leaf bytes, or one leaf: not worth more streams.
	if bins := leafBins(infos, []string{"/nix/store/d", "/nix/store/root"}, 2); bins != nil {
		t.Errorf("one small leaf: %d bins, want none", len(bins))
	}
	if bins := leafBins(infos, []string{"/nix/store/a", "/nix/store/root"}, 4); bins != nil {
		t.Errorf("one leaf: %d bins, want none", len(bins))
	}
}
