package logs

import (
	"errors"
	"io"
	"testing"
)

func read(t *testing.T, d *Dir, step, epoch int64) string {
	t.Helper()
	r, err := d.Open(step, epoch)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDir_AppendAtOffsetsThenCompressed(t *testing.T) {
	d, err := NewDir(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		offset int64
		data   string
		size   int64
		err    error
	}{
		{0, "hello ", 6, nil},
		{0, "hello ", 6, nil},         // sent again after a reconnect: stored once
		{3, "lo world\n", 12, nil},    // overlapping: only the new tail is kept
		{20, "far ahead", 12, ErrGap}, // a gap is refused
		{12, "bye\n", 16, nil},
	}
	for i, s := range steps {
		size, _, err := d.Append(7, 1, s.offset, []byte(s.data), 0)
		if !errors.Is(err, s.err) || (err == nil && size != s.size) {
			t.Fatalf("append %d at %d: size %d, %v; want %d, %v", i, s.offset, size, err, s.size, s.err)
		}
	}
	if got := read(t, d, 7, 1); got != "hello world\nbye\n" {
		t.Fatalf("log %q", got)
	}
	if err := d.Finish(7, 1); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second read comes from the cache of decompressed logs
		if got := read(t, d, 7, 1); got != "hello world\nbye\n" {
			t.Errorf("compressed log reads %q", got)
		}
	}
	if n, err := d.Size(7, 1); err != nil || n != 16 {
		t.Errorf("size of the compressed log: %d %v", n, err)
	}
	if _, _, err := d.Append(7, 1, 16, []byte("late"), 0); !errors.Is(err, ErrFinished) {
		t.Errorf("append after finish: %v, want ErrFinished", err)
	}
	// Another attempt of the same step is another log.
	if n, err := d.Size(7, 2); err != nil || n != 0 {
		t.Errorf("a new attempt's log: %d %v", n, err)
	}
}

func TestDir_LimitCutsTheLog(t *testing.T) {
	d, err := NewDir(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	size, truncated, err := d.Append(1, 1, 0, []byte("0123456789"), 4)
	if err != nil || size != 4 || !truncated {
		t.Fatalf("append over the limit: %d %v %v", size, truncated, err)
	}
	if got := read(t, d, 1, 1); got != "0123" {
		t.Errorf("log %q, want it cut at 4 bytes", got)
	}
}
