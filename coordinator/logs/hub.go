package logs

import (
	"sync"
	"sync/atomic"
)

// Hub tells live viewers that a step's log grew or that the step changed. It carries
// no data: a viewer reads the stored log from its own offset when woken, so a slow or
// stalled viewer never holds back the build, the store or another viewer (a wake-up
// it misses while busy is folded into the next one).
//
// Viewers of one step share the chunks they send: the first viewer at an offset reads
// and encodes the chunk there once (Sub.Chunk), and every viewer at that offset sends
// the same encoded message. Chunk boundaries depend on the log, not on the viewer, so
// viewers that follow a step meet on the same offsets even when they move at different
// speeds: 100 of them spread over a few MB of log cost one read and one encoding per
// chunk. A viewer further behind than the chunks kept reads its own from the stored
// log.
type Hub struct {
	mu    sync.Mutex
	steps map[int64]*stepViewers
}

// stepViewers are one step's subscriptions and the chunks they share.
type stepViewers struct {
	subs map[*Sub]struct{}

	chunkMu sync.Mutex // held while a chunk is looked up or made: the others wait for it
	chunks  map[chunkKey]Chunk
	order   []chunkKey // oldest first: the first evicted
	bytes   int64
}

type chunkKey struct{ epoch, offset int64 }

// Bounds of the chunks kept per followed step. Viewers of a chatty build drift apart
// (each reads as fast as its connection and its own CPU let it); what is kept is how
// far apart they may be and still share: 8 MB of messages is about 4 MB of log.
const (
	sharedChunks = 256
	sharedBytes  = 8 << 20
)

// Chunk is a piece of a step attempt's log, [Offset, Next), encoded once as Msg for
// every viewer.
type Chunk struct {
	Epoch, Offset, Next int64
	Line, NextLine      int64 // newlines before Offset, and before Next
	Msg                 any
	Size                int64 // what Msg holds, in bytes (for the bound)
}

// Sub is one viewer's subscription to a step.
type Sub struct {
	// C receives a value when the log grew or the step changed since the last receive.
	C       chan struct{}
	changed atomic.Bool // Wake (not only Grew) since the last Changed
	step    int64
	hub     *Hub
	sv      *stepViewers
}

// NewHub returns an empty hub.
func NewHub() *Hub { return &Hub{steps: map[int64]*stepViewers{}} }

// Subscribe starts following step; call Close when done.
func (h *Hub) Subscribe(step int64) *Sub {
	s := &Sub{C: make(chan struct{}, 1), step: step, hub: h}
	h.mu.Lock()
	sv := h.steps[step]
	if sv == nil {
		sv = &stepViewers{subs: map[*Sub]struct{}{}}
		h.steps[step] = sv
	}
	sv.subs[s] = struct{}{}
	s.sv = sv
	h.mu.Unlock()
	return s
}

// Close ends the subscription; the step's shared chunks go with its last viewer.
func (s *Sub) Close() {
	s.hub.mu.Lock()
	delete(s.sv.subs, s)
	if len(s.sv.subs) == 0 && s.hub.steps[s.step] == s.sv {
		delete(s.hub.steps, s.step)
	}
	s.hub.mu.Unlock()
}

// Changed reports (and clears) whether the step changed (Wake) since the last call,
// as opposed to only its log growing (Grew): a viewer looks the step up again then.
func (s *Sub) Changed() bool { return s.changed.Swap(false) }

// Chunk returns the shared chunk of the step's attempt epoch at offset, making it
// with produce when no viewer has (ok false: there is nothing to send there yet). One
// viewer makes a chunk while the others at the same offset wait for it.
func (s *Sub) Chunk(epoch, offset int64, produce func() (c Chunk, ok bool, err error)) (Chunk, bool, error) {
	sv := s.sv
	sv.chunkMu.Lock()
	defer sv.chunkMu.Unlock()
	k := chunkKey{epoch, offset}
	if c, ok := sv.chunks[k]; ok {
		return c, true, nil
	}
	c, ok, err := produce()
	if err != nil || !ok {
		return c, ok, err
	}
	if sv.chunks == nil {
		sv.chunks = map[chunkKey]Chunk{}
	}
	sv.chunks[k] = c
	sv.order = append(sv.order, k)
	sv.bytes += c.Size
	for len(sv.order) > 1 && (len(sv.order) > sharedChunks || sv.bytes > sharedBytes) {
		sv.bytes -= sv.chunks[sv.order[0]].Size
		delete(sv.chunks, sv.order[0])
		sv.order = sv.order[1:]
	}
	return c, true, nil
}

// LinesAt is the number of newlines before offset in the step's attempt epoch when a
// kept chunk starts or ends there, and -1 when none does.
func (s *Sub) LinesAt(epoch, offset int64) int64 {
	sv := s.sv
	sv.chunkMu.Lock()
	defer sv.chunkMu.Unlock()
	if c, ok := sv.chunks[chunkKey{epoch, offset}]; ok {
		return c.Line
	}
	for _, c := range sv.chunks {
		if c.Epoch == epoch && c.Next == offset {
			return c.NextLine
		}
	}
	return -1
}

// Grew tells every viewer of step that its log grew.
func (h *Hub) Grew(step int64) { h.wake(step, false) }

// Wake tells every viewer of step to look again: the step changed (it started or
// ended, or a new attempt began), or anything else may have.
func (h *Hub) Wake(step int64) { h.wake(step, true) }

func (h *Hub) wake(step int64, changed bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	sv := h.steps[step]
	if sv == nil {
		return
	}
	for s := range sv.subs {
		if changed {
			s.changed.Store(true)
		}
		select {
		case s.C <- struct{}{}:
		default: // already has a pending wake-up
		}
	}
}

// Viewers is how many subscriptions follow step (for tests and metrics).
func (h *Hub) Viewers(step int64) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if sv := h.steps[step]; sv != nil {
		return len(sv.subs)
	}
	return 0
}
