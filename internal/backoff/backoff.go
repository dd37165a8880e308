// Package backoff computes retry delays: exponential, capped and jittered. The agent
// uses it to reconnect to its coordinator (agent/daemon) and to retry streams to it
// (agent/work); every other wait stays with its owner.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Delay is the wait before retry number attempt (0 for the first): min doubled
// attempt times, capped at max (min above max: max), then drawn at random from its
// upper half, so that many clients that lost the same server do not come back in
// lockstep.
func Delay(attempt int, min, max time.Duration) time.Duration {
	d := min
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d/2 + rand.N(d/2+1)
}
