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
// Removing dir removes the roots (Nix drops the dangling auto link).
func addRoots(dir string, outs map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create the GC root directory: %w", err)
	}
	stateDir := os.Getenv("NIX_STATE_DIR")
	if stateDir == "" {
		stateDir = "/nix/var/nix"
	}
	auto := filepath.Join(stateDir, "gcroots", "auto")
	if err := os.MkdirAll(auto, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", auto, err)
	}
	for name, path := range outs {
		link := filepath.Join(dir, "result")
		if name != "out" {
			link += "-" + name
		}
		abs, err := filepath.Abs(link)
		if err != nil {
			return err
		}
		_ = os.Remove(abs)
		if err := os.Symlink(path, abs); err != nil {
			return fmt.Errorf("create the GC root %s: %w", abs, err)
		}
		sum := sha256.Sum256([]byte(abs))
		autoLink := filepath.Join(auto, "fc-"+hex.EncodeToString(sum[:16]))
		_ = os.Remove(autoLink)
		if err := os.Symlink(abs, autoLink); err != nil {
			return fmt.Errorf("register the GC root %s: %w", abs, err)
		}
	}
	return nil
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
