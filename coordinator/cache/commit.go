// Group commit: an upload stream's verified paths made durable and recorded a group at a time.

package cache

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// committer commits an upload stream's groups in order, in a goroutine of its own,
// and sends their results.
type committer struct {
	groups chan *uploadGroup
	done   chan error
}

func (c *Cache) startCommitter(ctx context.Context, agentID int64, st io.Writer) *committer {
	com := &committer{groups: make(chan *uploadGroup), done: make(chan error, 1)}
	go func() {
		out := bufio.NewWriterSize(st, 64<<10)
		var failed, writeErr error
		for g := range com.groups {
			results, err := c.commitGroup(ctx, agentID, g, failed)
			if err != nil && failed == nil {
				failed = fmt.Errorf("an earlier group of this upload failed to commit: %w", err)
			}
			for _, r := range results {
				if !r.OK {
					c.log.Warn("upload rejected", "agent", agentID, "path", r.StorePath, "err", r.Error)
				}
				if writeErr == nil {
					writeErr = protocol.WriteFrame(out, r)
				}
			}
			// A group's results go out together (a frame each cost a write each).
			if writeErr == nil {
				writeErr = out.Flush()
			}
		}
		com.done <- writeErr
	}()
	return com
}

// Group commit: the verified paths of an upload stream are made durable and recorded
// together, up to groupPaths paths or groupBytes compressed bytes at a time: one
// syncfs, one directory sync and one transaction per group instead of two fsyncs and
// a transaction per path, which dominated uploads of thousands of small .drv files.
// Results therefore come a group at a time; the sender does not wait for them.
const (
	groupPaths = 1000
	groupBytes = 64 << 20
)

// uploadGroup is the paths received but not yet committed, and the results waiting
// to be sent with theirs (rejections, which come first).
type uploadGroup struct {
	items   []stagedPath
	bytes   int64
	staged  map[string]int64 // hash parts of items: the step whose pending output each is, or 0
	results []protocol.UploadResult
}

// stagedPath is a verified path whose blob is written but not yet durable: in the
// blob store, or in memory (small, to be stored with its narinfo).
type stagedPath struct {
	blob  BlobWriter
	small []byte
	name  string
	n     storage.Narinfo
	refs  []string // hash parts of the paths it refers to in the cache (not itself, not upstream)
	push  bool     // accepted only because the agent has the push permission
}

func newUploadGroup() *uploadGroup { return &uploadGroup{staged: map[string]int64{}} }

// commitGroup makes the staged blobs durable, commits them with their narinfos, and
// returns every result of the group, and the commit's error. With failed set (an
// earlier group failed), it refuses the whole group instead.
func (c *Cache) commitGroup(ctx context.Context, agentID int64, g *uploadGroup, failed error) ([]protocol.UploadResult, error) {
	if len(g.items) == 0 {
		return g.results, nil
	}
	grant := storage.UploadGrant{AgentID: agentID}
	var blobs []BlobWriter
	var names []string
	small := map[string][]byte{}
	ns := make([]storage.Narinfo, len(g.items))
	var refs []string // outside the group: checked and held in the transaction
	for i, it := range g.items {
		ns[i] = it.n
		grant.Push = grant.Push || it.push
		if it.n.PendingStep != 0 && !slices.Contains(grant.Steps, it.n.PendingStep) {
			grant.Steps = append(grant.Steps, it.n.PendingStep)
		}
		for _, r := range it.refs {
			if _, ok := g.staged[r]; !ok {
				refs = append(refs, r)
			}
		}
		if it.blob == nil {
			small[it.name] = it.small
			continue
		}
		blobs, names = append(blobs, it.blob), append(names, it.name)
	}
	err := failed
	if err == nil {
		err = c.blobs.SyncAll(blobs) // the slow part, before the transaction and the locks
	}
	if err == nil {
		err = c.db.CommitNarinfos(ctx, ns, small, refs, grant, func() error { return c.blobs.CommitAll(blobs, names) })
	}
	results := g.results
	for _, it := range g.items {
		res := protocol.UploadResult{StorePath: it.n.StorePath}
		if err != nil {
			if it.blob != nil {
				it.blob.Abort()
			}
			reason := "storage"
			if errors.Is(err, storage.ErrUploadNotAllowed) {
				reason = "not_allowed"
			}
			c.m.rejections.WithLabelValues(reason).Inc()
			res.Error, res.Retry = fmt.Sprintf("%s: store: %v", it.n.StorePath, err), reason == "storage"
		} else {
			c.m.uploads.Inc()
			c.m.uploadBytes.Add(float64(it.n.FileSize))
			res.OK, res.FileSize = true, it.n.FileSize
		}
		results = append(results, res)
	}
	return results, err
}
