package cache_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	coordcli "github.com/fc-ci/fc/coordinator/cli"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestRetention_DryRunAndRealRunKeepExactlyWhatTheRulesKeep(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := storagetest.URL(t)
	db, err := storage.Open(ctx, storage.Config{URL: url}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	c := coordtest.Start(t, coordtest.Options{DB: db})

	s := salt(t)
	file := nixFile(t, fmt.Sprintf(`let mk = name: script: derivation { name = "${name}-%s"; system = builtins.currentSystem;
  builder = "/bin/sh"; args = [ "-c" script ]; };
in rec {
  old = mk "old" "echo old > $out";
  depNew = mk "dep-new" "echo dep > $out";
  new = mk "new" "echo ${depNew} > $out";
  kept = mk "kept" "echo kept > $out";
  chan = mk "chan" "echo chan > $out";
  input = mk "input" "echo input > $out";
  step = mk "step" "echo ${input} > $out";
  orphan = mk "orphan" "echo orphan > $out";
  young = mk "young" "echo young > $out";
}`, s))
	p := map[string]string{}
	for _, a := range []string{"old", "depNew", "new", "kept", "chan", "input", "orphan", "young"} {
		p[a] = build(t, file, a)
	}
	stepDrv := run(t, "nix-instantiate", file, "-A", "step")
	inputDrv := strings.TrimSpace(run(t, "nix-instantiate", file, "-A", "input"))
	if out, code := agentPush(t, c, t.TempDir(), p["old"], p["new"], p["kept"], p["chan"], p["input"], p["orphan"], p["young"], stepDrv); code != 0 {
		t.Fatal(out)
	}

	// The rules' inputs: jobset A keeps 1 evaluation, B too; a channel points at B's
	// older evaluation; one build of A's older evaluation is marked keep; a queued step
	// builds stepDrv from the output of a finished input step.
	exec := func(q string, args ...any) int64 {
		t.Helper()
		var id int64
		if err := db.Pool().QueryRow(ctx, q, args...).Scan(&id); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return id
	}
	proj := exec(`INSERT INTO projects (name, repository_url) VALUES ('p', '/r') RETURNING id`)
	ja := exec(`INSERT INTO jobsets (project_id, name, keep_nr) VALUES ($1, 'a', 1) RETURNING id`, proj)
	jb := exec(`INSERT INTO jobsets (project_id, name, keep_nr) VALUES ($1, 'b', 1) RETURNING id`, proj)
	evA1 := exec(`INSERT INTO evaluations (jobset_id, status) VALUES ($1, 'succeeded') RETURNING id`, ja)
	evB1 := exec(`INSERT INTO evaluations (jobset_id, status) VALUES ($1, 'succeeded') RETURNING id`, jb)
	evA2 := exec(`INSERT INTO evaluations (jobset_id, status) VALUES ($1, 'succeeded') RETURNING id`, ja)
	exec(`INSERT INTO evaluations (jobset_id, status) VALUES ($1, 'succeeded') RETURNING id`, jb)
	addBuild := func(ev, js int64, job, out string) int64 {
		b := exec(`INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, status) VALUES ($1, $2, $3, '/nix/store/x.drv', 'x86_64-linux', 'succeeded') RETURNING id`, ev, js, job)
		exec(`INSERT INTO build_outputs (build_id, name, path) VALUES ($1, 'out', $2) RETURNING build_id`, b, out)
		return b
	}
	addBuild(evA1, ja, "old", p["old"])
	keptBuild := addBuild(evA1, ja, "kept", p["kept"])
	addBuild(evA2, ja, "new", p["new"])
	addBuild(evB1, jb, "chan", p["chan"])
	exec(`INSERT INTO channels (name, project_id, jobset_id, current_evaluation_id) VALUES ('stable', $1, $2, $3) RETURNING id`, proj, jb, evB1)
	if code := c.Do("PUT", fmt.Sprintf("/api/v1/builds/%d/keep/1", keptBuild), c.Admin, nil, nil); code != 200 {
		t.Fatalf("keep build: %d", code)
	}
	inStep := exec(`INSERT INTO steps (drv_path, system, status) VALUES ($1, 'x86_64-linux', 'succeeded') RETURNING id`, inputDrv)
	exec(`INSERT INTO step_outputs (step_id, name, path) VALUES ($1, 'out', $2) RETURNING step_id`, inStep, p["input"])
	queued := exec(`INSERT INTO steps (drv_path, system, status) VALUES ($1, 'x86_64-linux', 'queued') RETURNING id`, stepDrv)
	exec(`INSERT INTO step_edges (step_id, depends_on) VALUES ($1, $2) RETURNING step_id`, queued, inStep)

	// Everything but "young" was cached long ago.
	if _, err := db.Pool().Exec(ctx, `UPDATE narinfos SET created_at = now() - interval '40 days' WHERE store_path <> $1`, p["young"]); err != nil {
		t.Fatal(err)
	}
	// An orphaned small blob (in PostgreSQL), as an interrupted retention run leaves.
	orphanSmall := strings.Repeat("1", 52) + ".nar.zst"
	if _, err := db.Pool().Exec(ctx, `INSERT INTO small_blobs (name, data, created_at) VALUES ($1, 'junk', now() - interval '40 days')`,
		orphanSmall); err != nil {
		t.Fatal(err)
	}
	// An orphaned blob and an abandoned temporary upload, both old.
	cacheDir := filepath.Join(c.Cfg.StateDir, "cache")
	orphanBlob := filepath.Join(cacheDir, "nar", strings.Repeat("0", 52)+".nar.zst")
	tempFile := filepath.Join(cacheDir, "tmp", "upload-123")
	for _, f := range []string{orphanBlob, tempFile} {
		if err := os.WriteFile(f, []byte("junk"), 0o644); err != nil {
			t.Fatal(err)
		}
		old := time.Now().Add(-40 * 24 * time.Hour)
		if err := os.Chtimes(f, old, old); err != nil {
			t.Fatal(err)
		}
	}

	gc := func(args ...string) string {
		t.Helper()
		var stdout, stderr bytes.Buffer
		code := coordcli.Main(ctx, coordcli.Env{Args: append([]string{"cache", "gc"}, args...),
			Environ: []string{"FC_DATABASE__URL=" + url, "FC_STATE_DIR=" + c.Cfg.StateDir}, Stdout: &stdout, Stderr: &stderr})
		if code != 0 {
			t.Fatalf("cache gc %v: exit %d\n%s", args, code, stderr.String())
		}
		return stdout.String()
	}
	listed := func(out, verb string) []string {
		var paths []string
		for _, line := range strings.Split(out, "\n") {
			if rest, ok := strings.CutPrefix(line, verb+" /nix/store/"); ok {
				paths = append(paths, "/nix/store/"+rest)
			}
		}
		slices.Sort(paths)
		return paths
	}
	want := []string{p["old"], p["orphan"]}
	slices.Sort(want)

	dry := gc("--dry-run")
	if got := listed(dry, "would delete"); !slices.Equal(got, want) {
		t.Fatalf("dry run would delete %v, want exactly %v\n%s", got, want, dry)
	}
	if !strings.Contains(dry, "2 orphaned blobs, 1 abandoned uploads") {
		t.Errorf("dry run summary: %s", dry)
	}
	for _, path := range p {
		if code := narinfoStatus(t, c, path); code != 200 {
			t.Fatalf("dry run deleted %s", path)
		}
	}
	if _, err := os.Stat(orphanBlob); err != nil {
		t.Fatal("dry run deleted the orphaned blob")
	}

	real := gc()
	if got := listed(real, "deleted"); !slices.Equal(got, want) {
		t.Fatalf("real run deleted %v, want exactly %v\n%s", got, want, real)
	}
	for name, path := range p {
		if name == "old" || name == "orphan" {
			// The serving coordinator learns of the deletion by notification.
			coordtest.Eventually(t, 10*time.Second, name+" no longer served", func() bool { return narinfoStatus(t, c, path) == 404 })
			continue
		}
		if code := narinfoStatus(t, c, path); code != 200 {
			t.Errorf("%s after retention: narinfo %d, want 200", name, code)
		}
	}
	for _, drv := range []string{stepDrv, inputDrv} {
		if code := narinfoStatus(t, c, drv); code != 200 {
			t.Errorf("the queued step's drv closure lost %s", drv)
		}
	}
	for _, f := range []string{orphanBlob, tempFile} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s survived retention", f)
		}
	}
	if _, err := db.SmallBlob(ctx, orphanSmall); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the orphaned small blob survived retention: %v", err)
	}
	// Every narinfo still points at a blob, and what is kept still substitutes whole.
	var missing int
	rows, _ := db.Pool().Query(ctx, `SELECT url FROM narinfos`)
	for rows.Next() {
		var u string
		_ = rows.Scan(&u)
		if _, err := os.Stat(filepath.Join(cacheDir, u)); err != nil {
			if _, err := db.SmallBlob(ctx, strings.TrimPrefix(u, "nar/")); err != nil {
				missing++
			}
		}
	}
	rows.Close()
	if missing > 0 {
		t.Fatalf("%d narinfos point at deleted blobs", missing)
	}
	// The deleted paths' blobs went too (small ones are rows, not files).
	var unused int
	if err := db.Pool().QueryRow(ctx, `SELECT count(*) FROM small_blobs b
		WHERE NOT EXISTS (SELECT 1 FROM narinfos n WHERE n.url = 'nar/' || b.name)`).Scan(&unused); err != nil || unused != 0 {
		t.Fatalf("%d small blobs left that no narinfo points at (err %v)", unused, err)
	}
	if out, err := emptyStore(t, fmt.Sprintf("nix-store --realise %s %s", p["new"], substituteFlags(c, c.Cache.PublicKey()))); err != nil {
		t.Fatalf("kept closure no longer substitutes: %v\n%s", err, out)
	}
}
