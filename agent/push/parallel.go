package push

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"

	"github.com/fc-ci/fc/protocol"
)

// One stream carries one path at a time, through a flow-control window of its own
// (1 MiB): a large path crosses it at the pace of the coordinator's acknowledgements,
// and the coordinator hashes and writes it on one core. Large paths that depend on
// nothing the cache lacks ("leaves") are therefore sent over several streams side by
// side, the rest afterwards over one stream in dependency order. The coordinator
// checks every path as before: a stream accepts a path only once the paths it refers
// to are in the cache, which the leaves' are, and the rest's are once the leaves are
// committed. Opt-in (Options.Streams), for pushes only: a build's outputs are
// held back as pending until the step succeeds, so the rest could not refer to them.
const (
	// maxStreams bounds the streams of one upload.
	maxStreams = 4
	// parallelBytes is the NAR bytes of leaves below which one stream does it all:
	// the extra query and offers cost more than they save.
	parallelBytes = 32 << 20
)

// uploadParallel sends the leaves of what the cache lacks over opts.Streams streams,
// then the rest over one. done is false when that does not pay (too few leaf
// bytes); nothing has been sent then.
func uploadParallel(ctx context.Context, conn StreamOpener, infos []protocol.PathInfo, opts Options) (_ Stats, _ error, done bool) {
	var total int64
	for _, i := range infos {
		total += i.NarSize
	}
	if total < parallelBytes {
		return Stats{}, nil, false
	}
	plan, err := query(conn, infos, opts.Cached)
	if err != nil {
		return Stats{Offered: len(infos)}, err, true
	}
	bins := leafBins(infos, plan.Missing, opts.Streams)
	if bins == nil {
		return Stats{}, nil, false
	}
	var mu sync.Mutex // one progress report at a time
	if p := opts.Progress; p != nil {
		opts.Progress = func(path string, narSize int64) { mu.Lock(); defer mu.Unlock(); p(path, narSize) }
	}
	stats := make([]Stats, len(bins))
	errs := make([]error, len(bins))
	var wg sync.WaitGroup
	for k, bin := range bins {
		wg.Go(func() { stats[k], errs[k] = uploadOne(ctx, conn, bin, opts) })
	}
	wg.Wait()
	out := Stats{Offered: len(infos)}
	for k := range bins {
		out.add(stats[k])
		if err == nil && !errors.Is(errs[k], ErrRejected) && !errors.Is(errs[k], ErrNotStored) {
			err = errs[k]
		}
	}
	if err == nil {
		err = out.rejectionErr()
	}
	if err != nil {
		return out, err, true
	}
	// Everything again: the cache now holds the leaves, so the plan asks for the rest.
	rest, err := uploadOne(ctx, conn, infos, opts)
	out.add(rest)
	out.Upstream = rest.Upstream
	return out, err, true
}

// query asks which of infos the cache lacks, without sending any.
func query(conn StreamOpener, infos []protocol.PathInfo, cached *Cached) (protocol.UploadPlan, error) {
	st, err := conn.OpenStream(protocol.StreamUpload)
	if err != nil {
		return protocol.UploadPlan{}, err
	}
	defer st.Close()
	return request(st, protocol.UploadRequest{Paths: infos, Query: true}, cached)
}

// leafBins splits the missing paths that refer to no other missing path into at most
// n groups of about equal NAR bytes, each with the infos of the paths its leaves refer
// to (so the coordinator sees them as cached or upstream), in dependency order. It
// is nil when fewer than two leaves, or too few of their bytes, make it worth it.
func leafBins(infos []protocol.PathInfo, missing []string, n int) [][]protocol.PathInfo {
	byPath := make(map[string]protocol.PathInfo, len(infos))
	for _, i := range infos {
		byPath[i.StorePath] = i
	}
	isMissing := make(map[string]bool, len(missing))
	for _, p := range missing {
		isMissing[p] = true
	}
	var leaves []protocol.PathInfo
	var bytes int64
	for _, p := range missing {
		i := byPath[p]
		if !slices.ContainsFunc(i.References, func(r string) bool { return r != p && isMissing[r] }) {
			leaves = append(leaves, i)
			bytes += i.NarSize
		}
	}
	if len(leaves) < 2 || bytes < parallelBytes {
		return nil
	}
	// Largest first, each to the lightest bin.
	slices.SortStableFunc(leaves, func(a, b protocol.PathInfo) int { return cmp.Compare(b.NarSize, a.NarSize) })
	n = min(n, len(leaves))
	bins := make([][]protocol.PathInfo, n)
	load := make([]int64, n)
	for _, l := range leaves {
		k := 0
		for j := range load {
			if load[j] < load[k] {
				k = j
			}
		}
		bins[k] = append(bins[k], l)
		load[k] += l.NarSize
	}
	for k, bin := range bins {
		seen := map[string]bool{}
		for _, l := range bin {
			seen[l.StorePath] = true
		}
		for _, l := range bin {
			for _, r := range l.References {
				if ri, ok := byPath[r]; ok && !seen[r] {
					seen[r] = true
					bins[k] = append(bins[k], ri)
				}
			}
		}
		bins[k] = SortByDependencies(bins[k])
	}
	return bins
}

// add counts what another upload of the same push did.
func (s *Stats) add(o Stats) {
	s.Sent += o.Sent
	s.NarBytes += o.NarBytes
	s.FileBytes += o.FileBytes
	s.Plain += o.Plain
	s.SentPaths = append(s.SentPaths, o.SentPaths...)
	s.Rejections = append(s.Rejections, o.Rejections...)
	s.Unstored += o.Unstored
}
