package storage_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func narinfo(hash, name string, refs ...string) storage.Narinfo {
	return storage.Narinfo{HashPart: hash, StorePath: "/nix/store/" + hash + "-" + name, URL: "nar/" + hash + ".nar.zst",
		Compression: "zstd", FileHash: "sha256:" + hash, FileSize: 10, NarHash: "sha256:" + hash, NarSize: 20,
		References: refs, Sigs: []string{"k-1:c2lnMQ==", "k-2:c2lnMg=="}}
}

func TestCommitNarinfos_OneTransactionForTheGroup(t *testing.T) {
	ctx := context.Background()
	db := storagetest.New(t)
	a := narinfo("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "a")
	b := narinfo("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b")
	b.Deriver, b.CA = "dddddddddddddddddddddddddddddddd-b.drv", "text:sha256:xyz"

	// The blobs' commit failing rolls the whole group back.
	boom := errors.New("rename failed")
	small := map[string][]byte{"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.nar.zst": []byte("small blob of a")}
	if err := db.CommitNarinfos(ctx, []storage.Narinfo{a, b}, small, nil, func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the commit's", err)
	}
	if p, err := db.PresentHashParts(ctx, []string{a.HashPart, b.HashPart}); err != nil || len(p) != 0 {
		t.Fatalf("after a failed commit: %v %v, want nothing", p, err)
	}
	if _, err := db.SmallBlob(ctx, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.nar.zst"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("small blob after a failed commit: %v", err)
	}

	committed := 0
	if err := db.CommitNarinfos(ctx, []storage.Narinfo{a, b}, small, nil, func() error { committed++; return nil }); err != nil || committed != 1 {
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
	if err := db.CommitNarinfos(ctx, []storage.Narinfo{a2, c}, map[string][]byte{"a2.nar.zst": []byte("x")}, []string{b.HashPart}, func() error { return nil }); err != nil {
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
	if err := db.CommitNarinfos(ctx, []storage.Narinfo{d}, nil, []string{c.HashPart, "ffffffffffffffffffffffffffffffff"},
		func() error { t.Error("blob committed"); return nil }); !errors.Is(err, storage.ErrConflict) || !strings.Contains(err.Error(), "ffffffffffffffffffffffffffffffff") {
		t.Fatalf("missing reference: err = %v, want a conflict naming it", err)
	}
	if _, err := db.GetNarinfo(ctx, d.HashPart); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("d recorded without its reference: %v", err)
	}

	// A list element with white space could not travel: refused before anything is written.
	bad := narinfo("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", "e", "x y")
	if err := db.CommitNarinfos(ctx, []storage.Narinfo{bad}, nil, nil, func() error { t.Error("blob committed"); return nil }); err == nil {
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
