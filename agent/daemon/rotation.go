package daemon

import (
	"math/rand/v2"
	"time"

	"github.com/fc-ci/fc/internal/backoff"
)

// rotation chooses the coordinator the daemon dials next, and how long it waits
// first. The policy (documented in agent.toml, coordinator.urls): dial the URLs in
// turn, moving on after a failed dial or an ended session, so an agent whose
// coordinator died goes to the next one rather than hammering the dead one. Every
// wait is jittered (internal/backoff); it grows only with the rounds in which the
// whole list was tried and no dial succeeded, so with one coordinator down the next
// is tried within a fraction of a second, and with all of them down the agents back
// off as they did against one. The first dial after a session that lasted ended
// waits a random 0 to 4 × the minimum backoff (1 s by default) instead: every agent of
// a coordinator that died loses it at the same moment, and they reach the next one
// spread over that second rather than in one burst.
type rotation struct {
	urls   []string
	next   int  // index of the URL to dial next
	failed int  // failed dials since the last round ended
	round  int  // rounds in a row in which no dial succeeded: the backoff's exponent
	spread bool // the next dial is the first after a lasting session ended
}

func newRotation(urls []string) *rotation { return &rotation{urls: urls} }

// url is the URL to dial now.
func (r *rotation) url() string { return r.urls[r.next] }

// dialFailed moves on after a failed dial; a round ends when every URL failed once.
func (r *rotation) dialFailed() {
	r.spread = false
	r.next = (r.next + 1) % len(r.urls)
	r.failed++
	if r.failed >= len(r.urls) {
		r.failed = 0
		r.round++
	}
}

// sessionEnded moves on after a session ended; the coordinator left counts as tried
// in the round that starts, so when the others fail too the agent backs off. Only a session that lasted (stable)
// starts the backoff over: one dropped right after its handshake (a flapping proxy,
// two agents sharing a key) must not make the agent reconnect several times a
// second forever.
func (r *rotation) sessionEnded(stable bool) {
	r.next = (r.next + 1) % len(r.urls)
	r.failed = 1 % len(r.urls)
	r.spread = stable
	if stable {
		r.round = 0
	} else {
		r.round++
	}
}

// spreadFactor times the minimum backoff bounds the wait after a session ended.
const spreadFactor = 4

// delay is the jittered wait before the next dial.
func (r *rotation) delay(min, max time.Duration) time.Duration {
	if r.spread {
		return rand.N(spreadFactor*min + 1)
	}
	return backoff.Delay(r.round, min, max)
}
