package buildapi

import (
	"bytes"
	"strings"
	"testing"
)

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

// Viewers that start at different offsets, or read the end of a growing log at
// different moments, end their chunks at the same places after one chunk: that is
// what lets them share chunks (logs.Hub) while they drift apart.
func TestReadChunk_ViewersMeetOnTheSameBoundaries(t *testing.T) {
	t.Parallel()
	var log []byte
	for i := 0; len(log) < 1<<20; i++ {
		log = append(log, strings.Repeat("x", i%250)...) // lines of 1 to 250 bytes
		log = append(log, '\n')
	}
	// boundaries follows the log from offset with the whole log stored; growing: the
	// first chunk is read while only the first part bytes are stored (a viewer at the
	// end of a running build), the rest once everything is.
	boundaries := func(offset int64, part int) map[int64]bool {
		seen := map[int64]bool{}
		f := follower{offset: offset, epoch: 1}
		for first := true; f.offset < int64(len(log)); first = false {
			stored := log
			if first && part > 0 {
				stored = log[:part]
			}
			c, ok, err := f.readChunk(bytes.NewReader(stored))
			if err != nil || !ok {
				t.Fatalf("from %d: chunk at %d: ok %v, err %v", offset, f.offset, ok, err)
			}
			if c.Offset != f.offset || c.Next <= c.Offset || c.Next-c.Offset > streamChunk+streamChunk/4 {
				t.Fatalf("from %d: chunk [%d, %d)", offset, c.Offset, c.Next)
			}
			if c.Next < int64(len(log)) && log[c.Next-1] != '\n' && !(first && part > 0) {
				t.Fatalf("from %d: chunk [%d, %d) ends inside a line", offset, c.Offset, c.Next)
			}
			seen[c.Next] = true
			f.offset, f.lines = c.Next, c.NextLine
		}
		return seen
	}
	lineStart := int64(bytes.IndexByte(log[300_000:], '\n') + 300_001)
	from0 := boundaries(0, 0)
	for _, c := range []struct {
		name   string
		offset int64
		part   int
	}{
		{"another line's start", lineStart, 0},
		{"mid-line", 123_457, 0},
		{"a live end mid-line", 0, 40_003},
		{"a live end further on", lineStart, int(lineStart) + 20_001},
	} {
		other := boundaries(c.offset, c.part)
		shared := 0
		for next := range other {
			if from0[next] {
				shared++
			}
		}
		// All but the first chunk end where the viewer from 0 ends its chunks.
		if shared < len(other)-1 {
			t.Errorf("%s: %d of %d chunk ends are the viewer from 0's", c.name, shared, len(other))
		}
	}
}
