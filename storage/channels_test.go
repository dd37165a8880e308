package storage_test

import (
	"context"
	"errors"
	"testing"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// AdvanceChannels picks, per channel, the newest finished evaluation newer than its
// own whose builds all succeeded (an evaluation without builds, or with one still
// queued, does not count), or whose aggregate job succeeded.
func TestChannels_Advance(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	p, err := db.CreateProject(ctx, storage.ProjectFields{Name: "demo", RepositoryURL: "https://example.org/r.git", Enabled: true})
	if err != nil {
		t.Fatal(err)
	}
	j, err := db.CreateJobset(ctx, p.ID, storage.JobsetFields{Name: "main", NixExpression: "release.nix",
		CheckInterval: 60, SchedulingShares: 100, State: storage.JobsetEnabled, KeepNr: 3})
	if err != nil {
		t.Fatal(err)
	}
	// eval adds a finished evaluation with builds job -> status.
	eval := func(status string, builds map[string]string) int64 {
		t.Helper()
		var id int64
		if err := db.Pool().QueryRow(ctx, `INSERT INTO evaluations (jobset_id, status, commit) VALUES ($1, $2, 'c') RETURNING id`,
			j.ID, status).Scan(&id); err != nil {
			t.Fatal(err)
		}
		for job, st := range builds {
			if _, err := db.Pool().Exec(ctx, `INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, status)
				VALUES ($1, $2, $3, '/nix/store/x.drv', 'x86_64-linux', $4)`, id, j.ID, job, st); err != nil {
				t.Fatal(err)
			}
		}
		return id
	}
	all, err := db.CreateChannel(ctx, "all", p.ID, j.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.CreateChannel(ctx, "agg", p.ID, j.ID, "release"); err != nil {
		t.Fatal(err)
	}
	if _, err := db.CreateChannel(ctx, "all", p.ID, j.ID, ""); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("a second channel called all: %v", err)
	}
	if all.EvaluationID != nil {
		t.Fatalf("new channel at %d", *all.EvaluationID)
	}
	at := func(name string) int64 {
		t.Helper()
		if _, err := db.AdvanceChannels(ctx); err != nil {
			t.Fatal(err)
		}
		c, err := db.GetChannel(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if c.EvaluationID == nil {
			return 0
		}
		return *c.EvaluationID
	}
	green := eval("succeeded", map[string]string{"a": "succeeded", "release": "succeeded"})
	if at("all") != green || at("agg") != green {
		t.Fatalf("after a green evaluation: all %d agg %d, want %d", at("all"), at("agg"), green)
	}
	eval("succeeded", nil)                                                                // no builds
	eval("failed", map[string]string{"a": "succeeded"})                                   // evaluation failed
	queued := eval("succeeded", map[string]string{"a": "queued", "release": "succeeded"}) // one unfinished
	if at("all") != green {
		t.Fatalf("all moved to %d, want %d", at("all"), green)
	}
	if at("agg") != queued {
		t.Fatalf("agg at %d, want %d (its aggregate succeeded)", at("agg"), queued)
	}
	red := eval("succeeded", map[string]string{"a": "failed", "release": "failed"})
	if at("all") != green || at("agg") != queued {
		t.Fatalf("a red evaluation moved a channel: all %d agg %d", at("all"), at("agg"))
	}
	if err := db.PromoteChannel(ctx, "all", red); err != nil {
		t.Fatal(err)
	}
	if at("all") != red {
		t.Fatalf("promoted to %d, at %d", red, at("all"))
	}
	if err := db.PromoteChannel(ctx, "all", red+100); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("promote to no evaluation: %v", err)
	}
	list, n, err := db.ListChannels(ctx, j.ID, storage.Page{Limit: 10})
	if err != nil || n != 2 || len(list) != 2 || list[0].Name != "agg" {
		t.Fatalf("list: %v %d %v", list, n, err)
	}
	if err := db.DeleteChannel(ctx, "all"); err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteChannel(ctx, "all"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}
