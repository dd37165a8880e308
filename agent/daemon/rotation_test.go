package daemon

import (
	"regexp"
	"testing"
	"time"
)

func TestRotation_EachURLInTurnBackingOffPerRound(t *testing.T) {
	t.Parallel()
	const ms = time.Millisecond
	r := newRotation([]string{"http://a", "http://b", "http://c"})
	if r.url() != "http://a" {
		t.Fatalf("starts at %s, want the first URL", r.url())
	}
	for i, s := range []struct {
		ev    string
		url   string
		round int
	}{
		{"stable", "http://b", 0}, // a's session ended: b next, at once (backoff from the start)
		{"fail", "http://c", 0},   // b refused: c, still the first round's wait
		{"fail", "http://a", 1},   // c refused too: the round ended without a session: wait longer
		{"fail", "http://b", 1},
		{"fail", "http://c", 1},
		{"fail", "http://a", 2},
		{"flap", "http://b", 3},   // a session dropped at once does not start over
		{"stable", "http://c", 0}, // one that lasted does
	} {
		switch s.ev {
		case "fail":
			r.dialFailed()
		case "stable", "flap":
			r.sessionEnded(s.ev == "stable")
		}
		if r.url() != s.url || r.round != s.round {
			t.Errorf("move %d (%s): next %s in round %d, want %s in round %d", i, s.ev, r.url(), r.round, s.url, s.round)
		}
		// Jittered in the upper half of 100 ms doubled per round, capped at 1 s; after
		// a lasting session, anywhere up to 4 × 100 ms.
		lo, hi := min(100*ms<<s.round, time.Second)/2, min(100*ms<<s.round, time.Second)
		if s.ev == "stable" {
			lo, hi = 0, 400*ms
		}
		if d := r.delay(100*ms, time.Second); d < lo || d > hi {
			t.Errorf("move %d: delay %v outside [%v, %v]", i, d, lo, hi)
		}
	}
}

// The agents of a coordinator that died all lose it at once: their first dials
// after it are spread over the whole window, not bunched in its upper half.
func TestRotation_FirstDialAfterASessionIsSpread(t *testing.T) {
	t.Parallel()
	const ms = time.Millisecond
	var early, late int
	for range 2000 {
		r := newRotation([]string{"http://a", "http://b"})
		r.sessionEnded(true)
		d := r.delay(250*ms, 30*time.Second)
		switch {
		case d < 0 || d > time.Second:
			t.Fatalf("delay %v outside [0, 1s]", d)
		case d < 125*ms:
			early++
		case d > 750*ms:
			late++
		}
	}
	// Uniform over [0, 1 s]: about 250 of 2000 below 125 ms, 500 above 750 ms.
	if early < 150 || late < 350 {
		t.Errorf("%d of 2000 delays under 125 ms, %d over 750 ms: not spread over the second", early, late)
	}
	r := newRotation([]string{"http://a", "http://b", "http://c"})
	r.sessionEnded(true)
	r.dialFailed() // b failed; c is still in the first round
	if d := r.delay(250*ms, 30*time.Second); d < 125*ms || d > 250*ms {
		t.Errorf("after a failed dial the spread must end: %v, want the first round's 125-250 ms", d)
	}
}

func TestRotation_OneURLBacksOffAsBefore(t *testing.T) {
	t.Parallel()
	r := newRotation([]string{"http://only"})
	for want := 1; want <= 4; want++ {
		r.dialFailed()
		if r.url() != "http://only" || r.round != want {
			t.Fatalf("after %d failures: %s in round %d", want, r.url(), r.round)
		}
	}
	r.sessionEnded(true)
	if r.round != 0 {
		t.Errorf("a stable session did not reset the backoff: round %d", r.round)
	}
}

// The daemon dials the URLs in turn: with both coordinators down it alternates.
func TestRun_DialsEachCoordinatorInTurn(t *testing.T) {
	t.Parallel()
	log := &lockedLog{}
	d := unreachableDaemon(t, log)
	a, b := closedPortURL(t), closedPortURL(t)
	d.cfg.URLs = []string{a, b}
	runDaemon(t, d)
	log.waitLogged(t, 30*time.Second, "cannot reach coordinator; retrying", 4)
	dialed := regexp.MustCompile(`cannot reach coordinator; retrying.* coordinator_url=(\S+)`).FindAllStringSubmatch(log.String(), 4)
	for i, m := range dialed {
		want := []string{a, b}[i%2]
		if m[1] != want {
			t.Errorf("dial %d went to %s, want %s (in turn)\n%s", i, m[1], want, log)
		}
	}
}
