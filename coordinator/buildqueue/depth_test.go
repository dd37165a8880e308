package buildqueue

import (
	"testing"
	"time"

	"github.com/fc-ci/fc/protocol"
)

// An agent holds all its step slots only while its steps are quick; until then, and
// once they turn slow, twice its builds, so slow steps do not wait on one agent.
func TestDepth_AllSlotsOnlyWhileStepsAreQuick(t *testing.T) {
	// Serial (the parallel tests wait until it is done): it measures how many slots stay busy, which
	// other builds on this machine's cores would distort.
	b := New(Config{}, nil)
	caps := protocol.Capabilities{MaxJobs: 2, Slots: 32}
	if d := b.depth(1, caps); d != 4 {
		t.Fatalf("no steps seen yet: depth %d, want 4", d)
	}
	b.observeStep(1, 40*time.Millisecond)
	if d := b.depth(1, caps); d != 32 {
		t.Fatalf("after a quick step: depth %d, want 32", d)
	}
	if d := b.depth(2, caps); d != 4 {
		t.Fatalf("another agent's steps count for nothing here: depth %d, want 4", d)
	}
	// One slow step among quick ones is not enough; a run of them is.
	b.observeStep(1, 2*time.Second)
	if d := b.depth(1, caps); d != 32 {
		t.Fatalf("after one slow step: depth %d, want 32", d)
	}
	for range 10 {
		b.observeStep(1, 30*time.Second)
	}
	if d := b.depth(1, caps); d != 4 {
		t.Fatalf("after slow steps: depth %d, want 4", d)
	}
	for range 20 {
		b.observeStep(1, 40*time.Millisecond)
	}
	if d := b.depth(1, caps); d != 32 {
		t.Fatalf("quick again: depth %d, want 32", d)
	}
	// Never more than the agent's own slots.
	if d := b.depth(3, protocol.Capabilities{MaxJobs: 2, Slots: 3}); d != 3 {
		t.Fatalf("3 slots: depth %d, want 3", d)
	}
}
