package storage_test

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// One claim for several agents: each step goes to the agent of its slot, in
// scheduling order, only steps the group's systems and features allow, and a
// backed-off agent's slots take nothing.
func TestClaimForGroup_SlotsSystemsFeaturesAndBackoff(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	a, b, c := agentFixture(t, db, "SHA256:a"), agentFixture(t, db, "SHA256:b"), agentFixture(t, db, "SHA256:c")
	if _, err := db.Pool().Exec(ctx, `UPDATE agents SET disabled_until = now() + interval '1 hour' WHERE id = $1`, c); err != nil {
		t.Fatal(err)
	}
	j := jobsetFixture(t, db, "p")
	evaluate(t, db, j.ID, a, job{name: "p1", prio: 400}, job{name: "p2", prio: 300}, job{name: "p3", prio: 200},
		job{name: "p4", prio: 100}, job{name: "p5", prio: 50}, job{name: "kvm", features: []string{"kvm"}},
		job{name: "arm", system: "aarch64-linux"})
	claim := func(g storage.ClaimGroup) map[string]int64 {
		t.Helper()
		g.TTL = time.Minute
		got, err := db.ClaimForGroup(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		to := map[string]int64{}
		for _, s := range got {
			var holder int64
			if err := db.Pool().QueryRow(ctx, `SELECT agent_id FROM steps WHERE id = $1 AND status = 'running' AND lease_epoch = $2`,
				s.ID, s.Epoch).Scan(&holder); err != nil {
				t.Fatal(err)
			}
			if holder != s.AgentID || len(s.Outputs) != 1 {
				t.Errorf("%s: leased to %d, claim says %d; outputs %v", nameOf(s.DrvPath), holder, s.AgentID, s.Outputs)
			}
			to[nameOf(s.DrvPath)] = s.AgentID
		}
		return to
	}
	x86 := []string{"x86_64-linux"}
	got := claim(storage.ClaimGroup{Systems: x86, Slots: []int64{a, b, c, a, b}})
	want := map[string]int64{"p1": a, "p2": b, "p3": a, "p4": b}
	if !maps.Equal(got, want) {
		t.Errorf("x86 claim for slots a b c(backed off) a b: %v, want %v", got, want)
	}
	if got := claim(storage.ClaimGroup{Systems: x86, Features: []string{"kvm"}, MandatoryFeatures: []string{"kvm"}, Slots: []int64{b, a}}); !maps.Equal(got, map[string]int64{"kvm": b}) {
		t.Errorf("mandatory kvm claim: %v, want kvm to b", got)
	}
	if got := claim(storage.ClaimGroup{Systems: []string{"aarch64-linux"}, Slots: []int64{a, a}}); !maps.Equal(got, map[string]int64{"arm": a}) {
		t.Errorf("aarch64 claim: %v, want arm to a", got)
	}
	if got := claim(storage.ClaimGroup{Systems: x86, Slots: []int64{c, c}}); len(got) != 0 {
		t.Errorf("a backed-off agent's slots took %v", got)
	}
	if got := claim(storage.ClaimGroup{Systems: x86, Slots: []int64{b, b}}); !maps.Equal(got, map[string]int64{"p5": b}) {
		t.Errorf("last claim: %v, want p5 to b", got)
	}
}

// The share use a scheduler passes in orders the jobsets: the one that used more of
// its shares waits.
func TestClaimForGroup_ShareUseOrdersJobsets(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	a, b, c := agentFixture(t, db, "SHA256:a"), agentFixture(t, db, "SHA256:b"), agentFixture(t, db, "SHA256:c")
	busy, idle := jobsetFixture(t, db, "busy"), jobsetFixture(t, db, "idle")
	evaluate(t, db, busy.ID, a, job{name: "busy1"}, job{name: "busy2"})
	evaluate(t, db, idle.ID, a, job{name: "idle1"})
	use, err := db.ShareUse(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(use) != 2 || use[busy.ID] != 0 || use[idle.ID] != 0 {
		t.Fatalf("share use with nothing built: %v, want both jobsets at 0", use)
	}
	got, err := db.ClaimForGroup(ctx, storage.ClaimGroup{Systems: []string{"x86_64-linux"}, Slots: []int64{a, b, c},
		TTL: time.Minute, ShareUse: map[int64]float64{busy.ID: 36}})
	if err != nil {
		t.Fatal(err)
	}
	to := map[string]int64{}
	for _, s := range got {
		to[nameOf(s.DrvPath)] = s.AgentID
	}
	if want := map[string]int64{"idle1": a, "busy1": b, "busy2": c}; !maps.Equal(to, want) {
		t.Errorf("claimed %v, want %v (the idle jobset's step to the first slot)", to, want)
	}
}
