package storage_test

import (
	"context"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// TestRunnableQueue_CountsOnlyStepsAnAgentCouldTakeNow: steps waiting for an input, in
// retry backoff, with an output known to fail, running or finished are not runnable;
// the rest are grouped by system and sorted feature set, with the oldest's age taken
// from when it became runnable (its last input's end, not its creation).
func TestRunnableQueue_CountsOnlyStepsAnAgentCouldTakeNow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := db.Pool().Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`INSERT INTO steps (id, drv_path, system, required_features, status, created_at, not_before, finished_at) VALUES
		(1, '/nix/store/a.drv', 'x86_64-linux', '{}', 'queued', now() - interval '10 minutes', NULL, NULL),
		(2, '/nix/store/b.drv', 'x86_64-linux', '{}', 'succeeded', now() - interval '1 hour', NULL, now() - interval '3 minutes'),
		(3, '/nix/store/c.drv', 'x86_64-linux', '{}', 'queued', now() - interval '1 hour', NULL, NULL),
		(4, '/nix/store/d.drv', 'x86_64-linux', '{}', 'queued', now() - interval '1 hour', NULL, NULL),
		(5, '/nix/store/e.drv', 'x86_64-linux', '{}', 'queued', now() - interval '1 hour', now() + interval '1 minute', NULL),
		(6, '/nix/store/f.drv', 'x86_64-linux', '{kvm,big-parallel}', 'queued', now() - interval '2 minutes', NULL, NULL),
		(7, '/nix/store/g.drv', 'x86_64-linux', '{big-parallel,kvm}', 'queued', now() - interval '1 minute', NULL, NULL),
		(8, '/nix/store/h.drv', 'aarch64-linux', '{}', 'queued', now() - interval '30 seconds', NULL, NULL),
		(9, '/nix/store/i.drv', 'x86_64-linux', '{}', 'running', now() - interval '1 hour', NULL, NULL),
		(10, '/nix/store/j.drv', 'x86_64-linux', '{}', 'queued', now() - interval '1 hour', NULL, NULL)`)
	// 3 waits for 1 (queued); 4's input 2 succeeded 3 minutes ago; 10 would build a
	// path known to fail.
	exec(`INSERT INTO step_edges (step_id, depends_on) VALUES (3, 1), (4, 2)`)
	exec(`INSERT INTO step_outputs (step_id, name, path) VALUES (10, 'out', '/nix/store/j-out')`)
	exec(`INSERT INTO failed_paths (path) VALUES ('/nix/store/j-out')`)

	groups, err := db.RunnableQueue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]storage.QueueGroup{}
	for _, g := range groups {
		got[g.System+" "+g.Features] = g
	}
	want := map[string]struct {
		n        int64
		min, max time.Duration
	}{
		"x86_64-linux ":                 {2, 10 * time.Minute, 11 * time.Minute}, // 1 and 4; 1 is the older
		"x86_64-linux big-parallel,kvm": {2, 2 * time.Minute, 3 * time.Minute},
		"aarch64-linux ":                {1, 30 * time.Second, 90 * time.Second},
	}
	if len(got) != len(want) {
		t.Errorf("groups %+v, want %v", groups, want)
	}
	for k, w := range want {
		g, ok := got[k]
		if !ok || g.Runnable != w.n || g.OldestAge < w.min || g.OldestAge > w.max {
			t.Errorf("%q: %+v, want %d runnable, oldest between %v and %v", k, g, w.n, w.min, w.max)
		}
	}

	// 4 alone: runnable since its input finished 3 minutes ago, though created an hour ago.
	exec(`DELETE FROM steps WHERE id IN (1, 3, 6, 7, 8)`)
	groups, err = db.RunnableQueue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(groups) != 1 || groups[0].Runnable != 1 || groups[0].OldestAge < 3*time.Minute || groups[0].OldestAge > 4*time.Minute {
		t.Errorf("step 4 alone: %+v, want 1 runnable for about 3 minutes", groups)
	}
	// Its claim says how long it waited (the dispatch latency), and its system.
	exec(`INSERT INTO agents (id, name, public_key, fingerprint) VALUES (1, 'builder', 'k', 'f')`)
	claimed, err := db.ClaimSteps(ctx, storage.AgentSlots{AgentID: 1, Systems: []string{"x86_64-linux"}, N: 5, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if len(claimed) != 1 || claimed[0].ID != 4 || claimed[0].System != "x86_64-linux" ||
		claimed[0].Waited < 3*time.Minute || claimed[0].Waited > 4*time.Minute {
		t.Errorf("claimed %+v, want step 4 of x86_64-linux, runnable for about 3 minutes", claimed)
	}
}

// TestAgentSlotsBySystem_CountsConnectedAgentsAndTheirFreeBuildSlots: an agent counts
// under each of its systems; only those taking builds now have slots; running steps
// use them up; agents gone, revoked or stale are not counted.
func TestAgentSlotsBySystem_CountsConnectedAgentsAndTheirFreeBuildSlots(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := db.Pool().Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`INSERT INTO agents (id, name, public_key, fingerprint, connected, last_seen_at, systems, roles, max_jobs,
			draining, revoked_at, disabled_until) VALUES
		(1, 'both', 'k1', 'f1', true, now(), '{x86_64-linux,i686-linux}', '{build,eval}', 4, false, NULL, NULL),
		(2, 'eval', 'k2', 'f2', true, now(), '{x86_64-linux}', '{eval}', 8, false, NULL, NULL),
		(3, 'drain', 'k3', 'f3', true, now(), '{x86_64-linux}', '{build}', 2, true, NULL, NULL),
		(4, 'backedoff', 'k4', 'f4', true, now(), '{x86_64-linux}', '{build}', 2, false, NULL, now() + interval '1 hour'),
		(5, 'gone', 'k5', 'f5', false, now(), '{x86_64-linux}', '{build}', 2, false, NULL, NULL),
		(6, 'stale', 'k6', 'f6', true, now() - interval '1 day', '{x86_64-linux}', '{build}', 2, false, NULL, NULL),
		(7, 'revoked', 'k7', 'f7', true, now(), '{x86_64-linux}', '{build}', 2, false, now(), NULL),
		(8, 'busy', 'k8', 'f8', true, now(), '{aarch64-linux}', '{build}', 1, false, NULL, NULL)`)
	exec(`INSERT INTO steps (drv_path, system, status, agent_id) VALUES
		('/nix/store/a.drv', 'x86_64-linux', 'running', 1), ('/nix/store/b.drv', 'i686-linux', 'running', 1),
		('/nix/store/c.drv', 'aarch64-linux', 'running', 8), ('/nix/store/d.drv', 'aarch64-linux', 'running', 8),
		('/nix/store/e.drv', 'x86_64-linux', 'succeeded', 1)`)
	rows, err := db.AgentSlotsBySystem(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]storage.SystemSlots{}
	for _, r := range rows {
		got[r.System] = r
	}
	// Agent 1 runs two steps (whatever their systems): 4 - 2 free under each of its
	// systems. Agent 8 runs more than its slots (a larger step_slots): none free.
	want := map[string]storage.SystemSlots{
		"x86_64-linux":  {System: "x86_64-linux", Sessions: 4, Slots: 4, Free: 2},
		"i686-linux":    {System: "i686-linux", Sessions: 1, Slots: 4, Free: 2},
		"aarch64-linux": {System: "aarch64-linux", Sessions: 1, Slots: 1, Free: 0},
	}
	if len(got) != len(want) {
		t.Errorf("systems %+v, want %+v", rows, want)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %+v, want %+v", k, got[k], w)
		}
	}
}

// BenchmarkScrapeQueries times the scrape-time statements over a large queue: 100,000
// queued steps in 4 systems and 3 feature sets, half waiting for an input, and 200
// connected agents running 800 steps.
func BenchmarkScrapeQueries(b *testing.B) {
	ctx := context.Background()
	db := storagetest.New(b)
	for _, sql := range []string{
		`INSERT INTO steps (drv_path, system, required_features, status, created_at)
			SELECT '/nix/store/' || i || '.drv', (ARRAY['x86_64-linux','aarch64-linux','i686-linux','x86_64-darwin'])[1 + i % 4],
				(ARRAY['{}','{kvm}','{big-parallel,kvm}'])[1 + i % 3]::text[], 'queued', now() - make_interval(secs => i)
			FROM generate_series(1, 100000) i`,
		`INSERT INTO step_edges (step_id, depends_on) SELECT s.id, s.id - 1 FROM steps s WHERE s.id % 2 = 0`,
		`INSERT INTO agents (name, public_key, fingerprint, connected, last_seen_at, systems, max_jobs)
			SELECT 'a' || i, 'k' || i, 'f' || i, true, now(), '{x86_64-linux,i686-linux}', 8 FROM generate_series(1, 200) i`,
		`UPDATE steps SET status = 'running', agent_id = (SELECT min(id) FROM agents) + id % 200 WHERE id <= 1600 AND id % 2 = 1`,
		`ANALYZE`,
	} {
		if _, err := db.Pool().Exec(ctx, sql); err != nil {
			b.Fatalf("%s: %v", sql, err)
		}
	}
	b.Run("RunnableQueue", func(b *testing.B) {
		for b.Loop() {
			if _, err := db.RunnableQueue(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("AgentSlotsBySystem", func(b *testing.B) {
		for b.Loop() {
			if _, err := db.AgentSlotsBySystem(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}
