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
		// Jittered in the upper half of 100 ms doubled per round, capped at 1 s.
		want := min(100*ms<<s.round, time.Second)
		if d := r.delay(100*ms, time.Second); d < want/2 || d > want {
			t.Errorf("move %d: delay %v outside [%v, %v]", i, d, want/2, want)
		}
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
