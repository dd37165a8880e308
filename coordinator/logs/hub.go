package logs

import "sync"

// Hub tells live viewers that a step's log grew or ended. It carries no data: a
// viewer reads the stored log from its own offset when woken, so a slow or stalled
// viewer never holds back the build, the store or another viewer (a wake-up it
// misses while busy is folded into the next one).
type Hub struct {
	mu   sync.Mutex
	subs map[int64]map[*Sub]struct{}
}

// Sub is one viewer's subscription to a step.
type Sub struct {
	// C receives a value when the log grew or the step ended since the last receive.
	C    chan struct{}
	step int64
	hub  *Hub
}

// NewHub returns an empty hub.
func NewHub() *Hub { return &Hub{subs: map[int64]map[*Sub]struct{}{}} }

// Subscribe starts following step; call Close when done.
func (h *Hub) Subscribe(step int64) *Sub {
	s := &Sub{C: make(chan struct{}, 1), step: step, hub: h}
	h.mu.Lock()
	if h.subs[step] == nil {
		h.subs[step] = map[*Sub]struct{}{}
	}
	h.subs[step][s] = struct{}{}
	h.mu.Unlock()
	return s
}

// Close ends the subscription.
func (s *Sub) Close() {
	s.hub.mu.Lock()
	delete(s.hub.subs[s.step], s)
	if len(s.hub.subs[s.step]) == 0 {
		delete(s.hub.subs, s.step)
	}
	s.hub.mu.Unlock()
}

// Wake tells every viewer of step to look again (the log grew, or the step ended).
func (h *Hub) Wake(step int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs[step] {
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
	return len(h.subs[step])
}
