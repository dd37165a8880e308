package work

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// EvalStore is the agent's evaluation store: a local Nix store of its own (a root
// directory, nix --eval-store) that evaluations write .drv files and sources to.
// They are uploaded to the coordinator's cache, from which every builder realises
// them, so nothing needs them in the machine's own store too; on tmpfs the store
// writes them several times faster than Nix's own (each .drv is a file, a lock file
// and an SQLite transaction). It is scratch space: it is emptied when the agent
// starts, when it grows past its limit between evaluations, and when the agent stops.
//
// The store is a directory the agent makes inside a parent directory that must be
// its user's alone (not writable by others): only that directory, and what an
// interrupted emptying left beside it, is ever deleted, and nobody else can swap
// anything into it.
type EvalStore struct {
	dir     string
	maxSize int64
	log     *slog.Logger

	// Evaluations hold it shared; emptying it takes it alone, and only when no
	// evaluation runs (TryLock). An evaluation that starts while the store is being
	// emptied waits for that; never for the sizing, which takes no lock.
	use   sync.RWMutex
	init  sync.Mutex
	made  bool           // the store exists (its database is created once, not by racing workers)
	trims sync.WaitGroup // trims running after evaluations
}

// EvalStoreConfig configures an EvalStore.
type EvalStoreConfig struct {
	// Parent holds the store; it is made (mode 0700) when missing, and must belong
	// to this user and be writable by nobody else.
	Parent string
	// Name is the store's directory in Parent (several agents may share a parent).
	Name    string
	MaxSize int64 // bytes; larger, it is emptied between evaluations (0: never)
	Logger  *slog.Logger
}

// NewEvalStore checks the parent directory and empties what a previous run left; the
// store itself is made by the first evaluation.
func NewEvalStore(cfg EvalStoreConfig) (*EvalStore, error) {
	if !filepath.IsAbs(cfg.Parent) || cfg.Name == "" || strings.ContainsAny(cfg.Name, "/") || cfg.Name == "." || cfg.Name == ".." {
		return nil, fmt.Errorf("eval store %q in %q: want an absolute parent directory and a plain name", cfg.Name, cfg.Parent)
	}
	parent := filepath.Clean(cfg.Parent)
	if err := privateDir(parent); err != nil {
		return nil, fmt.Errorf("eval store: %w", err)
	}
	s := &EvalStore{dir: filepath.Join(parent, cfg.Name), maxSize: cfg.MaxSize, log: cfg.Logger}
	if err := removeStore(s.dir); err != nil {
		return nil, fmt.Errorf("empty the eval store %s: %w", s.dir, err)
	}
	// What an interrupted emptying left.
	old, _ := filepath.Glob(s.dir + ".old-*")
	for _, o := range old {
		_ = RemoveAllWritable(o)
	}
	return s, nil
}

// Dir is the store's root directory.
func (s *EvalStore) Dir() string { return s.dir }

// acquire readies the store for one evaluation; release when it is done.
func (s *EvalStore) acquire(ctx context.Context) (release func(), err error) {
	s.use.RLock()
	if err := s.create(ctx); err != nil {
		s.use.RUnlock()
		return nil, err
	}
	return func() {
		s.use.RUnlock()
		s.trims.Go(s.trim) // sizing a large store takes a while: not in the evaluation's time
	}, nil
}

// create makes the store once: nix-eval-jobs' workers would otherwise race to create
// its database.
func (s *EvalStore) create(ctx context.Context) error {
	s.init.Lock()
	defer s.init.Unlock()
	if s.made {
		return nil
	}
	if err := os.Mkdir(s.dir, 0o700); err != nil && !os.IsExist(err) {
		return fmt.Errorf("eval store: %w", err)
	}
	out, err := exec.CommandContext(ctx, "nix", "--extra-experimental-features", "nix-command",
		"store", "ping", "--store", s.dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("create the eval store %s: %w: %s", s.dir, err, strings.TrimSpace(string(out)))
	}
	s.made = true
	return nil
}

// privateDir makes dir (mode 0700) or checks that it is a directory of this user's
// that nobody else may write to. The eval store's parent is often in /dev/shm, where
// anyone may create names: a directory someone else made there could hand them the
// .drv files this agent uploads, or have the agent delete what they choose.
func privateDir(dir string) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return err
	}
	info, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	st, ok := info.Sys().(*syscall.Stat_t)
	if !info.IsDir() || !ok || int(st.Uid) != os.Getuid() || info.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s is not a directory of this user (uid %d) that only it may write to", dir, os.Getuid())
	}
	return nil
}

// trim empties the store when it has outgrown its limit and no evaluation runs.
func (s *EvalStore) trim() {
	if s.maxSize <= 0 {
		return
	}
	// Sized without the lock: an estimate is enough, and a walk of a large store
	// should not hold up the next evaluation.
	size := dirSize(s.dir)
	if size <= s.maxSize || !s.use.TryLock() {
		return
	}
	defer s.use.Unlock()
	s.init.Lock()
	defer s.init.Unlock()
	if err := removeStore(s.dir); err != nil {
		s.log.Warn("could not empty the eval store", "dir", s.dir, "err", err)
		return
	}
	s.made = false
	s.log.Info("emptied the eval store", "dir", s.dir, "bytes", size, "max", s.maxSize)
}

// Close empties the store (the agent is stopping; evaluations have ended).
func (s *EvalStore) Close() error {
	s.trims.Wait()
	s.use.Lock()
	defer s.use.Unlock()
	s.init.Lock()
	defer s.init.Unlock()
	s.made = false
	return removeStore(s.dir)
}

// dirSize is the bytes of the regular files under dir.
func dirSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// removeStore deletes a store directory: moved aside first (so that a new store can
// be made at once), then made writable (Nix leaves store paths read-only) and removed.
func removeStore(dir string) error {
	if _, err := os.Lstat(dir); os.IsNotExist(err) {
		return nil
	}
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	old := dir + ".old-" + hex.EncodeToString(suffix[:])
	if err := os.Rename(dir, old); err != nil {
		return err
	}
	return RemoveAllWritable(old)
}

// RemoveAllWritable is os.RemoveAll for trees with read-only directories (such as
// a Nix store's paths).
func RemoveAllWritable(dir string) error {
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o755)
		}
		return nil
	})
	return os.RemoveAll(dir)
}
