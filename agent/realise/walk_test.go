package realise

import (
	"slices"
	"testing"

	"github.com/fc-ci/fc/protocol"
)

// The closure walk leaves out what skip names and what only that refers to, but never
// a root, and looks each path up once.
func TestWalkClosure_LeavesOutSkippedPathsAndWhatOnlyTheyReferTo(t *testing.T) {
	t.Parallel()
	refs := map[string][]string{
		"top":    {"top", "mid", "side"}, // top refers to itself, as outputs may
		"mid":    {"low"},
		"side":   {"shared"},
		"low":    {"shared"},
		"shared": nil,
		"root2":  {"mid"},
	}
	lookups := map[string]int{}
	info := func(p string) (protocol.PathInfo, error) {
		lookups[p]++
		return protocol.PathInfo{StorePath: p, References: refs[p]}, nil
	}
	names := func(infos []protocol.PathInfo) []string {
		var out []string
		for _, i := range infos {
			out = append(out, i.StorePath)
		}
		slices.Sort(out)
		return out
	}
	cases := []struct {
		roots []string
		skip  func(string) bool
		want  []string
	}{
		{[]string{"top"}, nil, []string{"low", "mid", "shared", "side", "top"}},
		{[]string{"top"}, func(p string) bool { return p == "mid" }, []string{"shared", "side", "top"}},
		{[]string{"top"}, func(p string) bool { return p == "mid" || p == "side" }, []string{"top"}},
		// A root is walked even when skip names it; a path below it is not.
		{[]string{"top", "mid"}, func(p string) bool { return p == "mid" || p == "low" }, []string{"mid", "shared", "side", "top"}},
		{[]string{"top", "root2"}, func(string) bool { return true }, []string{"root2", "top"}},
	}
	for _, tc := range cases {
		clear(lookups)
		got, err := walkClosure(tc.roots, tc.skip, info)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(names(got), tc.want) {
			t.Errorf("roots %v: %v, want %v", tc.roots, names(got), tc.want)
		}
		for p, n := range lookups {
			if n != 1 || !slices.Contains(tc.want, p) {
				t.Errorf("roots %v: %s looked up %d times", tc.roots, p, n)
			}
		}
	}
}
