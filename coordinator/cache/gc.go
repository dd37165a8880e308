// Retention: expired narinfos and unreferenced blobs deleted, and deletions heard of.

package cache

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/fc-ci/fc/storage"
)

// GCReport says what retention deleted (or, in a dry run, would delete).
type GCReport struct {
	DryRun      bool
	Paths       []string // store paths whose narinfo goes
	Blobs       int      // blob files removed (or to remove)
	OrphanBlobs int      // blobs no narinfo pointed at (an interrupted upload)
	TempFiles   int      // abandoned temporary uploads
	FreedBytes  int64
}

// tempMaxAge is how long a temporary upload may sit before it counts as abandoned.
const tempMaxAge = 24 * time.Hour

// GC applies retention: the paths outside the keep set (see storage.GCCandidates) and
// older than maxAge lose their narinfo, then every blob no narinfo points at is
// deleted. A blob a narinfo still points to is never deleted.
func (c *Cache) GC(ctx context.Context, maxAge time.Duration, dryRun bool) (GCReport, error) {
	rep := GCReport{DryRun: dryRun}
	cands, err := c.db.GCCandidates(ctx, maxAge)
	if err != nil {
		return rep, err
	}
	// urls are the candidates' blobs, with their sizes.
	urls := map[string]int64{}
	for _, cand := range cands {
		urls[cand.URL] = cand.FileSize
	}
	if err := c.expire(ctx, cands, urls, maxAge, &rep); err != nil {
		return rep, err
	}
	// Blobs and temporary files left by interrupted uploads.
	if err := c.sweepBlobFiles(ctx, urls, maxAge, &rep); err != nil {
		return rep, fmt.Errorf("scan blobs: %w", err)
	}
	// The same for blobs kept in PostgreSQL.
	if err := c.sweepSmallBlobs(ctx, urls, maxAge, &rep); err != nil {
		return rep, err
	}
	return rep, nil
}

// expire deletes the candidates' narinfos, then each of their blobs (urls) no
// narinfo points at any more; a dry run counts them all instead.
func (c *Cache) expire(ctx context.Context, cands []storage.GCCandidate, urls map[string]int64, maxAge time.Duration, rep *GCReport) error {
	if rep.DryRun {
		for _, cand := range cands {
			rep.Paths = append(rep.Paths, cand.StorePath)
		}
		rep.Blobs = len(urls)
		for _, size := range urls {
			rep.FreedBytes += size
		}
		return nil
	}
	if len(cands) == 0 {
		return nil
	}
	var hashes []string
	byHash := map[string]string{}
	for _, cand := range cands {
		hashes = append(hashes, cand.HashPart)
		byHash[cand.HashPart] = cand.StorePath
	}
	deleted, err := c.db.DeleteNarinfos(ctx, hashes, maxAge)
	if err != nil {
		return err
	}
	for _, h := range deleted {
		rep.Paths = append(rep.Paths, byHash[h])
		c.rendered.Remove(h)
	}
	for url, size := range urls {
		gone, err := c.db.DeleteBlobIfUnused(ctx, url, func() error { return c.blobs.Delete(strings.TrimPrefix(url, "nar/")) })
		if err != nil {
			return err
		}
		if gone {
			rep.Blobs++
			rep.FreedBytes += size
		}
	}
	return nil
}

// sweepBlobFiles deletes the blob store's abandoned temporary files, and its blobs
// older than maxAge that no narinfo points at (those of urls were seen to already).
func (c *Cache) sweepBlobFiles(ctx context.Context, urls map[string]int64, maxAge time.Duration, rep *GCReport) error {
	cutoff := time.Now().Add(-maxAge)
	return c.blobs.Walk(func(name string, size int64, modified time.Time, temp bool) error {
		if temp {
			if time.Since(modified) > tempMaxAge {
				rep.TempFiles++
				rep.FreedBytes += size
				if !rep.DryRun {
					_ = c.blobs.DeleteTemp(name)
				}
			}
			return nil
		}
		if modified.After(cutoff) || urls["nar/"+name] != 0 {
			return nil
		}
		url := "nar/" + name
		if rep.DryRun {
			used, err := c.db.BlobInUse(ctx, url)
			if err != nil {
				return err
			}
			if !used {
				rep.OrphanBlobs++
				rep.FreedBytes += size
			}
			return nil
		}
		gone, err := c.db.DeleteBlobIfUnused(ctx, url, func() error { return c.blobs.Delete(name) })
		if err != nil {
			return err
		}
		if gone {
			rep.OrphanBlobs++
			rep.FreedBytes += size
		}
		return nil
	})
}

// sweepSmallBlobs deletes the blobs kept in PostgreSQL, older than maxAge, that no
// narinfo points at (those of urls were seen to already).
func (c *Cache) sweepSmallBlobs(ctx context.Context, urls map[string]int64, maxAge time.Duration, rep *GCReport) error {
	unused, err := c.db.UnusedSmallBlobs(ctx, maxAge)
	if err != nil {
		return err
	}
	for _, b := range unused {
		if urls["nar/"+b.Name] != 0 {
			continue // one of this run's own, counted above
		}
		if rep.DryRun {
			rep.OrphanBlobs++
			rep.FreedBytes += b.Size
			continue
		}
		gone, err := c.db.DeleteBlobIfUnused(ctx, "nar/"+b.Name, func() error { return nil })
		if err != nil {
			return err
		}
		if gone {
			rep.OrphanBlobs++
			rep.FreedBytes += b.Size
		}
	}
	return nil
}

// ListenForDeletions keeps the narinfo answers cached on this coordinator honest:
// every retention run (here, in another coordinator, or fc-coordinator cache gc)
// announces the paths it deleted. While the listener is down, nothing is cached.
func (c *Cache) ListenForDeletions(ctx context.Context) {
	for attempt := 0; ctx.Err() == nil; attempt++ {
		err := c.db.ListenNarinfoDeletions(ctx, func() {
			attempt = 0
			c.listening.Store(true)
		}, func(hashes []string) {
			for _, h := range hashes {
				c.rendered.Remove(h)
			}
		})
		c.listening.Store(false)
		c.rendered.Purge() // deletions may have been missed
		if ctx.Err() != nil {
			return
		}
		wait := time.Duration(min(attempt+1, 10)) * time.Second
		c.log.Warn("narinfo deletion listener lost; answers are not cached until it is back", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// RunGC applies retention every interval until ctx ends.
func (c *Cache) RunGC(ctx context.Context, interval, maxAge time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			rep, err := c.GC(ctx, maxAge, false)
			if err != nil {
				c.log.Warn("cache retention", "err", err)
				continue
			}
			if len(rep.Paths)+rep.OrphanBlobs+rep.TempFiles > 0 {
				c.log.Info("cache retention", "paths", len(rep.Paths), "blobs", rep.Blobs+rep.OrphanBlobs,
					"temp_files", rep.TempFiles, "freed_bytes", rep.FreedBytes)
			}
		}
	}
}
