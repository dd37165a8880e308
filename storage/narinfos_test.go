package storage_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func narinfo(hash, name string, refs ...string) storage.Narinfo {
	return storage.Narinfo{HashPart: hash, StorePath: "/nix/store/" + hash + "-" + name, URL: "nar/" + hash + ".nar.zst",
		Compression: "zstd", FileHash: "sha256:" + hash, FileSize: 10, NarHash: "sha256:" + hash, NarSize: 20,
		References: refs, Sigs: []string{"k-1:c2lnMQ==", "k-2:c2lnMg=="}}
}

func TestCommitNarinfos_OneTransactionForTheGroup(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	a := narinfo("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "a")
	b := narinfo("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b")
	b.Deriver, b.CA = "dddddddddddddddddddddddddddddddd-b.drv", "text:sha256:xyz"

	// The blobs' commit failing rolls the whole group back.
	boom := errors.New("rename failed")
	small := map[string][]byte{"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.nar.zst": []byte("small blob of a")}
	if err := db.CommitNarinfos(ctx, []storage.Narinfo{a, b}, small, nil, storage.UploadGrant{}, func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the commit's", err)
	}
	if p, err := db.PresentHashParts(ctx, []string{a.HashPart, b.HashPart}); err != nil || len(p) != 0 {
		t.Fatalf("after a failed commit: %v %v, want nothing", p, err)
	}
	if _, err := db.SmallBlob(ctx, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.nar.zst"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("small blob after a failed commit: %v", err)
	}

	committed := 0
	if err := db.CommitNarinfos(ctx, []storage.Narinfo{a, b}, small, nil, storage.UploadGrant{}, func() error { committed++; return nil }); err != nil || committed != 1 {
		t.Fatalf("commit: %v (blob commit called %d times)", err, committed)
	}
	for _, want := range []storage.Narinfo{a, b} {
		got, err := db.GetNarinfo(ctx, want.HashPart)
		if err != nil {
			t.Fatal(err)
		}
		// Empty lists come back empty, not as one empty string.
		if got.StorePath != want.StorePath || !slices.Equal(got.References, want.References) && len(want.References)+len(got.References) > 0 ||
			!slices.Equal(got.Sigs, want.Sigs) || got.Deriver != want.Deriver || got.CA != want.CA || got.NarSize != want.NarSize {
			t.Errorf("stored %+v, want %+v", got, want)
		}
	}

	if got, err := db.SmallBlob(ctx, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.nar.zst"); err != nil || string(got) != "small blob of a" {
		t.Fatalf("small blob: %q %v", got, err)
	}

	// A path already there is left as it is, and so is its blob; the others of the
	// group are added.
	a2 := a
	a2.NarSize, a2.URL = 99, "nar/a2.nar.zst"
	c := narinfo("cccccccccccccccccccccccccccccccc", "c")
	if err := db.CommitNarinfos(ctx, []storage.Narinfo{a2, c}, map[string][]byte{"a2.nar.zst": []byte("x")}, []string{b.HashPart}, storage.UploadGrant{}, func() error { return nil }); err != nil {
		t.Fatal(err)
	}
	if got, _ := db.GetNarinfo(ctx, a.HashPart); got.NarSize != 20 {
		t.Errorf("existing narinfo overwritten: nar size %d", got.NarSize)
	}
	if _, err := db.SmallBlob(ctx, "a2.nar.zst"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("the blob of a path not recorded was stored: %v", err)
	}
	if _, err := db.GetNarinfo(ctx, c.HashPart); err != nil {
		t.Errorf("the group's new path: %v", err)
	}

	// A reference outside the group that is not in the cache (retention deleted it
	// since the uploader looked) commits nothing.
	d := narinfo("dddddddddddddddddddddddddddddddd", "d")
	if err := db.CommitNarinfos(ctx, []storage.Narinfo{d}, nil, []string{c.HashPart, "ffffffffffffffffffffffffffffffff"}, storage.UploadGrant{},
		func() error { t.Error("blob committed"); return nil }); !errors.Is(err, storage.ErrConflict) || !strings.Contains(err.Error(), "ffffffffffffffffffffffffffffffff") {
		t.Fatalf("missing reference: err = %v, want a conflict naming it", err)
	}
	if _, err := db.GetNarinfo(ctx, d.HashPart); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("d recorded without its reference: %v", err)
	}

	// A list element with white space could not travel: refused before anything is written.
	bad := narinfo("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "e", "x y")
	if err := db.CommitNarinfos(ctx, []storage.Narinfo{bad}, nil, nil, storage.UploadGrant{}, func() error { t.Error("blob committed"); return nil }); err == nil {
		t.Fatal("a reference with a space was accepted")
	}

	// Retention: a small blob goes from PostgreSQL once no narinfo points at it.
	if _, err := db.Pool().Exec(ctx, `DELETE FROM narinfos WHERE hash_part = $1`, a.HashPart); err != nil {
		t.Fatal(err)
	}
	gone, err := db.DeleteBlobIfUnused(ctx, a.URL, func() error { t.Error("a small blob deleted as a file"); return nil })
	if err != nil || !gone {
		t.Fatalf("delete unused small blob: %v %v", gone, err)
	}
	if _, err := db.SmallBlob(ctx, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.nar.zst"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("small blob after retention: %v", err)
	}
}

// A step's outputs uploaded before its report are pending: not served, not present,
// and removed by retention once the step no longer runs (its build failed, or its
// lease was lost), whatever their age; success signs and serves them.
func TestPendingOutputs_ServedOnSuccessRemovedWhenTheStepEnds(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	agent := agentFixture(t, db, "SHA256:a")
	js := jobsetFixture(t, db, "p")
	evaluate(t, db, js.ID, agent, job{name: "ok"}, job{name: "bad"}, job{name: "running"})
	_, claimed := claimAll(t, db, slots(agent, storage.AgentSlots{Systems: []string{"x86_64-linux"}, N: 3, TTL: time.Minute}))
	byName := map[string]storage.ClaimedStep{}
	for _, c := range claimed {
		byName[nameOf(c.DrvPath)] = c
		uploadOutputs(t, db, c)
	}
	hash := func(name string) string { return out(name)[len("/nix/store/") : len("/nix/store/")+32] }
	present, err := db.PresentHashParts(ctx, []string{hash("ok"), hash("bad"), hash("running")})
	if err != nil || len(present) != 0 {
		t.Fatalf("pending outputs counted present: %v %v", present, err)
	}
	if err := db.FinishStep(ctx, byName["ok"].Lease, storage.StepOutcome{Status: "succeeded"}, testSigner); err != nil {
		t.Fatal(err)
	}
	if err := db.FinishStep(ctx, byName["bad"].Lease, storage.StepOutcome{Status: "failed"}, testSigner); err != nil {
		t.Fatal(err)
	}
	n, err := db.GetNarinfo(ctx, hash("ok"))
	if err != nil || !slices.Equal(n.Sigs, []string{"test-1:" + hash("ok")}) {
		t.Fatalf("succeeded step's output: %+v %v, want served and signed", n, err)
	}
	if _, err := db.GetNarinfo(ctx, hash("bad")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("failed step's pending output served: %v", err)
	}
	cands, err := db.GCCandidates(ctx, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(cands) != 1 || cands[0].HashPart != hash("bad") {
		t.Fatalf("retention candidates %+v, want only the failed step's pending output", cands)
	}
	deleted, err := db.DeleteNarinfos(ctx, []string{hash("bad"), hash("running"), hash("ok")}, 24*time.Hour)
	if err != nil || !slices.Equal(deleted, []string{hash("bad")}) {
		t.Fatalf("deleted %v (%v), want only the failed step's pending output", deleted, err)
	}
}
