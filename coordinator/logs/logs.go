// Package logs stores build logs: one file per step attempt, appended at offsets so a
// chunk sent twice (after a reconnect) is stored once and a gap is refused.
package logs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// ErrGap is a chunk that starts past the end of the stored log.
var ErrGap = errors.New("log chunk leaves a gap")

// ErrFinished is an append to a log that was finished.
var ErrFinished = errors.New("log is finished")

// Store is the log storage behind the coordinator.
type Store interface {
	// Append writes data at offset and returns the log's size after it; bytes before
	// the stored size are skipped, and a chunk past it is ErrGap. Nothing is stored
	// beyond limit (when > 0); truncated reports that something was cut.
	Append(step, epoch, offset int64, data []byte, limit int64) (size int64, truncated bool, err error)
	// Size is how many bytes of the log are stored (0 when none).
	Size(step, epoch int64) (int64, error)
	// Open reads the log; fs.ErrNotExist when there is none.
	Open(step, epoch int64) (io.ReadSeekCloser, error)
	// OpenEnded reads the log of an attempt known to have ended (its step finished
	// or was given a new attempt): where stores differ (a partial copy left here by
	// an agent that moved to another coordinator), the finished log wins.
	OpenEnded(step, epoch int64) (io.ReadSeekCloser, error)
	// Finish marks the log complete: no more appends; it may be compressed.
	Finish(step, epoch int64) error
}

// Dir keeps logs in a directory: <dir>/<step>/<epoch>.log while they grow, and
// <epoch>.log.zst once finished when compression is on.
type Dir struct {
	dir      string
	compress bool
	mu       sync.Mutex // appends to one log are serialised; one lock is plenty here
	// enc compresses finished logs; EncodeAll may be called concurrently, and making
	// an encoder for each log cost more than compressing a small one.
	enc *zstd.Encoder

	unpacked unpackedCache
}

// unpackedCache keeps the last few decompressed logs: a viewer scrolling up a long
// finished log asks for one byte range after another.
type unpackedCache struct {
	mu      sync.Mutex
	entries []unpackedLog
}

func (c *unpackedCache) get(step, epoch int64) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, u := range c.entries {
		if u.step == step && u.epoch == epoch {
			c.entries = append(append([]unpackedLog{u}, c.entries[:i]...), c.entries[i+1:]...) // most recent first
			return u.data, true
		}
	}
	return nil, false
}

func (c *unpackedCache) put(step, epoch int64, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries = append([]unpackedLog{{step, epoch, data}}, c.entries...)
	total := 0
	for i, u := range c.entries {
		total += len(u.data)
		if i >= unpackedEntries || total > unpackedBytes {
			c.entries = c.entries[:max(i, 1)]
			break
		}
	}
}

type unpackedLog struct {
	step, epoch int64
	data        []byte
}

// Bounds of the decompressed-log cache.
const (
	unpackedEntries = 4
	unpackedBytes   = 256 << 20
)

// NewDir returns a store in dir, creating it. compress stores finished logs with zstd.
func NewDir(dir string, compress bool) (*Dir, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("log dir: %w", err)
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	return &Dir{dir: dir, compress: compress, enc: enc}, nil
}

func (d *Dir) path(step, epoch int64) string {
	return filepath.Join(d.dir, strconv.FormatInt(step, 10), strconv.FormatInt(epoch, 10)+".log")
}

// Append implements Store.
func (d *Dir) Append(step, epoch, offset int64, data []byte, limit int64) (int64, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.path(step, epoch)
	if _, err := os.Stat(p + ".zst"); err == nil {
		return 0, false, fmt.Errorf("log of step %d attempt %d is finished: %w", step, epoch, ErrFinished)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return 0, false, fmt.Errorf("log of step %d: %w", step, err)
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, false, fmt.Errorf("log of step %d: %w", step, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, false, fmt.Errorf("log of step %d: %w", step, err)
	}
	size := st.Size()
	if offset > size {
		return size, false, fmt.Errorf("log of step %d: chunk at %d, stored %d: %w", step, offset, size, ErrGap)
	}
	if skip := size - offset; skip >= int64(len(data)) {
		return size, false, nil
	} else {
		data = data[skip:]
	}
	truncated := false
	if limit > 0 && size+int64(len(data)) > limit {
		data, truncated = data[:max(limit-size, 0)], true
	}
	n, err := f.WriteAt(data, size)
	if err != nil {
		return size + int64(n), truncated, fmt.Errorf("log of step %d: %w", step, err)
	}
	return size + int64(n), truncated, nil
}

// Size implements Store.
func (d *Dir) Size(step, epoch int64) (int64, error) {
	st, err := os.Stat(d.path(step, epoch))
	if errors.Is(err, fs.ErrNotExist) {
		f, err := d.openCompressed(step, epoch)
		if errors.Is(err, fs.ErrNotExist) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		defer f.Close()
		return f.Size(), nil
	}
	if err != nil {
		return 0, fmt.Errorf("log of step %d: %w", step, err)
	}
	return st.Size(), nil
}

// Open implements Store.
func (d *Dir) Open(step, epoch int64) (io.ReadSeekCloser, error) {
	f, err := os.Open(d.path(step, epoch))
	if errors.Is(err, fs.ErrNotExist) {
		return d.openCompressed(step, epoch)
	}
	if err != nil {
		return nil, fmt.Errorf("log of step %d: %w", step, err)
	}
	return f, nil
}

// memLog is a decompressed log.
type memLog struct{ *bytes.Reader }

func (memLog) Close() error { return nil }

// openCompressed reads a finished, compressed log. Logs are bounded by max_log_size,
// so holding one decompressed is fine.
func (d *Dir) openCompressed(step, epoch int64) (memLog, error) {
	if data, ok := d.unpacked.get(step, epoch); ok {
		return memLog{bytes.NewReader(data)}, nil
	}
	data, err := d.decompress(step, epoch)
	if err != nil {
		return memLog{}, err
	}
	d.unpacked.put(step, epoch, data)
	return memLog{bytes.NewReader(data)}, nil
}

func (d *Dir) decompress(step, epoch int64) ([]byte, error) {
	raw, err := os.ReadFile(d.path(step, epoch) + ".zst")
	if err != nil {
		return nil, fmt.Errorf("log of step %d: %w", step, err)
	}
	return unzstd(step, raw)
}

func unzstd(step int64, raw []byte) ([]byte, error) {
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	data, err := dec.DecodeAll(raw, nil)
	if err != nil {
		return nil, fmt.Errorf("log of step %d: decompress: %w", step, err)
	}
	return data, nil
}

// OpenEnded implements Store: a directory holds one copy of each log.
func (d *Dir) OpenEnded(step, epoch int64) (io.ReadSeekCloser, error) { return d.Open(step, epoch) }

// Finish implements Store: with compression on, the log becomes <epoch>.log.zst
// (written beside it, synced, then renamed, so a crash leaves one whole copy).
func (d *Dir) Finish(step, epoch int64) error {
	if !d.compress {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.path(step, epoch)
	data, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // no log, or already compressed
	}
	if err != nil {
		return fmt.Errorf("log of step %d: %w", step, err)
	}
	packed := d.enc.EncodeAll(data, nil)
	tmp := p + ".zst.tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("compress log of step %d: %w", step, err)
	}
	if _, err := f.Write(packed); err != nil {
		f.Close()
		return fmt.Errorf("compress log of step %d: %w", step, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("compress log of step %d: %w", step, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, p+".zst"); err != nil {
		return fmt.Errorf("compress log of step %d: %w", step, err)
	}
	return os.Remove(p)
}
