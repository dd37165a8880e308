package buildapi

import "testing"

func TestWholeRunes_NeverSplitsACharacter(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in   string
		want int
	}{
		{"abc", 3},
		{"ab\xc3", 2},        // é cut after its first byte
		{"ab\xc3\xa9", 4},    // é whole
		{"a\xe2\x82", 1},     // € cut after two of its three bytes
		{"a\xe2\x82\xac", 4}, // € whole
		{"a\xf0\x9f\x98", 1}, // an emoji cut
		{"\xff\xfe", 2},      // not UTF-8 at all: sent as it is
		{"", 0},
	} {
		if got := wholeRunes([]byte(c.in)); got != c.want {
			t.Errorf("wholeRunes(%q) = %d, want %d", c.in, got, c.want)
		}
	}
}
