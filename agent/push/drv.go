package push

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/nix-community/go-nix/pkg/derivation"
	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/fc-ci/fc/protocol"
)

// DrvClosureInfos is ClosureInfos for .drv files, mostly without asking Nix: an
// evaluation's drv closure is thousands of small files, and what Nix would say of
// each follows from the file itself. A .drv is a text file written by Nix, so its
// references are its input sources and input derivations, its content address is
// text:sha256 of its bytes, and its NAR is that of one regular file. Input sources
// (not derivations) and their closures are asked of Nix. Paths in seen are skipped
// (and every path returned is added to it), so successive calls send each path once.
func DrvClosureInfos(ctx context.Context, drvs []string, seen map[string]bool) ([]protocol.PathInfo, error) {
	var out []protocol.PathInfo
	var srcs []string
	srcSet := map[string]bool{}
	var frontier []string
	for _, d := range drvs {
		if !seen[d] {
			seen[d] = true
			frontier = append(frontier, d)
		}
	}
	for len(frontier) > 0 {
		infos, inputs, err := readDrvInfos(ctx, frontier)
		if err != nil {
			return nil, err
		}
		out = append(out, infos...)
		frontier = frontier[:0]
		for _, in := range inputs {
			if seen[in] {
				continue
			}
			if strings.HasSuffix(in, ".drv") {
				seen[in] = true
				frontier = append(frontier, in)
			} else if !srcSet[in] {
				srcSet[in] = true
				srcs = append(srcs, in)
			}
		}
	}
	if len(srcs) > 0 {
		infos, err := ClosureInfos(ctx, srcs)
		if err != nil {
			return nil, err
		}
		for _, i := range infos {
			if !seen[i.StorePath] {
				seen[i.StorePath] = true
				out = append(out, i)
			}
		}
	}
	return out, nil
}

// readDrvInfos reads derivations side by side: their path infos, and all their
// references (input derivations and sources).
func readDrvInfos(ctx context.Context, drvs []string) ([]protocol.PathInfo, []string, error) {
	infos := make([]protocol.PathInfo, len(drvs))
	errs := make([]error, len(drvs))
	var wg sync.WaitGroup
	workers := min(8, len(drvs))
	per := (len(drvs) + workers - 1) / workers
	for w := range workers {
		wg.Go(func() {
			for i := w * per; i < min((w+1)*per, len(drvs)); i++ {
				if ctx.Err() != nil {
					errs[i] = ctx.Err()
					return
				}
				infos[i], errs[i] = DrvInfo(drvs[i])
			}
		})
	}
	wg.Wait()
	var refs []string
	for i, err := range errs {
		if err != nil {
			return nil, nil, err
		}
		refs = append(refs, infos[i].References...)
	}
	return infos, refs, nil
}

// DrvInfo is the path info of a .drv file in the store, from the file alone.
func DrvInfo(path string) (protocol.PathInfo, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return protocol.PathInfo{}, fmt.Errorf("read derivation: %w", err)
	}
	d, err := derivation.ReadDerivation(bytes.NewReader(b))
	if err != nil {
		return protocol.PathInfo{}, fmt.Errorf("parse derivation %s: %w", path, err)
	}
	refs := make([]string, 0, len(d.InputSources)+len(d.InputDerivations))
	refs = append(refs, d.InputSources...)
	for in := range d.InputDerivations {
		refs = append(refs, in)
	}
	h := sha256.New()
	cw := &countWriter{w: h}
	nw, err := nar.NewWriter(cw)
	if err != nil {
		return protocol.PathInfo{}, err
	}
	if err := nw.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(b))}); err != nil {
		return protocol.PathInfo{}, err
	}
	if _, err := nw.Write(b); err != nil {
		return protocol.PathInfo{}, err
	}
	if err := nw.Close(); err != nil {
		return protocol.PathInfo{}, err
	}
	text := sha256.Sum256(b)
	return protocol.PathInfo{StorePath: path, NarHash: "sha256:" + nixbase32.EncodeToString(h.Sum(nil)), NarSize: cw.n,
		References: refs, CA: "text:sha256:" + nixbase32.EncodeToString(text[:])}, nil
}

type countWriter struct {
	w interface{ Write([]byte) (int, error) }
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
