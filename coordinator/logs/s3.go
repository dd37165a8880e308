// Finished logs in S3: a log grows in a local directory while its step runs, and
// moves to the bucket when the step ends.

package logs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/fc-ci/fc/coordinator/objstore"
)

// S3 is a Store that keeps logs being written in a local Dir (appends at offsets
// need a file) and finished ones in a bucket, as logs/<step>/<epoch>.log, or
// .log.zst when compressed (with their plain size in the object's metadata).
type S3 struct {
	local    *Dir // uncompressed: Finish moves the log out of it
	s        *objstore.Store
	compress bool
	enc      *zstd.Encoder
	maxSize  int64 // the most a finished log object may be read into memory
	timeout  time.Duration
	// locks serialise Append against Finish per log (striped by step), so no chunk
	// lands in a local file that Finish has already uploaded.
	locks    [64]sync.Mutex
	unpacked unpackedCache
	// unmoved are finished logs whose upload failed (the bucket was down): still
	// served from the local directory, moved by Run once the bucket answers, so
	// that every coordinator can serve them.
	unmovedMu sync.Mutex
	unmoved   map[[2]int64]struct{}
}

// sizeMeta is the user metadata key holding a log object's plain size.
const sizeMeta = "fc-log-size"

// NewS3 keeps live logs in dir and finished ones in s. Reading a finished log reads
// it whole: maxSize bounds it (logs.max_log_size, with room for compression's worst).
func NewS3(dir string, s *objstore.Store, compress bool, maxSize int64) (*S3, error) {
	local, err := NewDir(dir, false)
	if err != nil {
		return nil, err
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	return &S3{local: local, s: s, compress: compress, enc: enc, maxSize: maxSize + maxSize/8 + 1<<20, timeout: time.Minute,
		unmoved: map[[2]int64]struct{}{}}, nil
}

func (l *S3) lock(step int64) *sync.Mutex { return &l.locks[uint64(step)%uint64(len(l.locks))] }

func logKey(step, epoch int64) string {
	return "logs/" + strconv.FormatInt(step, 10) + "/" + strconv.FormatInt(epoch, 10) + ".log"
}

func (l *S3) localExists(step, epoch int64) (bool, error) {
	_, err := os.Stat(l.local.path(step, epoch))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("log of step %d: %w", step, err)
	}
	return true, nil
}

// stat finds a finished log in the bucket: its key and plain size; fs.ErrNotExist
// when there is none.
func (l *S3) stat(step, epoch int64) (key string, size int64, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	for _, key := range []string{logKey(step, epoch) + ".zst", logKey(step, epoch)} {
		info, err := l.s.Stat(ctx, key)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return "", 0, fmt.Errorf("log of step %d: %w", step, err)
		}
		size := info.Size
		if v, ok := info.Meta[sizeMeta]; ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				size = n
			}
		}
		return key, size, nil
	}
	return "", 0, fmt.Errorf("log of step %d attempt %d: %w", step, epoch, fs.ErrNotExist)
}

// Append implements Store. A log not in the local directory is either new or
// finished: only then is the bucket asked.
func (l *S3) Append(step, epoch, offset int64, data []byte, limit int64) (int64, bool, error) {
	mu := l.lock(step)
	mu.Lock()
	defer mu.Unlock()
	here, err := l.localExists(step, epoch)
	if err != nil {
		return 0, false, err
	}
	if !here {
		_, _, err := l.stat(step, epoch)
		if err == nil {
			return 0, false, fmt.Errorf("log of step %d attempt %d is finished: %w", step, epoch, ErrFinished)
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return 0, false, err
		}
	}
	return l.local.Append(step, epoch, offset, data, limit)
}

// Size implements Store.
func (l *S3) Size(step, epoch int64) (int64, error) {
	if here, err := l.localExists(step, epoch); err != nil || here {
		if err != nil {
			return 0, err
		}
		return l.local.Size(step, epoch)
	}
	_, size, err := l.stat(step, epoch)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	return size, err
}

// Open implements Store: a live log from the local file, a finished one from the
// bucket (kept decompressed for the next few reads).
func (l *S3) Open(step, epoch int64) (io.ReadSeekCloser, error) {
	f, err := os.Open(l.local.path(step, epoch))
	if err == nil {
		return f, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("log of step %d: %w", step, err)
	}
	return l.openBucket(step, epoch, "")
}

// OpenEnded implements Store. The bucket's copy wins: a local file of an ended
// attempt is either one whose upload failed (served from here until Run moves it)
// or a partial copy left here when its agent moved to another coordinator mid-log,
// which the whole log in the bucket replaces (and which is then removed).
func (l *S3) OpenEnded(step, epoch int64) (io.ReadSeekCloser, error) {
	l.unmovedMu.Lock()
	_, unmoved := l.unmoved[[2]int64{step, epoch}]
	l.unmovedMu.Unlock()
	if unmoved {
		return l.Open(step, epoch)
	}
	if data, ok := l.unpacked.get(step, epoch); ok {
		return memLog{bytes.NewReader(data)}, nil
	}
	key, _, err := l.stat(step, epoch)
	if errors.Is(err, fs.ErrNotExist) {
		return l.Open(step, epoch) // not moved (yet): the local file, if any
	}
	if err != nil {
		return nil, err
	}
	mu := l.lock(step)
	mu.Lock()
	if err := os.Remove(l.local.path(step, epoch)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		mu.Unlock()
		return nil, fmt.Errorf("log of step %d: a stale local copy: %w", step, err)
	}
	mu.Unlock()
	return l.openBucket(step, epoch, key)
}

// openBucket reads a finished log from the bucket (key "": look it up), keeping it
// decompressed for the next few reads.
func (l *S3) openBucket(step, epoch int64, key string) (io.ReadSeekCloser, error) {
	if data, ok := l.unpacked.get(step, epoch); ok {
		return memLog{bytes.NewReader(data)}, nil
	}
	if key == "" {
		var err error
		if key, _, err = l.stat(step, epoch); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	data, err := l.s.ReadAll(ctx, key, l.maxSize)
	if err != nil {
		return nil, fmt.Errorf("log of step %d: %w", step, err)
	}
	if key != logKey(step, epoch) {
		if data, err = unzstd(step, data); err != nil {
			return nil, err
		}
	}
	l.unpacked.put(step, epoch, data)
	return memLog{bytes.NewReader(data)}, nil
}

// Finish implements Store: the log is uploaded (compressed when configured), then
// its local file removed. Should the upload fail, the log stays local and is still
// served from there until Run moves it.
func (l *S3) Finish(step, epoch int64) error {
	err := l.finish(step, epoch)
	l.unmovedMu.Lock()
	defer l.unmovedMu.Unlock()
	if err != nil {
		l.unmoved[[2]int64{step, epoch}] = struct{}{}
	} else {
		delete(l.unmoved, [2]int64{step, epoch})
	}
	return err
}

// Run moves the finished logs whose upload failed, every interval until ctx ends.
func (l *S3) Run(ctx context.Context, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if moved, left := l.MoveUnmoved(); moved+left > 0 {
			log.Info("finished logs moved to the bucket after a failed upload", "moved", moved, "left", left)
		}
	}
}

// MoveUnmoved tries again to move the finished logs whose upload failed; it says
// how many moved and how many are left for the next try.
func (l *S3) MoveUnmoved() (moved, left int) {
	l.unmovedMu.Lock()
	keys := make([][2]int64, 0, len(l.unmoved))
	for k := range l.unmoved {
		keys = append(keys, k)
	}
	l.unmovedMu.Unlock()
	for _, k := range keys {
		if l.Finish(k[0], k[1]) != nil {
			left++
		} else {
			moved++
		}
	}
	return moved, left
}

// finish moves one finished log to the bucket.
func (l *S3) finish(step, epoch int64) error {
	mu := l.lock(step)
	mu.Lock()
	defer mu.Unlock()
	p := l.local.path(step, epoch)
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // no log, or already finished
	}
	if err != nil {
		return fmt.Errorf("log of step %d: %w", step, err)
	}
	key, body := logKey(step, epoch), data
	if l.compress {
		key, body = key+".zst", l.enc.EncodeAll(data, nil)
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	meta := map[string]string{sizeMeta: strconv.Itoa(len(data))}
	if err := l.s.Put(ctx, key, bytes.NewReader(body), int64(len(body)), meta); err != nil {
		return fmt.Errorf("finish log of step %d: %w", step, err)
	}
	if err := os.Remove(p); err != nil {
		return fmt.Errorf("finish log of step %d: %w", step, err)
	}
	return nil
}

var _ Store = (*S3)(nil)
