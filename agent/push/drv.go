package push

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/nix-community/go-nix/pkg/derivation"
	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/fc-ci/fc/protocol"
)

// DrvClosure is a .drv closure's path infos, with the .drv files' contents so that
// uploading them reads nothing again (pass Dump as Options.Dump).
type DrvClosure struct {
	Infos []protocol.PathInfo
	root  string            // the store's root directory ("" for Nix's own)
	files map[string][]byte // the .drv files
}

// Dump writes path's NAR: a .drv of the closure from memory, anything else as Upload
// would.
func (d DrvClosure) Dump(ctx context.Context, path string, w io.Writer) error {
	if b, ok := d.files[path]; ok {
		return writeFileNAR(w, b)
	}
	return dump(ctx, d.root+path, w)
}

// ReadDrvClosure is ClosureInfos for .drv files, mostly without asking Nix: an
// evaluation's drv closure is thousands of small files, and what Nix would say of
// each follows from the file itself. A .drv is a text file written by Nix, so its
// references are its input sources and input derivations, its content address is
// text:sha256 of its bytes, and its NAR is that of one regular file. Input sources
// (not derivations) and their closures are asked of Nix. Paths in seen are skipped
// (and every path returned is added to it), so successive calls send each path once.
// root is the root directory of the local store the derivations are in (an
// evaluation store, nix --eval-store), "" for Nix's own store.
func ReadDrvClosure(ctx context.Context, root string, drvs []string, seen map[string]bool) (DrvClosure, error) {
	cl := DrvClosure{root: root, files: map[string][]byte{}}
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
		infos, files, inputs, err := readDrvInfos(ctx, root, frontier)
		if err != nil {
			return DrvClosure{}, err
		}
		cl.Infos = append(cl.Infos, infos...)
		for i, p := range frontier {
			cl.files[p] = files[i]
		}
		frontier = nil
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
		infos, err := closureInfos(ctx, root, srcs)
		if err != nil {
			return DrvClosure{}, err
		}
		for _, i := range infos {
			if !seen[i.StorePath] {
				seen[i.StorePath] = true
				cl.Infos = append(cl.Infos, i)
			}
		}
	}
	return cl, nil
}

// readDrvInfos reads derivations side by side: their path infos and contents, and
// all their references (input derivations and sources).
func readDrvInfos(ctx context.Context, root string, drvs []string) ([]protocol.PathInfo, [][]byte, []string, error) {
	infos := make([]protocol.PathInfo, len(drvs))
	files := make([][]byte, len(drvs))
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
				infos[i], files[i], errs[i] = readDrvInfo(root, drvs[i])
			}
		})
	}
	wg.Wait()
	var refs []string
	for i, err := range errs {
		if err != nil {
			return nil, nil, nil, err
		}
		refs = append(refs, infos[i].References...)
	}
	return infos, files, refs, nil
}

// readDrvInfo is the path info of a .drv file in the store whose root directory is
// root, from the file alone, and the file's contents.
func readDrvInfo(root, path string) (protocol.PathInfo, []byte, error) {
	b, err := os.ReadFile(root + path)
	if err != nil {
		return protocol.PathInfo{}, nil, fmt.Errorf("read derivation: %w", err)
	}
	d, err := derivation.ReadDerivation(bytes.NewReader(b))
	if err != nil {
		return protocol.PathInfo{}, nil, fmt.Errorf("parse derivation %s: %w", path, err)
	}
	refs := make([]string, 0, len(d.InputSources)+len(d.InputDerivations))
	refs = append(refs, d.InputSources...)
	for in := range d.InputDerivations {
		refs = append(refs, in)
	}
	h := sha256.New()
	cw := &countWriter{w: h}
	if err := writeFileNAR(cw, b); err != nil {
		return protocol.PathInfo{}, nil, err
	}
	text := sha256.Sum256(b)
	return protocol.PathInfo{StorePath: path, NarHash: "sha256:" + nixbase32.EncodeToString(h.Sum(nil)), NarSize: cw.n,
		References: refs, CA: "text:sha256:" + nixbase32.EncodeToString(text[:])}, b, nil
}

// writeFileNAR writes the NAR of a store path that is one regular, non-executable
// file with contents b (as a .drv is).
func writeFileNAR(w io.Writer, b []byte) error {
	nw, err := nar.NewWriter(w)
	if err != nil {
		return err
	}
	if err := nw.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(b))}); err != nil {
		return err
	}
	if _, err := nw.Write(b); err != nil {
		return err
	}
	return nw.Close()
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
