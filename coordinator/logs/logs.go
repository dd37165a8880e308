// Package logs stores build logs: one file per step attempt, appended at offsets so a
// chunk sent twice (after a reconnect) is stored once and a gap is refused.
package logs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"
)

// ErrGap is a chunk that starts past the end of the stored log.
var ErrGap = errors.New("log chunk leaves a gap")

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
}

// Dir keeps logs in a directory: <dir>/<step>/<epoch>.log.
type Dir struct {
	dir string
	mu  sync.Mutex // appends to one log are serialised; one lock is plenty here
}

// NewDir returns a store in dir, creating it.
func NewDir(dir string) (*Dir, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("log dir: %w", err)
	}
	return &Dir{dir: dir}, nil
}

func (d *Dir) path(step, epoch int64) string {
	return filepath.Join(d.dir, strconv.FormatInt(step, 10), strconv.FormatInt(epoch, 10)+".log")
}

// Append implements Store.
func (d *Dir) Append(step, epoch, offset int64, data []byte, limit int64) (int64, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.path(step, epoch)
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
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("log of step %d: %w", step, err)
	}
	return st.Size(), nil
}

// Open implements Store.
func (d *Dir) Open(step, epoch int64) (io.ReadSeekCloser, error) {
	f, err := os.Open(d.path(step, epoch))
	if err != nil {
		return nil, fmt.Errorf("log of step %d: %w", step, err)
	}
	return f, nil
}
