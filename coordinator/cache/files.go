package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nar"

	"github.com/fc-ci/fc/coordinator/ranges"
	"github.com/fc-ci/fc/storage"
)

// ErrNotRegularFile is a product path that names a directory or a symlink.
var ErrNotRegularFile = errors.New("not a regular file")

// OpenFile streams one regular file out of a store path's NAR in the cache: p is
// /nix/store/<hash>-<name>/<file inside>. It returns the file's size.
func (c *Cache) OpenFile(ctx context.Context, p string) (io.ReadCloser, int64, error) {
	p = path.Clean(p)
	rest, ok := strings.CutPrefix(p, "/nix/store/")
	if !ok {
		return nil, 0, fmt.Errorf("%s is not in /nix/store: %w", p, storage.ErrNotFound)
	}
	base, inner, _ := strings.Cut(rest, "/")
	h := hashPart("/nix/store/" + base)
	if h == "" {
		return nil, 0, fmt.Errorf("%s: %w", p, storage.ErrNotFound)
	}
	ni, err := c.db.GetNarinfo(ctx, h)
	if err != nil {
		return nil, 0, err
	}
	blob, err := c.openBlob(ctx, strings.TrimPrefix(ni.URL, "nar/"))
	if err != nil {
		return nil, 0, fmt.Errorf("blob of %s: %w", ni.StorePath, err)
	}
	var narData io.Reader = blob
	closeAll := func() { blob.Close() }
	if ni.Compression != "none" {
		dec, err := zstd.NewReader(blob, zstd.WithDecoderConcurrency(1))
		if err != nil {
			blob.Close()
			return nil, 0, err
		}
		narData, closeAll = dec, func() { dec.Close(); blob.Close() }
	}
	// go-nix's NAR reader parses in a goroutine that ends only when the parse does:
	// abandoned halfway (a file found, an error), it would wait forever. stop makes
	// the rest of the NAR read as an error, so the parse ends at once.
	stop := &stoppable{r: narData}
	nr, err := nar.NewReader(stop)
	if err != nil {
		closeAll()
		return nil, 0, fmt.Errorf("read the NAR of %s: %w", ni.StorePath, err)
	}
	closeBlob := closeAll
	closeAll = func() {
		stop.stopped = true
		for {
			if _, err := nr.Next(); err != nil {
				break
			}
		}
		closeBlob()
	}
	want := "/" + inner
	if inner == "" {
		want = "/"
	}
	for {
		hdr, err := nr.Next()
		if errors.Is(err, io.EOF) {
			closeAll()
			return nil, 0, fmt.Errorf("%s: %w", p, storage.ErrNotFound)
		}
		if err != nil {
			closeAll()
			return nil, 0, fmt.Errorf("read the NAR of %s: %w", ni.StorePath, err)
		}
		if hdr.Path != want {
			continue
		}
		if hdr.Type != nar.TypeRegular {
			closeAll()
			return nil, 0, fmt.Errorf("%s: %w", p, ErrNotRegularFile)
		}
		return readCloser{Reader: io.LimitReader(nr, hdr.Size), close: closeAll}, hdr.Size, nil
	}
}

// stoppable reads r until stopped, then fails every read.
type stoppable struct {
	r       io.Reader
	stopped bool
}

var errStopped = errors.New("NAR reading stopped")

func (s *stoppable) Read(p []byte) (int, error) {
	if s.stopped {
		return 0, errStopped
	}
	return s.r.Read(p)
}

// openBlob opens a blob from the blob store or, for a small one, from PostgreSQL.
// A blob in neither is storage.ErrNotFound; a blob store that failed (S3 down) is
// its error, so the client is told to retry rather than that the blob is gone.
func (c *Cache) openBlob(ctx context.Context, name string) (Blob, error) {
	b, blobErr := c.blobs.Open(name)
	if blobErr == nil {
		return b, nil
	}
	data, err := c.db.SmallBlob(ctx, name)
	if errors.Is(err, storage.ErrNotFound) && !isNotExist(blobErr) {
		return nil, fmt.Errorf("blob %s: %w", name, blobErr)
	}
	if err != nil {
		return nil, err
	}
	return smallBlobReader{bytes.NewReader(data)}, nil
}

// smallBlobReader is a blob read from PostgreSQL.
type smallBlobReader struct{ *bytes.Reader }

func (b smallBlobReader) Close() error { return nil }

type readCloser struct {
	io.Reader
	close func()
}

func (r readCloser) Close() error { r.close(); return nil }

// LogSource finds a finished build log by the basename of its derivation.
type LogSource func(ctx context.Context, drvBasename string) (io.ReadSeekCloser, error)

// buildLog serves log/<drv basename>: the plain log of the step that built it.
func (c *Cache) buildLog(w http.ResponseWriter, r *http.Request) {
	drv := chi.URLParam(r, "drv")
	if c.cfg.BuildLogs == nil || !strings.HasSuffix(drv, ".drv") || hashPart("/nix/store/"+drv) == "" {
		notFound(w, r)
		return
	}
	f, err := c.cfg.BuildLogs(r.Context(), drv)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		notFound(w, r)
		return
	case err != nil:
		c.unavailable(w, r, err)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	ranges.ServeContent(w, r, time.Time{}, f)
}
