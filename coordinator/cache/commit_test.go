package cache_test

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/fc-ci/fc/agent/push"
	"github.com/fc-ci/fc/coordinator/cache"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// failingCommits is the local blob store whose first CommitAll fails (a rename
// refused by the file system, say).
type failingCommits struct {
	*cache.Dir
	calls atomic.Int32
}

func (f *failingCommits) CommitAll(ws []cache.BlobWriter, names []string) error {
	if f.calls.Add(1) == 1 {
		for _, w := range ws {
			w.Abort()
		}
		return errors.New("rename refused")
	}
	return f.Dir.CommitAll(ws, names)
}

// pipeOpener serves each upload stream with the cache, over an in-memory pipe, as
// the agent agentID.
type pipeOpener struct {
	c       *cache.Cache
	agentID int64
}

func (p pipeOpener) OpenStream(string) (io.ReadWriteCloser, error) {
	a, b := net.Pipe()
	go func() {
		defer b.Close()
		_ = p.c.HandleUpload(context.Background(), p.agentID, b)
	}()
	return a, nil
}

// Groups are committed while the next paths arrive, so a path may be accepted on
// the strength of a reference in a group still being committed. When that group
// fails, every later group of the upload is refused too: no narinfo is left with a
// reference that did not make it.
func TestUpload_AGroupThatFailsToCommitFailsTheLaterOnes(t *testing.T) {
	t.Parallel()
	db := storagetest.New(t)
	dir, err := cache.NewDir(filepath.Join(t.TempDir(), "cache"))
	if err != nil {
		t.Fatal(err)
	}
	key, _, err := cache.LoadOrCreateKey(filepath.Join(t.TempDir(), "key"), "test-1")
	if err != nil {
		t.Fatal(err)
	}
	blobs := &failingCommits{Dir: dir}
	// One path per group: dep (3 MB, a file blob) in the first, top (which refers to
	// dep) in the second.
	c, err := cache.New(cache.Config{GroupPaths: 1}, db, blobs, key)
	if err != nil {
		t.Fatal(err)
	}
	pusher := pushingAgent(t, db)
	top, infos := chainClosure(t)
	st, err := push.Upload(context.Background(), pipeOpener{c, pusher}, infos, push.Options{})
	// A failure of the coordinator's own storage: the agent may send them again later.
	if !errors.Is(err, push.ErrNotStored) || st.Sent != 0 || len(st.Rejections) != 2 || st.Unstored != 2 {
		t.Fatalf("sent %d, rejections %q, err %v; want both refused", st.Sent, st.Rejections, err)
	}
	if !strings.Contains(err.Error(), "rename refused") || !strings.Contains(err.Error(), "an earlier group of this upload failed") {
		t.Errorf("rejections do not say why: %v", err)
	}
	if present, err := db.PresentHashParts(context.Background(), []string{strings.TrimPrefix(top, "/nix/store/")[:32]}); err != nil || len(present) != 0 {
		t.Fatalf("top recorded (%v, %v) although its reference failed to commit", present, err)
	}
	// The store works again: the same upload goes through.
	if st, err := push.Upload(context.Background(), pipeOpener{c, pusher}, infos, push.Options{}); err != nil || st.Sent != 2 {
		t.Fatalf("second upload: sent %d, %v", st.Sent, err)
	}
}

// pushingAgent registers an agent with the push permission and returns its id.
func pushingAgent(t *testing.T, db *storage.DB) int64 {
	t.Helper()
	a, err := db.RegisterAgent(context.Background(), "pusher", "ssh-ed25519 AAAA", "SHA256:pusher")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.SetAgentPush(context.Background(), a.ID, true); err != nil {
		t.Fatal(err)
	}
	return a.ID
}
