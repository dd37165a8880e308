// Package cache is the coordinator's Nix binary cache: a blob store for compressed
// NARs, uploads received over agent sessions and verified while they are written,
// narinfos signed at upload, and the /nix-cache HTTP routes real Nix clients use.
package cache

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// BlobStore holds compressed NARs by name. The local directory is the first
// implementation; S3-compatible storage comes with the scale-out work.
type BlobStore interface {
	// Create starts a new blob; nothing is visible until Commit.
	Create() (BlobWriter, error)
	// Open reads a committed blob.
	Open(name string) (Blob, error)
	// Delete removes a committed blob.
	Delete(name string) error
	// Walk lists committed blobs and abandoned temporary ones (temp true).
	Walk(fn func(name string, size int64, modified time.Time, temp bool) error) error
	// DeleteTemp removes an abandoned temporary blob.
	DeleteTemp(name string) error
}

// BlobWriter is a blob being written.
type BlobWriter interface {
	io.Writer
	// Sync makes the written bytes durable (before Commit, outside any lock).
	Sync() error
	// Commit makes the (synced) blob visible under name, atomically and durably.
	Commit(name string) error
	// Abort discards it.
	Abort()
}

// Blob is a committed blob open for reading.
type Blob interface {
	io.ReadSeekCloser
	Size() int64
}

// ErrBadName is a blob name that is not a plain file name.
var ErrBadName = errors.New("bad blob name")

// Dir is a BlobStore in a local directory: dir/nar/<name>, temporary files in dir/tmp.
type Dir struct{ root string }

// NewDir opens (creating) a blob directory.
func NewDir(root string) (*Dir, error) {
	for _, sub := range []string{"nar", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, sub), 0o755); err != nil {
			return nil, fmt.Errorf("blob store: %w", err)
		}
	}
	return &Dir{root: root}, nil
}

func validName(name string) error {
	if name == "" || strings.ContainsAny(name, "/\\\x00") || name == "." || name == ".." || strings.HasPrefix(name, ".") {
		return ErrBadName
	}
	return nil
}

type dirWriter struct {
	d *Dir
	f *os.File
}

// Create implements BlobStore.
func (d *Dir) Create() (BlobWriter, error) {
	f, err := os.CreateTemp(filepath.Join(d.root, "tmp"), "upload-*")
	if err != nil {
		return nil, fmt.Errorf("create blob: %w", err)
	}
	return &dirWriter{d: d, f: f}, nil
}

func (w *dirWriter) Write(p []byte) (int, error) { return w.f.Write(p) }

// Sync writes the file's bytes to disk.
func (w *dirWriter) Sync() error {
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("sync blob: %w", err)
	}
	return nil
}

// Commit renames the synced file into place and syncs the directory, so a crash
// leaves either no blob or a whole one.
func (w *dirWriter) Commit(name string) error {
	if err := validName(name); err != nil {
		w.Abort()
		return err
	}
	if err := w.f.Close(); err != nil {
		os.Remove(w.f.Name())
		return fmt.Errorf("close blob: %w", err)
	}
	dir := filepath.Join(w.d.root, "nar")
	if err := os.Rename(w.f.Name(), filepath.Join(dir, name)); err != nil {
		os.Remove(w.f.Name())
		return fmt.Errorf("commit blob: %w", err)
	}
	if df, err := os.Open(dir); err == nil {
		_ = df.Sync()
		df.Close()
	}
	return nil
}

func (w *dirWriter) Abort() {
	w.f.Close()
	os.Remove(w.f.Name())
}

type dirBlob struct {
	*os.File
	size int64
}

func (b dirBlob) Size() int64 { return b.size }

// OSFile lets the HTTP server send the file with sendfile.
func (b dirBlob) OSFile() *os.File { return b.File }

// Open implements BlobStore. Names are checked, so nothing outside dir/nar is read.
func (d *Dir) Open(name string) (Blob, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Join(d.root, "nar", name))
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, os.ErrNotExist
	}
	return dirBlob{File: f, size: st.Size()}, nil
}

// Walk implements BlobStore.
func (d *Dir) Walk(fn func(name string, size int64, modified time.Time, temp bool) error) error {
	for _, sub := range []string{"nar", "tmp"} {
		entries, err := os.ReadDir(filepath.Join(d.root, sub))
		if err != nil {
			return fmt.Errorf("list blobs: %w", err)
		}
		for _, e := range entries {
			info, err := e.Info()
			if err != nil || !info.Mode().IsRegular() {
				continue
			}
			if err := fn(e.Name(), info.Size(), info.ModTime(), sub == "tmp"); err != nil {
				return err
			}
		}
	}
	return nil
}

// DeleteTemp implements BlobStore.
func (d *Dir) DeleteTemp(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	return os.Remove(filepath.Join(d.root, "tmp", name))
}

// Delete implements BlobStore.
func (d *Dir) Delete(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	return os.Remove(filepath.Join(d.root, "nar", name))
}
