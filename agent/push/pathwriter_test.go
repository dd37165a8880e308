package push

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// Each path goes out as zstd or, when the coordinator takes plain NARs and the start
// of the path does not compress, as it is; either way the coordinator gets the same
// NAR back.
func TestPathWriter_PlainOnlyForDataThatDoesNotCompress(t *testing.T) {
	random := func(n int) []byte {
		b := make([]byte, n)
		_, _ = rand.Read(b)
		return b
	}
	text := func(n int) []byte {
		var b strings.Builder
		for i := 0; b.Len() < n; i++ {
			fmt.Fprintf(&b, "line %d of a text file\n", i)
		}
		return []byte(b.String()[:n])
	}
	cases := []struct {
		name      string
		data      []byte
		plainOK   bool
		wantPlain bool
	}{
		{"large random", random(3 * sampleSize), true, true},
		{"small random", random(1000), true, true},
		{"large text", text(3 * sampleSize), true, false},
		{"small text (one frame from the sample)", text(5000), true, false},
		{"text then random (decided by the start)", append(text(2*sampleSize), random(sampleSize)...), true, false},
		{"text over several frames, compressed side by side", text(3*segmentSize + 12345), true, false},
		{"text, coordinator takes only zstd", text(2*segmentSize + 100), false, false},
		{"random, coordinator takes only zstd", random(3 * sampleSize), false, false},
		{"small random, coordinator takes only zstd", random(1000), false, false},
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderCRC(true))
	if err != nil {
		t.Fatal(err)
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	pw := &pathWriter{enc: enc}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			pw.plainOK = tc.plainOK
			pw.reset(&out)
			// Written in uneven pieces, as a NAR dump writes.
			for rest := tc.data; len(rest) > 0; {
				n := min(len(rest), 70001)
				if _, err := pw.Write(rest[:n]); err != nil {
					t.Fatal(err)
				}
				rest = rest[n:]
			}
			if err := pw.Close(); err != nil {
				t.Fatal(err)
			}
			if pw.plain != tc.wantPlain {
				t.Fatalf("plain = %v, want %v", pw.plain, tc.wantPlain)
			}
			got := out.Bytes()
			if !tc.wantPlain {
				if got, err = dec.DecodeAll(got, nil); err != nil {
					t.Fatalf("not a zstd stream: %v", err)
				}
				if tc.plainOK && out.Len() > len(tc.data)*3/4 {
					t.Errorf("sent %d bytes of text as %d", len(tc.data), out.Len())
				}
			}
			if !bytes.Equal(got, tc.data) {
				t.Fatalf("the coordinator would get %d bytes that differ from the %d written", len(got), len(tc.data))
			}
		})
	}
}
