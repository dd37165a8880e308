package backoff

import (
	"testing"
	"time"
)

func TestDelay_JitteredWithinUpperHalfAndCapped(t *testing.T) {
	t.Parallel()
	const ms = time.Millisecond
	cases := []struct {
		attempt  int
		min, max time.Duration
		want     time.Duration // the un-jittered delay d; results lie in [d/2, d]
	}{
		{0, 250 * ms, 30 * time.Second, 250 * ms},
		{1, 250 * ms, 30 * time.Second, 500 * ms},
		{2, 250 * ms, 30 * time.Second, time.Second},
		{5, 250 * ms, 30 * time.Second, 8 * time.Second},
		{6, 250 * ms, 30 * time.Second, 16 * time.Second},
		{7, 250 * ms, 30 * time.Second, 30 * time.Second}, // 32 s capped
		{8, 250 * ms, 30 * time.Second, 30 * time.Second},
		{64, 250 * ms, 30 * time.Second, 30 * time.Second}, // no overflow
		{1 << 30, 250 * ms, 30 * time.Second, 30 * time.Second},
		{3, 10 * ms, 50 * ms, 50 * ms},
		{0, time.Minute, 30 * time.Second, 30 * time.Second}, // min above max: max wins
		{0, 1, 1, 1},
		// agent/work's stream retries: 100 ms doubling up to 10 s.
		{0, 100 * ms, 10 * time.Second, 100 * ms},
		{3, 100 * ms, 10 * time.Second, 800 * ms},
		{7, 100 * ms, 10 * time.Second, 10 * time.Second}, // 12.8 s capped
	}
	for _, tc := range cases {
		lo, hi := tc.want/2, tc.want
		var seenLow, seenHigh bool
		for range 2000 {
			got := Delay(tc.attempt, tc.min, tc.max)
			if got < lo || got > hi {
				t.Fatalf("Delay(%d, %v, %v) = %v, want within [%v, %v]", tc.attempt, tc.min, tc.max, got, lo, hi)
			}
			seenLow = seenLow || got < lo+(hi-lo)/4
			seenHigh = seenHigh || got > hi-(hi-lo)/4
		}
		if hi-lo > 100 && !(seenLow && seenHigh) {
			t.Errorf("Delay(%d, %v, %v): 2000 draws do not spread over [%v, %v] (jitter missing?)", tc.attempt, tc.min, tc.max, lo, hi)
		}
	}
}
