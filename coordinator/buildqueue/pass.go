package buildqueue

import (
	"container/heap"
	"context"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// shareUseTTL is how long a scheduling pass reuses the jobsets' share use (build
// seconds in the last 24 h ÷ shares): summing a day of builds costs as much as the
// rest of a pass, and a few seconds do not move a day's use.
const shareUseTTL = 5 * time.Second

// shareCache is the share use last read and when.
type shareCache struct {
	use map[int64]float64
	at  time.Time
}

// shareUse returns the jobsets' share use, read again when older than shareUseTTL.
func (b *Builds) shareUse(ctx context.Context) (map[int64]float64, error) {
	b.mu.Lock()
	c := b.shares
	b.mu.Unlock()
	if c.use != nil && time.Since(c.at) < shareUseTTL {
		return c.use, nil
	}
	use, err := b.db.ShareUse(ctx)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	b.shares = shareCache{use: use, at: time.Now()}
	b.mu.Unlock()
	return use, nil
}

// candidate is an agent connected here that may take steps.
type candidate struct {
	id      int64
	caps    protocol.Capabilities
	depth   int // steps it may hold now (see Builds.depth)
	running int
}

func (c candidate) load() float64 {
	speed := c.caps.SpeedFactor
	if speed <= 0 {
		speed = 1
	}
	return float64(c.running) / float64(c.depth) / speed
}

// dispatch hands runnable steps to agents connected here: one claim statement per
// group of agents that can build the same steps (usually one group), its steps
// shared out least loaded first (relative to speed), then pushed to their agents
// side by side.
func (b *Builds) dispatch(ctx context.Context) {
	if b.fleet == nil {
		return
	}
	// No look at the queue first: with agents free the claim is that look, and
	// the front of a long queue's indexes is all steps just claimed.
	cands := b.candidates(ctx)
	if len(cands) == 0 {
		return
	}
	use, err := b.shareUse(ctx)
	if err != nil {
		b.log.Warn("share use", "err", err)
		return
	}
	for _, g := range groupByCapabilities(cands) {
		b.dispatchGroup(ctx, g, use)
	}
}

// candidates are the agents connected here that may take steps now and have room.
func (b *Builds) candidates(ctx context.Context) []candidate {
	running, err := b.db.RunningStepsByAgent(ctx)
	if err != nil {
		b.log.Warn("count running steps", "err", err)
		return nil
	}
	var cands []candidate
	var ids []int64
	for _, id := range b.fleet.AgentIDs() {
		caps, ok := b.fleet.Capabilities(id)
		if !ok {
			continue
		}
		b.mu.Lock()
		low := b.lowDisk[id]
		b.mu.Unlock()
		depth := b.depth(id, caps)
		if low || !slices.Contains(caps.Roles, protocol.RoleBuild) || running[id] >= depth {
			continue
		}
		cands = append(cands, candidate{id: id, caps: caps, depth: depth, running: running[id]})
		ids = append(ids, id)
	}
	if len(cands) == 0 {
		return nil
	}
	ok, err := b.db.DispatchableAgents(ctx, ids)
	if err != nil {
		b.log.Warn("dispatchable agents", "err", err)
		return nil
	}
	return slices.DeleteFunc(cands, func(c candidate) bool { return !ok[c.id] })
}

// groupByCapabilities splits candidates by what they can build (systems, features,
// mandatory features), in the order each set first appears.
func groupByCapabilities(cands []candidate) [][]candidate {
	var groups [][]candidate
	index := map[string]int{}
	for _, c := range cands {
		k := capsKey(c.caps)
		i, ok := index[k]
		if !ok {
			i = len(groups)
			index[k] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], c)
	}
	return groups
}

func capsKey(c protocol.Capabilities) string {
	set := func(s []string) string {
		s = slices.Clone(s)
		slices.Sort(s)
		return strings.Join(slices.Compact(s), ",")
	}
	return set(c.Systems) + "|" + set(c.Features) + "|" + set(c.MandatoryFeatures)
}

// slotOrder lists one agent id per free slot of cands, in the order a claim fills
// them: each next slot belongs to the agent least loaded (relative to its speed)
// once the slots before it are counted, so a short queue is shared out.
func slotOrder(cands []candidate) []int64 {
	h := make(loadHeap, len(cands))
	copy(h, cands)
	heap.Init(&h)
	var slots []int64
	for h.Len() > 0 {
		c := &h[0]
		slots = append(slots, c.id)
		c.running++
		if c.running >= c.depth {
			heap.Pop(&h)
		} else {
			heap.Fix(&h, 0)
		}
	}
	return slots
}

// loadHeap orders candidates least loaded first, then by agent id.
type loadHeap []candidate

func (h loadHeap) Len() int { return len(h) }
func (h loadHeap) Less(i, j int) bool {
	if li, lj := h[i].load(), h[j].load(); li != lj {
		return li < lj
	}
	return h[i].id < h[j].id
}
func (h loadHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *loadHeap) Push(x any)   { *h = append(*h, x.(candidate)) }
func (h *loadHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// maxClaim is the most slots one claim statement fills: a claim reads
// 2×slots+32 steps of each jobset from steps_claim, which the planner does in index
// order only while that is a small part of the queue (else it sorts every queued
// step: seconds at 100,000).
const maxClaim = 128

// dispatchGroup claims steps for the free slots of a group of agents that can build
// the same steps, maxClaim at a time, and pushes them. A claim that comes back short
// (the queue ran out, or other coordinators' claims held rows) is followed by another
// for the slots left, until one finds nothing.
func (b *Builds) dispatchGroup(ctx context.Context, cands []candidate, use map[int64]float64) {
	caps := cands[0].caps
	slots := slotOrder(cands)
	for len(slots) > 0 && ctx.Err() == nil {
		claimed, err := b.db.ClaimForGroup(ctx, storage.ClaimGroup{Systems: caps.Systems, Features: caps.Features,
			MandatoryFeatures: caps.MandatoryFeatures, Slots: slots[:min(len(slots), maxClaim)], TTL: b.cfg.Leases.TTL(),
			ShareUse: use})
		if err != nil {
			b.log.Warn("claim steps", "agents", len(cands), "err", err)
			return
		}
		if len(claimed) == 0 {
			return
		}
		b.pushAll(ctx, claimed)
		slots = slotsLeft(slots, claimed)
	}
}

// slotsLeft removes from slots one slot of its agent per claimed step.
func slotsLeft(slots []int64, claimed []storage.ClaimedStep) []int64 {
	taken := map[int64]int{}
	for _, c := range claimed {
		taken[c.AgentID]++
	}
	return slices.DeleteFunc(slices.Clone(slots), func(id int64) bool {
		if taken[id] > 0 {
			taken[id]--
			return true
		}
		return false
	})
}

// pushAll pushes claimed steps to their agents, side by side: an agent realises the
// steps that arrive together in one Nix process.
func (b *Builds) pushAll(ctx context.Context, claimed []storage.ClaimedStep) {
	var wg sync.WaitGroup
	for _, st := range claimed {
		b.cfg.Metrics.ObserveDispatch(st.System, st.Waited)
		wg.Go(func() { b.push(ctx, st.AgentID, st) })
	}
	wg.Wait()
}
