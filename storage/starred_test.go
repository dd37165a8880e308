package storage_test

import (
	"context"
	"errors"
	"testing"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestStarred_StarListUnstar(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	hal := newUser(t, db, "hal", storage.RoleReadOnly)
	ida := newUser(t, db, "ida", storage.RoleReadOnly)
	var jobsets []int64
	for _, name := range []string{"zeta", "alpha"} {
		p, err := db.CreateProject(ctx, storage.ProjectFields{Name: name, RepositoryURL: "https://example.org/r.git", Enabled: true})
		if err != nil {
			t.Fatal(err)
		}
		j, err := db.CreateJobset(ctx, p.ID, storage.JobsetFields{Name: "main", FlakeMode: true, NixExpression: "hydraJobs",
			CheckInterval: 60, SchedulingShares: 100, State: storage.JobsetEnabled, KeepNr: 3})
		if err != nil {
			t.Fatal(err)
		}
		jobsets = append(jobsets, j.ID)
	}
	zeta, alpha := jobsets[0], jobsets[1]
	// Two builds of alpha's hello: the newest is the one listed.
	var newest int64
	for _, status := range []string{"failed", "succeeded"} {
		if err := db.Pool().QueryRow(ctx, `WITH e AS (INSERT INTO evaluations (jobset_id) VALUES ($1) RETURNING id)
			INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, status) SELECT e.id, $1, 'hello', '/nix/store/x.drv', 'x86_64-linux', $2 FROM e
			RETURNING id`, alpha, status).Scan(&newest); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []struct {
		jobset int64
		job    string
	}{{zeta, "tests.a"}, {alpha, "hello"}, {alpha, "hello"}, {alpha, "docs"}} {
		if err := db.StarJob(ctx, hal.ID, s.jobset, s.job); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.StarJob(ctx, ida.ID, alpha, "hello"); err != nil {
		t.Fatal(err)
	}
	if err := db.StarJob(ctx, hal.ID, 999999, "x"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("star in no jobset: %v", err)
	}

	got, total, err := db.ListStarredJobs(ctx, hal.ID, storage.Page{Limit: 10})
	if err != nil || total != 3 || len(got) != 3 {
		t.Fatalf("hal's stars: %+v, total %d, %v", got, total, err)
	}
	want := []string{"alpha/main/docs", "alpha/main/hello", "zeta/main/tests.a"}
	for i, s := range got {
		if s.Project+"/"+s.Jobset+"/"+s.Job != want[i] {
			t.Errorf("star %d: %s/%s/%s, want %s", i, s.Project, s.Jobset, s.Job, want[i])
		}
	}
	if h := got[1]; h.LastBuildID == nil || *h.LastBuildID != newest || h.LastStatus != "succeeded" || h.JobsetID != alpha {
		t.Errorf("hello's newest build: %+v, want build %d succeeded", h, newest)
	}
	if d := got[0]; d.LastBuildID != nil || d.LastStatus != "" {
		t.Errorf("docs has no build yet: %+v", d)
	}
	page2, _, err := db.ListStarredJobs(ctx, hal.ID, storage.Page{Limit: 2, Offset: 2})
	if err != nil || len(page2) != 1 || page2[0].Project != "zeta" {
		t.Errorf("second page: %+v %v", page2, err)
	}

	if err := db.UnstarJob(ctx, hal.ID, alpha, "hello"); err != nil {
		t.Fatal(err)
	}
	if err := db.UnstarJob(ctx, hal.ID, alpha, "hello"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("unstar twice: %v", err)
	}
	if _, total, _ := db.ListStarredJobs(ctx, ida.ID, storage.Page{Limit: 10}); total != 1 {
		t.Errorf("ida's star went with hal's: %d left", total)
	}

	if id, err := db.JobsetIDByName(ctx, "alpha", "main"); err != nil || id != alpha {
		t.Errorf("alpha/main: %d %v", id, err)
	}
	if _, err := db.JobsetIDByName(ctx, "alpha", "nope"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("alpha/nope: %v", err)
	}
	if ok, err := db.JobsetExists(ctx, zeta); err != nil || !ok {
		t.Errorf("zeta exists: %v %v", ok, err)
	}
	if ok, err := db.JobsetExists(ctx, 999999); err != nil || ok {
		t.Errorf("jobset 999999 exists: %v %v", ok, err)
	}
}
