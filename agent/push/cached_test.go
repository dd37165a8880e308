package push

import (
	"fmt"
	"testing"

	"github.com/fc-ci/fc/protocol"
)

func offered(paths ...string) []protocol.PathInfo {
	out := make([]protocol.PathInfo, len(paths))
	for i, p := range paths {
		out[i] = protocol.PathInfo{StorePath: p}
	}
	return out
}

// A plan teaches only what it shows in the cache, and only from a coordinator that
// checks what offers leave out: an older one's plans teach nothing, so offers to it
// stay whole.
func TestCached_LearnsWhatThePlanShowsInTheCache(t *testing.T) {
	t.Parallel()
	c := NewCached(0)
	c.learn(offered("/nix/store/a", "/nix/store/b"), protocol.UploadPlan{Missing: []string{"/nix/store/a"}})
	if c.Len() != 0 {
		t.Fatalf("learnt %d paths from a coordinator that does not check references", c.Len())
	}
	c.learn(offered("/nix/store/a", "/nix/store/b", "/nix/store/c", "/nix/store/d"),
		protocol.UploadPlan{Missing: []string{"/nix/store/a"}, Upstream: []string{"/nix/store/b"}, ReferencesChecked: true})
	for p, want := range map[string]bool{"/nix/store/a": false, "/nix/store/b": false, "/nix/store/c": true, "/nix/store/d": true} {
		if c.Has(p) != want {
			t.Errorf("Has(%s) = %v, want %v", p, !want, want)
		}
	}
	c.Forget()
	if c.Len() != 0 || c.Has("/nix/store/c") {
		t.Errorf("after Forget: %d paths", c.Len())
	}
	var none *Cached
	if none.Has("/nix/store/c") {
		t.Error("a nil Cached holds something")
	}
	none.learn(offered("/nix/store/c"), protocol.UploadPlan{ReferencesChecked: true}) // no panic
}

func TestCached_StartsOverPastItsBound(t *testing.T) {
	t.Parallel()
	c := NewCached(3)
	for i := range 10 {
		c.learn(offered(fmt.Sprintf("/nix/store/p%d", i)), protocol.UploadPlan{ReferencesChecked: true})
		if c.Len() > 3 {
			t.Fatalf("%d paths held, bound 3", c.Len())
		}
	}
	if !c.Has("/nix/store/p9") {
		t.Error("the last path learnt is not held")
	}
}
