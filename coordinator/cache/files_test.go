package cache_test

import (
	"context"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/cache"
	"github.com/fc-ci/fc/coordinator/coordtest"
)

// Found while fuzzing the cache's NAR reading: OpenFile (product downloads) read
// NARs with go-nix's reader and abandoned it once it had the file, or on a
// directory, a missing file or a half-read download; its parser goroutine then
// waited forever, one more for every download anyone made.
//
// Not parallel: it counts the goroutines of the whole test binary. Serial tests run
// before the parallel ones start, so nothing else comes and goes while it counts.
func TestOpenFile_LeavesNoGoroutineBehind(t *testing.T) {
	c := coordtest.Start(t, coordtest.Options{})
	dep := build(t, chain(t), "dep") // a directory: zeros (3 MB) and id
	if out, code := agentPush(t, c, t.TempDir(), dep); code != 0 {
		t.Fatal(out)
	}
	ctx := context.Background()
	open := func(p string, read int64) error {
		rc, _, err := c.Cache.OpenFile(ctx, p)
		if err != nil {
			return err
		}
		defer rc.Close()
		_, err = io.CopyN(io.Discard, rc, read)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		return err
	}
	if err := open(dep+"/id", 1<<20); err != nil {
		t.Fatal(err)
	}
	settle := func() int {
		// Goroutines of the coordinator come and go; the count settles between tests.
		n := runtime.NumGoroutine()
		for range 20 {
			runtime.Gosched()
			n = min(n, runtime.NumGoroutine())
		}
		return n
	}
	before := settle()
	const downloads = 40
	for range downloads / 4 {
		if err := open(dep+"/id", 1<<20); err != nil { // read whole
			t.Fatal(err)
		}
		if err := open(dep+"/zeros", 1000); err != nil { // half-read, then closed
			t.Fatal(err)
		}
		if err := open(dep, 1); !errors.Is(err, cache.ErrNotRegularFile) {
			t.Fatalf("the directory: %v", err)
		}
		if err := open(dep+"/nope", 1); err == nil || !strings.Contains(err.Error(), "not found") {
			t.Fatalf("a missing file: %v", err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for settle() > before+downloads/4 {
		if time.Now().After(deadline) {
			t.Fatalf("%d downloads left %d goroutines behind", downloads, settle()-before)
		}
		runtime.Gosched()
	}
}
