package buildqueue

import (
	"slices"
	"testing"

	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// A pass groups agents by what they can build, and a group's slots are filled least
// loaded first (relative to speed), so a short queue is shared out.
func TestPass_GroupsAndSlotOrder(t *testing.T) {
	x86 := protocol.Capabilities{Systems: []string{"x86_64-linux"}, SpeedFactor: 1}
	kvm := protocol.Capabilities{Systems: []string{"x86_64-linux"}, Features: []string{"kvm", "nixos-test"}, SpeedFactor: 1}
	kvm2 := protocol.Capabilities{Systems: []string{"x86_64-linux"}, Features: []string{"nixos-test", "kvm"}, SpeedFactor: 1}
	fast := x86
	fast.SpeedFactor = 2
	cands := []candidate{{id: 1, caps: x86, depth: 2}, {id: 2, caps: kvm, depth: 4}, {id: 3, caps: fast, depth: 2, running: 1},
		{id: 4, caps: kvm2, depth: 2, running: 1}, {id: 5, caps: x86, depth: 3, running: 1}}
	groups := groupByCapabilities(cands)
	var ids [][]int64
	for _, g := range groups {
		var gi []int64
		for _, c := range g {
			gi = append(gi, c.id)
		}
		ids = append(ids, gi)
	}
	if !slices.EqualFunc(ids, [][]int64{{1, 3, 5}, {2, 4}}, slices.Equal[[]int64]) {
		t.Fatalf("groups %v, want [[1 3 5] [2 4]] (the same feature set in any order is one group)", ids)
	}
	// Loads: 1 at 0/2, 3 at 1/2/2 = 0.25 (twice as fast), 5 at 1/3; each slot taken
	// raises its agent's load; a tie goes to the lower id.
	if got, want := slotOrder(groups[0]), []int64{1, 3, 5, 1, 5}; !slices.Equal(got, want) {
		t.Errorf("slot order %v, want %v", got, want)
	}
	if got, want := slotOrder(groups[1]), []int64{2, 2, 2, 4, 2}; !slices.Equal(got, want) {
		t.Errorf("slot order %v, want %v", got, want)
	}
	left := slotsLeft([]int64{1, 3, 5, 1, 5}, []storage.ClaimedStep{{Lease: storage.Lease{AgentID: 1}}, {Lease: storage.Lease{AgentID: 3}}})
	if !slices.Equal(left, []int64{5, 1, 5}) {
		t.Errorf("slots left %v, want [5 1 5]", left)
	}
}
