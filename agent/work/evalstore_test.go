package work

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// instantiateIn writes a derivation into the store at root and returns its path.
func instantiateIn(t *testing.T, root, name string) string {
	t.Helper()
	out, err := exec.Command("nix-instantiate", "--store", root, "--option", "substituters", "", "--expr",
		`derivation { name = "`+name+`"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo > $out" ];`+
			` src = builtins.toFile "src-`+name+`" "data"; }`).Output()
	if err != nil {
		t.Fatalf("nix-instantiate: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func TestEvalStore_ScratchSpaceEmptiedAtStartOverItsLimitAndAtStop(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("nix-instantiate"); err != nil {
		t.Fatal("the test needs Nix")
	}
	ctx := context.Background()
	parent := filepath.Join(t.TempDir(), "parent") // made by NewEvalStore
	t.Cleanup(func() { _ = exec.Command("chmod", "-R", "u+w", filepath.Dir(parent)).Run() })
	dir := filepath.Join(parent, "eval-store")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if _, err := NewEvalStore(EvalStoreConfig{Parent: parent, Name: "eval-store", Logger: log}); err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(parent); err != nil || info.Mode().Perm() != 0o700 {
		t.Fatalf("parent made as %v (%v), want mode 0700", info.Mode(), err)
	}

	// What an earlier run left (a read-only store path, and a half-removed store)
	// goes; anything else in the parent stays.
	leftover := instantiateIn(t, dir, "leftover")
	if err := os.MkdirAll(filepath.Join(dir+".old-1234", "ro"), 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(filepath.Join(dir+".old-1234", "ro"), 0o555)
	_ = os.Chmod(dir+".old-1234", 0o555)
	if err := os.WriteFile(filepath.Join(parent, "keep"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := NewEvalStore(EvalStoreConfig{Parent: parent, Name: "eval-store", MaxSize: 1 << 30, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	if exists(dir+leftover) || exists(dir+".old-1234") {
		t.Fatalf("a previous run's store is still there")
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 1 || entries[0].Name() != "keep" {
		t.Fatalf("in the parent directory: %v, want only keep", entries)
	}

	// An evaluation finds the store made (its database created once, up front).
	release, err := s.acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !exists(filepath.Join(dir, "nix/var/nix/db/db.sqlite")) {
		t.Fatal("acquire did not create the store")
	}
	drv := instantiateIn(t, dir, "one")
	release()
	s.trims.Wait()
	if !exists(dir + drv) {
		t.Fatal("a store under its limit was emptied")
	}

	// Over its limit, it is emptied once no evaluation holds it, and made again
	// by the next.
	s.maxSize = 1
	r1, err := s.acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r1()
	s.trims.Wait()
	if !exists(dir + drv) {
		t.Fatal("the store was emptied while an evaluation held it")
	}
	r2()
	s.trims.Wait()
	if exists(dir) {
		t.Fatal("a store over its limit was not emptied after the last evaluation")
	}
	r3, err := s.acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !exists(filepath.Join(dir, "nix/var/nix/db/db.sqlite")) {
		t.Fatal("the store was not made again")
	}
	instantiateIn(t, dir, "two")
	s.maxSize = 0 // no limit: kept
	r3()
	s.trims.Wait()
	if !exists(filepath.Join(dir, "nix/store")) {
		t.Fatal("a store without a limit was emptied")
	}

	// Stopping empties it.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 1 {
		t.Fatalf("left after Close: %v", entries)
	}
}

// The store's parent directory is the agent user's alone: one that someone else
// made at its name (the name under /dev/shm is predictable), or that others may write
// to, is refused, and nothing in it is touched.
func TestEvalStore_RefusesAParentNotPrivateToTheAgent(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for name, plant := range map[string]func(dir string) error{
		"world-writable": func(dir string) error {
			if err := os.Mkdir(dir, 0o700); err != nil {
				return err
			}
			return os.Chmod(dir, 0o777)
		},
		"someone else's": func(dir string) error {
			if err := os.Mkdir(dir, 0o700); err != nil {
				return err
			}
			return os.Chown(dir, os.Getuid()+1, -1)
		},
		"a symlink": func(dir string) error { return os.Symlink(t.TempDir(), dir) },
	} {
		t.Run(name, func(t *testing.T) {
			parent := filepath.Join(t.TempDir(), "parent")
			if err := plant(parent); err != nil {
				t.Fatalf("cannot plant the directory here (the test runs as root in CI): %v", err)
			}
			victim := filepath.Join(parent, "eval-store")
			if err := os.MkdirAll(victim, 0o755); err != nil {
				t.Fatal(err)
			}
			_, err := NewEvalStore(EvalStoreConfig{Parent: parent, Name: "eval-store", Logger: log})
			if err == nil || !strings.Contains(err.Error(), "that only it may write to") {
				t.Fatalf("NewEvalStore = %v, want a refusal", err)
			}
			if !exists(victim) {
				t.Fatal("a refused parent's contents were deleted")
			}
		})
	}
}
