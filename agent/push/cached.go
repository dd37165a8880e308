package push

import (
	"errors"
	"sync"

	"github.com/fc-ci/fc/protocol"
)

// ErrIncompleteOffer is returned when an offer that left paths out (see Cached)
// referred to something the cache does not hold: nothing was sent, and the whole
// closure must be offered instead.
var ErrIncompleteOffer = errors.New("the offer left out paths the cache does not hold")

// Cached is what an agent has learnt its coordinator's cache holds: the paths an
// upload plan showed there. A path in the cache has its references there too, so an
// offer may leave out such a path and everything it refers to: in a chain of builds
// each upload then offers the new outputs and their direct inputs, not the closure,
// which grows with every layer. It is a belief, not a fact (the cache's retention may
// drop a path), so the coordinator checks what an offer leaves out and refuses one
// built on a stale belief (ErrIncompleteOffer); Upload then forgets everything.
//
// It learns only from a coordinator that checks (protocol.UploadPlan's
// ReferencesChecked): against an older one it stays empty and offers are whole.
type Cached struct {
	mu    sync.Mutex
	paths map[string]struct{}
	max   int
}

// defaultCachedPaths bounds a Cached: some 10 MB of paths. Past it the belief starts
// over, which costs whole offers for a while, never a wrong upload.
const defaultCachedPaths = 100_000

// NewCached returns an empty Cached holding at most max paths (0: 100,000).
func NewCached(max int) *Cached {
	if max <= 0 {
		max = defaultCachedPaths
	}
	return &Cached{paths: map[string]struct{}{}, max: max}
}

// Has says whether path is believed to be in the cache. A nil Cached has nothing.
func (c *Cached) Has(path string) bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.paths[path]
	return ok
}

// Len is how many paths c holds.
func (c *Cached) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.paths)
}

// Forget drops every belief. A nil Cached has none to drop.
func (c *Cached) Forget() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.paths)
}

// learn records the offered paths the plan shows in the cache: neither missing nor
// served upstream (an upstream path is not in this cache, so it cannot be left out).
func (c *Cached) learn(offered []protocol.PathInfo, plan protocol.UploadPlan) {
	if c == nil || !plan.ReferencesChecked {
		return
	}
	elsewhere := make(map[string]bool, len(plan.Missing)+len(plan.Upstream))
	for _, p := range plan.Missing {
		elsewhere[p] = true
	}
	for _, p := range plan.Upstream {
		elsewhere[p] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, i := range offered {
		if elsewhere[i.StorePath] {
			continue
		}
		if len(c.paths) >= c.max {
			clear(c.paths)
		}
		c.paths[i.StorePath] = struct{}{}
	}
}
