package logs

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/objstore"
	"github.com/fc-ci/fc/coordinator/objstore/objstoretest"
)

func openS3(t *testing.T, srv *objstoretest.Server, prefix string) *objstore.Store {
	t.Helper()
	var cfg config.Config
	srv.Configure(&cfg, prefix)
	oc, err := objstore.FromConfig(cfg.S3)
	if err != nil {
		t.Fatal(err)
	}
	s, err := objstore.Open(context.Background(), oc)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A log grows in the local directory at offsets, moves to the bucket (compressed,
// or not) when finished, reads back the same from there, and refuses appends after.
func TestS3_LiveLogsLocalFinishedLogsInTheBucket(t *testing.T) {
	t.Parallel()
	srv := objstoretest.Start(t)
	for _, compress := range []bool{true, false} {
		dir, prefix := t.TempDir(), map[bool]string{true: "z/", false: "p/"}[compress]
		l, err := NewS3(dir, openS3(t, srv, prefix), compress, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			off  int64
			data string
		}{{0, "hello "}, {0, "hello "}, {3, "lo world\n"}} {
			if _, _, err := l.Append(7, 2, c.off, []byte(c.data), 0); err != nil {
				t.Fatal(err)
			}
		}
		if n, err := l.Size(7, 2); err != nil || n != 12 {
			t.Fatalf("size of the live log: %d %v", n, err)
		}
		if keys := srv.Keys(t, prefix); len(keys) != 0 {
			t.Fatalf("a live log is in the bucket: %q", keys)
		}
		if err := l.Finish(7, 2); err != nil {
			t.Fatal(err)
		}
		want := prefix + "logs/7/2.log"
		if compress {
			want += ".zst"
		}
		if keys := srv.Keys(t, prefix); len(keys) != 1 || keys[0] != want {
			t.Fatalf("bucket after finish (compress %v): %q, want [%s]", compress, keys, want)
		}
		if matches, _ := filepath.Glob(filepath.Join(dir, "7", "*")); len(matches) != 0 {
			t.Fatalf("local files left after finish: %q", matches)
		}
		// A fresh store (another coordinator) reads it from the bucket.
		other, err := NewS3(t.TempDir(), openS3(t, srv, prefix), compress, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []*S3{l, other} {
			r, err := s.Open(7, 2)
			if err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 64)
			n, _ := r.Read(b)
			r.Close()
			if string(b[:n]) != "hello world\n" {
				t.Fatalf("finished log reads %q", b[:n])
			}
			if n, err := s.Size(7, 2); err != nil || n != 12 {
				t.Fatalf("size of the finished log: %d %v", n, err)
			}
			if _, _, err := s.Append(7, 2, 12, []byte("late"), 0); !errors.Is(err, ErrFinished) {
				t.Fatalf("append after finish: %v, want ErrFinished", err)
			}
		}
		if _, err := other.Open(8, 1); err == nil {
			t.Fatal("a log that never was opens")
		}
	}
}

// A log finished while the bucket is down stays local and is served from there;
// once the bucket answers again it is moved (so every coordinator can serve it),
// and its local file is gone.
func TestS3_LogFinishedWhileTheBucketIsDownIsMovedLater(t *testing.T) {
	t.Parallel()
	srv := objstoretest.Start(t)
	dir := t.TempDir()
	l, err := NewS3(dir, openS3(t, srv, "later/"), true, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	l.timeout = 5 * time.Second
	if _, _, err := l.Append(9, 1, 0, []byte("built while S3 was away\n"), 0); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	if err := l.Finish(9, 1); err == nil {
		t.Fatal("finish with the bucket down succeeded")
	}
	read := func(s *S3) string {
		t.Helper()
		r, err := s.Open(9, 1)
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
	if got := read(l); got != "built while S3 was away\n" {
		t.Fatalf("the unmoved log reads %q", got)
	}
	if r, err := l.OpenEnded(9, 1); err != nil {
		t.Fatalf("the ended, unmoved log: %v", err)
	} else {
		r.Close()
	}
	if moved, left := l.MoveUnmoved(); moved != 0 || left != 1 {
		t.Fatalf("with the bucket still down: moved %d, left %d; want 0, 1", moved, left)
	}
	srv.Restart()
	if moved, left := l.MoveUnmoved(); moved != 1 || left != 0 {
		t.Fatalf("with the bucket back: moved %d, left %d; want 1, 0", moved, left)
	}
	if keys := srv.Keys(t, "later/"); len(keys) != 1 || keys[0] != "later/logs/9/1.log.zst" {
		t.Fatalf("bucket: %q", keys)
	}
	if matches, _ := filepath.Glob(filepath.Join(dir, "9", "*")); len(matches) != 0 {
		t.Fatalf("local files left: %q", matches)
	}
	other, err := NewS3(t.TempDir(), openS3(t, srv, "later/"), true, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if got := read(other); got != "built while S3 was away\n" {
		t.Fatalf("another coordinator reads %q", got)
	}
	if moved, left := l.MoveUnmoved(); moved+left != 0 {
		t.Fatalf("nothing is left to move, yet moved %d, left %d", moved, left)
	}
}

// An agent that moves to another coordinator mid-log leaves a partial copy on the
// one it left; once the attempt has ended, that coordinator serves the whole log
// from the bucket and drops its stale copy.
func TestS3_AStaleLocalCopyGivesWayToTheFinishedLog(t *testing.T) {
	t.Parallel()
	srv := objstoretest.Start(t)
	leftDir := t.TempDir()
	left, err := NewS3(leftDir, openS3(t, srv, "moved/"), true, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	took, err := NewS3(t.TempDir(), openS3(t, srv, "moved/"), true, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	const whole = "line 1\nline 2\nline 3\nline 4\nline 5\n"
	if _, _, err := left.Append(4, 1, 0, []byte(whole[:21]), 0); err != nil { // lines 1-3, then the coordinator is gone
		t.Fatal(err)
	}
	if _, _, err := took.Append(4, 1, 0, []byte(whole), 0); err != nil { // the agent sends it all again
		t.Fatal(err)
	}
	if err := took.Finish(4, 1); err != nil {
		t.Fatal(err)
	}
	read := func(open func(step, epoch int64) (io.ReadSeekCloser, error)) string {
		t.Helper()
		r, err := open(4, 1)
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
	if got := read(left.OpenEnded); got != whole {
		t.Fatalf("the coordinator the agent left serves %q, want the whole log", got)
	}
	if matches, _ := filepath.Glob(filepath.Join(leftDir, "4", "*")); len(matches) != 0 {
		t.Fatalf("the stale copy is still there: %q", matches)
	}
	if got := read(left.Open); got != whole {
		t.Fatalf("after that, Open serves %q", got)
	}
}
