// Before a batch runs: each job's output paths (asked of Nix when the request did not
// give them) and GC roots for them.

package realise

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// prepare creates each job's directories, learns outputs the request did not give
// and makes the GC roots; it finishes the jobs that fail and returns the others.
func prepare(ctx context.Context, jobs []*job) []*job {
	var unknown []string
	for _, j := range jobs {
		if len(j.outs) == 0 {
			unknown = append(unknown, j.req.DrvPath)
		}
	}
	outs := map[string]map[string]string{}
	if len(unknown) > 0 {
		var err error
		if outs, err = derivationOutputs(ctx, unknown...); err != nil && len(unknown) > 1 {
			// One unknown derivation fails them all: ask one at a time.
			outs = map[string]map[string]string{}
			for _, d := range unknown {
				if o, err := derivationOutputs(ctx, d); err == nil {
					outs[d] = o[d]
				}
			}
		}
	}
	kept := jobs[:0]
	for _, j := range jobs {
		if len(j.outs) == 0 {
			j.outs = outs[j.req.DrvPath]
			if len(j.outs) == 0 {
				_, err := derivationOutputs(ctx, j.req.DrvPath) // for its message
				if err == nil {
					err = fmt.Errorf("no outputs for %s", j.req.DrvPath)
				}
				j.finish(Result{}, fmt.Errorf("%w: %w", ErrInfrastructure, err))
				continue
			}
		}
		if j.req.GCRootDir != "" {
			if err := addRoots(j.req.GCRootDir, j.outs); err != nil {
				j.finish(Result{}, fmt.Errorf("%w: %w", ErrInfrastructure, err))
				continue
			}
		}
		kept = append(kept, j)
	}
	return kept
}

// addRoots makes dir/result (and dir/result-<output> for the other outputs) indirect
// GC roots of the outputs before they are built, as nix-store --add-root --indirect
// does: a symlink to the store path, and one to that symlink in Nix's gcroots/auto.
// RemoveRoots removes both. Few system calls: on a VM each costs tens of
// microseconds, and this runs for every step (it was 2 ms a step with
// MkdirAll/Remove before each create).
func addRoots(dir string, outs map[string]string) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("create the GC root directory: %w", err)
		}
	}
	auto := autoRootsDir()
	for name, path := range outs {
		link, err := filepath.Abs(filepath.Join(dir, rootName(name)))
		if err != nil {
			return err
		}
		if err := replaceSymlink(path, link, ""); err != nil {
			return fmt.Errorf("create the GC root %s: %w", link, err)
		}
		if err := replaceSymlink(link, autoRoot(auto, link), auto); err != nil {
			return fmt.Errorf("register the GC root %s: %w", link, err)
		}
	}
	return nil
}

// RemoveRoots removes dir, made by a Request's GCRootDir, with the roots' links in
// Nix's gcroots/auto (which Nix would otherwise keep until its next collection).
func RemoveRoots(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	auto := autoRootsDir()
	for _, e := range entries {
		link, err := filepath.Abs(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		if err := os.Remove(autoRoot(auto, link)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return os.RemoveAll(dir)
}

// rootName is the root's name for an output: result, result-<output>.
func rootName(output string) string {
	if output == "out" {
		return "result"
	}
	return "result-" + output
}

func autoRootsDir() string {
	stateDir := os.Getenv("NIX_STATE_DIR")
	if stateDir == "" {
		stateDir = "/nix/var/nix"
	}
	return filepath.Join(stateDir, "gcroots", "auto")
}

// autoRoot is the name of link's entry in Nix's gcroots/auto directory.
func autoRoot(auto, link string) string {
	sum := sha256.Sum256([]byte(link))
	return filepath.Join(auto, "fc-"+hex.EncodeToString(sum[:16]))
}

// replaceSymlink makes link point to target, replacing what is there; parent, if
// set, is created when missing.
func replaceSymlink(target, link, parent string) error {
	err := os.Symlink(target, link)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fs.ErrExist):
		if err := os.Remove(link); err != nil {
			return err
		}
	case errors.Is(err, fs.ErrNotExist) && parent != "":
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return err
		}
	default:
		return err
	}
	return os.Symlink(target, link)
}

// derivationOutputs reads derivations' outputs (drv → output name → store path).
func derivationOutputs(ctx context.Context, drvs ...string) (map[string]map[string]string, error) {
	drv := strings.Join(drvs, " ")
	out, err := exec.CommandContext(ctx, "nix", append([]string{"--extra-experimental-features", "nix-command", "show-derivation",
		"--option", "substituters", ""}, drvs...)...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, fmt.Errorf("nix show-derivation %s: %w", drv, err)
	}
	var parsed map[string]struct {
		Outputs map[string]struct {
			Path string `json:"path"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(out, &parsed); err != nil {
		return nil, fmt.Errorf("parse nix show-derivation %s: %w", drv, err)
	}
	all := map[string]map[string]string{}
	for p, d := range parsed {
		outs := map[string]string{}
		for name, o := range d.Outputs {
			outs[name] = o.Path
		}
		if len(outs) == 0 {
			return nil, fmt.Errorf("nix show-derivation %s: no outputs", p)
		}
		all[p] = outs
	}
	return all, nil
}
