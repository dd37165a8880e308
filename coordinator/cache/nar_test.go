package cache

import (
	"crypto/sha256"
	"runtime"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixhash"
)

// Found by FuzzCACheck: go-nix's NAR reader took a NAR cut short anywhere after the
// file's length for a whole one (a flat or text upload of a broken NAR passed its
// content check), and left a goroutine behind for every NAR that was not one regular
// file. Every prefix of a good NAR must be refused, and nothing left running.
//
// Not parallel: it counts the goroutines of the whole test binary.
func TestContentAddress_ANARCutShortIsRefusedAndLeavesNothingRunning(t *testing.T) {
	contents := "hello, world\n"
	sum := sha256.Sum256([]byte(contents))
	flat := contentAddress{method: caFlat, hash: nixhash.MustNewHash(nixhash.SHA256, sum[:])}
	whole := narFile(contents, false)
	before := runtime.NumGoroutine()
	for _, streaming := range []bool{false, true} {
		if err := checkWith(flat, whole, streaming); err != nil {
			t.Fatalf("the whole NAR (streaming %v): %v", streaming, err)
		}
		for n := range len(whole) {
			if err := checkWith(flat, whole[:n], streaming); err == nil {
				t.Errorf("a NAR cut to %d of %d bytes passed (streaming %v)", n, len(whole), streaming)
			}
		}
		if err := checkWith(flat, append(append([]byte{}, whole...), 0), streaming); err == nil {
			t.Errorf("a NAR with a byte after it passed (streaming %v)", streaming)
		}
		dir := narDir("f", contents)
		if err := checkWith(flat, dir, streaming); err == nil {
			t.Errorf("a directory passed (streaming %v)", streaming)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); runtime.NumGoroutine() > before; {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines left behind", runtime.NumGoroutine()-before)
		}
		runtime.Gosched()
	}
}

func checkWith(ca contentAddress, nar []byte, streaming bool) error {
	c := newCACheck(ca)
	if streaming {
		c.buffer = 0
	}
	defer c.Abort()
	if _, err := c.Write(nar); err != nil {
		return err
	}
	sum := sha256.Sum256(nar)
	return c.Finish(sum[:])
}
