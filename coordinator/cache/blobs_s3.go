// The S3 blob store: NARs as objects nar/<name>, uploads streamed to tmp/ and copied
// into place only once verified.

package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"strings"
	"time"

	"github.com/fc-ci/fc/coordinator/objstore"
)

// S3 is a BlobStore in an S3 bucket. A blob being written streams to a temporary
// object (tmp/upload-<random>) while the upload is verified; CommitAll copies it to
// nar/<name> on the server, inside the transaction that records its narinfo, so a
// narinfo never names an object that is not there, and a rejected upload never
// reaches nar/.
type S3 struct {
	s *objstore.Store
	// timeout bounds each request made outside an upload's stream (copy, delete, stat).
	timeout time.Duration
}

// NewS3 is a blob store in s.
func NewS3(s *objstore.Store) *S3 { return &S3{s: s, timeout: time.Minute} }

const (
	s3NarDir = "nar/"
	s3TmpDir = "tmp/"
)

type s3Writer struct {
	b         *S3
	key       string
	pw        *io.PipeWriter
	cancel    context.CancelFunc
	done      chan error // the PUT's outcome
	size      int64
	synced    bool
	stored    bool // the PUT succeeded: there is an object to delete on Abort
	committed bool
}

// Create implements BlobStore: the PUT of the temporary object starts now and reads
// what is written.
func (b *S3) Create() (BlobWriter, error) {
	var id [12]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("create blob: %w", err)
	}
	key := s3TmpDir + "upload-" + hex.EncodeToString(id[:])
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	w := &s3Writer{b: b, key: key, pw: pw, cancel: cancel, done: make(chan error, 1)}
	go func() {
		err := b.s.Put(ctx, key, pr, -1, nil)
		// A failed PUT fails the writer's next Write.
		pr.CloseWithError(cmpErr(err, io.ErrClosedPipe))
		w.done <- err
	}()
	return w, nil
}

func cmpErr(err, otherwise error) error {
	if err != nil {
		return err
	}
	return otherwise
}

func (w *s3Writer) Write(p []byte) (int, error) {
	n, err := w.pw.Write(p)
	w.size += int64(n)
	if err != nil {
		return n, fmt.Errorf("upload to %s: %w", w.b.s.Name(w.key), err)
	}
	return n, nil
}

// SyncAll implements BlobStore: it ends each blob's stream and waits for its PUT.
func (b *S3) SyncAll(ws []BlobWriter) error {
	var first error
	for _, bw := range ws {
		w := bw.(*s3Writer)
		w.pw.Close()
		err := <-w.done
		if err != nil && first == nil {
			first = fmt.Errorf("sync blob: %w", err)
		}
		w.synced, w.stored = true, err == nil
	}
	return first
}

// CommitAll implements BlobStore: each temporary object is copied to its name, then
// deleted (one left behind by a failure is swept by retention as an abandoned
// temporary blob).
func (b *S3) CommitAll(ws []BlobWriter, names []string) error {
	if len(ws) != len(names) {
		return fmt.Errorf("commit blobs: %d blobs, %d names", len(ws), len(names))
	}
	for i, bw := range ws {
		w := bw.(*s3Writer)
		if err := validName(names[i]); err != nil {
			return err
		}
		if !w.synced {
			return fmt.Errorf("commit blob %s: not synced", names[i])
		}
		ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
		err := b.s.Copy(ctx, w.key, s3NarDir+names[i], w.size)
		cancel()
		if err != nil {
			return fmt.Errorf("commit blob: %w", err)
		}
		w.committed = true
		b.deleteQuietly(w.key)
	}
	return nil
}

func (b *S3) deleteQuietly(key string) {
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	_ = b.s.Delete(ctx, key)
}

// Abort implements BlobWriter: the PUT is cancelled and the temporary object, if it
// was stored, deleted (a failed PUT stores nothing, and a store that is down would
// only make the delete wait out its retries).
func (w *s3Writer) Abort() {
	if w.committed {
		return
	}
	w.cancel()
	w.pw.CloseWithError(errors.New("blob aborted"))
	if !w.synced {
		w.stored = <-w.done == nil
		w.synced = true
	}
	if w.stored {
		w.b.deleteQuietly(w.key)
	}
}

// Open implements BlobStore.
func (b *S3) Open(name string) (Blob, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	// The object reads lazily, for as long as the response takes: no timeout.
	o, err := b.s.Get(context.Background(), s3NarDir+name)
	if err != nil {
		return nil, err
	}
	return o, nil
}

// Presign implements Presigner.
func (b *S3) Presign(ctx context.Context, name string, expiry time.Duration) (*url.URL, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	// A blob kept in PostgreSQL (small) has no object: the caller serves it instead.
	if _, err := b.s.Stat(ctx, s3NarDir+name); err != nil {
		return nil, err
	}
	return b.s.Presign(ctx, s3NarDir+name, expiry)
}

// Walk implements BlobStore.
func (b *S3) Walk(fn func(name string, size int64, modified time.Time, temp bool) error) error {
	for _, dir := range []string{s3NarDir, s3TmpDir} {
		err := b.s.List(context.Background(), dir, func(o objstore.Info) error {
			name := strings.TrimPrefix(o.Key, dir)
			if validName(name) != nil {
				return nil
			}
			return fn(name, o.Size, o.Modified, dir == s3TmpDir)
		})
		if err != nil {
			return fmt.Errorf("list blobs: %w", err)
		}
	}
	return nil
}

// DeleteTemp implements BlobStore.
func (b *S3) DeleteTemp(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	return b.s.Delete(ctx, s3TmpDir+name)
}

// Delete implements BlobStore.
func (b *S3) Delete(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	return b.s.Delete(ctx, s3NarDir+name)
}

// Presigner is a BlobStore whose blobs clients can fetch themselves, by URL.
type Presigner interface {
	// Presign is a URL reading the blob name until expiry; fs.ErrNotExist when the
	// store does not hold it.
	Presign(ctx context.Context, name string, expiry time.Duration) (*url.URL, error)
}

var _ Presigner = (*S3)(nil)

// isNotExist says err is a blob that is not there (as opposed to a store that failed).
func isNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrBadName) }
