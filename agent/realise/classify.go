// After nix-store: each job's result from what the log said, which outputs are
// valid, and their path infos and metadata.

package realise

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/fc-ci/fc/agent/push"
	"github.com/fc-ci/fc/protocol"
)

// classify gives every job its result once nix-store has exited with code.
func classify(ctx context.Context, jobs []*job, code int, wasStopped bool, general []string, waitErr error) {
	var candidates []*job // may have succeeded: no message said otherwise
	for _, j := range jobs {
		res := Result{ExitCode: code, LogSize: j.lw.n, StartedAt: j.started}
		errs := strings.Join(append(slices.Clone(j.errors), general...), "\n")
		switch {
		case j.ctx.Err() != nil:
			j.finish(res, ctxError(j.ctx, j.req.DrvPath))
		case j.lw.err != nil:
			j.finish(res, fmt.Errorf("%w: write the build log: %w", ErrInfrastructure, j.lw.err))
		case j.lw.exceeded:
			res.Status = protocol.StepLogLimitExceeded
			res.Error = fmt.Sprintf("the log exceeded the limit of %d bytes", j.req.MaxLogSize)
			j.finish(res, nil)
		case j.status != "":
			res.Status, res.ExitCode, res.Error = j.status, j.exit, errs
			j.finish(res, nil)
		default:
			candidates = append(candidates, j)
		}
	}
	if len(candidates) == 0 {
		return
	}
	var paths []string
	for _, j := range candidates {
		paths = append(paths, orderedOutputs(j.outs)...)
	}
	invalid := map[string]bool{}
	if code != 0 || wasStopped {
		var err error
		if invalid, err = invalidPaths(ctx, paths); err != nil {
			failAll(candidates, Result{ExitCode: code}, fmt.Errorf("%w: %w", ErrInfrastructure, err))
			return
		}
	}
	var built []*job
	var base []Result
	var valid []string
	for _, j := range candidates {
		outs := orderedOutputs(j.outs)
		if slices.ContainsFunc(outs, func(p string) bool { return invalid[p] }) {
			res := Result{ExitCode: code, LogSize: j.lw.n, StartedAt: j.started}
			if wasStopped {
				j.finish(res, fmt.Errorf("%w: realise %s: stopped with the other builds of its batch (one was cancelled or exceeded its log limit)", ErrInfrastructure, j.req.DrvPath))
				continue
			}
			msg := strings.Join(append(slices.Clone(j.errors), general...), "\n")
			if msg == "" && waitErr != nil {
				msg = waitErr.Error()
			}
			j.finish(res, fmt.Errorf("%w: nix-store --realise %s exited with %d: %s", ErrInfrastructure, j.req.DrvPath, code, msg))
			continue
		}
		built = append(built, j)
		base = append(base, Result{LogSize: j.lw.n, StartedAt: j.started})
		valid = append(valid, outs...)
	}
	if len(built) == 0 {
		return
	}
	finishBuilt(ctx, built, base, valid, pathInfosRecursive)
}

// pathInfosFunc reads the infos of paths and of everything they reference, but for
// paths other than roots that skip is true of (and what only those refer to); it may
// read those too.
type pathInfosFunc func(ctx context.Context, paths []string, skip func(string) bool) ([]protocol.PathInfo, error)

// finishBuilt gives the jobs Nix built their results: base with what their outputs'
// path infos (valid: all the outputs, read at once by infos) add.
func finishBuilt(ctx context.Context, built []*job, base []Result, valid []string, infos pathInfosFunc) {
	skip := inCache(built)
	all, err := infos(ctx, valid, skip)
	if err != nil {
		failAll(built, Result{}, fmt.Errorf("%w: read the outputs' path infos: %w", ErrInfrastructure, err))
		return
	}
	byPath := make(map[string]protocol.PathInfo, len(all))
	for _, i := range all {
		byPath[i.StorePath] = i
	}
	for i, j := range built {
		res, err := finish(j.req, j.outs, byPath, skip, base[i])
		j.finish(res, err)
	}
}

// inCache is what the closures of jobs' outputs may leave out: the paths every
// job's Request.InCache holds (nothing, if one has none).
func inCache(jobs []*job) func(string) bool {
	for _, j := range jobs {
		if j.req.InCache == nil {
			return func(string) bool { return false }
		}
	}
	return func(p string) bool {
		for _, j := range jobs {
			if !j.req.InCache(p) {
				return false
			}
		}
		return true
	}
}

// finish classifies a derivation Nix built and reads its outputs' metadata.
func finish(req Request, outs map[string]string, byPath map[string]protocol.PathInfo, skip func(string) bool, res Result) (Result, error) {
	res.OutputPaths = outs
	paths := orderedOutputs(outs)
	res.Status = protocol.StepSucceeded
	for _, p := range paths {
		if _, err := os.Lstat(filepath.Join(p, "nix-support", "failed")); err == nil {
			res.Status = protocol.StepFailedWithOutput
			res.Error = "the builder marked its output as failed (nix-support/failed)"
			break
		}
	}
	infos := make([]protocol.PathInfo, 0, len(paths))
	for _, p := range paths {
		i, ok := byPath[p]
		if !ok {
			return res, fmt.Errorf("%w: nix path-info did not list the output %s", ErrInfrastructure, p)
		}
		infos = append(infos, i)
		res.OutputSize += i.NarSize
	}
	if req.MaxOutputSize > 0 && res.OutputSize > req.MaxOutputSize {
		res.Status = protocol.StepOutputLimitExceeded
		res.Error = fmt.Sprintf("the outputs are %d bytes, over the limit of %d", res.OutputSize, req.MaxOutputSize)
		return res, nil
	}
	res.Outputs = infos
	closure, err := closureOf(paths, byPath, skip)
	if err != nil {
		return res, fmt.Errorf("%w: %w", ErrInfrastructure, err)
	}
	res.Closure = closure
	meta, err := ReadMetadata(outs)
	if err != nil {
		return res, fmt.Errorf("%w: %w", ErrInfrastructure, err)
	}
	res.Products, res.Metrics, res.ReleaseName = meta.Products, meta.Metrics, meta.ReleaseName
	return res, nil
}

// closureOf is the infos of roots and everything they reference, from byPath, but
// for what skip says (see walkClosure).
func closureOf(roots []string, byPath map[string]protocol.PathInfo, skip func(string) bool) ([]protocol.PathInfo, error) {
	return walkClosure(roots, skip, func(p string) (protocol.PathInfo, error) {
		i, ok := byPath[p]
		if !ok {
			return i, fmt.Errorf("nix path-info --recursive did not list %s", p)
		}
		return i, nil
	})
}

// walkClosure is the infos of roots and everything they reference, each looked up
// once with info. A path other than a root that skip is true of is neither looked up
// nor walked through: what only it refers to is left out too.
func walkClosure(roots []string, skip func(string) bool, info func(string) (protocol.PathInfo, error)) ([]protocol.PathInfo, error) {
	root := make(map[string]bool, len(roots))
	for _, r := range roots {
		root[r] = true
	}
	seen := map[string]bool{}
	var out []protocol.PathInfo
	stack := slices.Clone(roots)
	for len(stack) > 0 {
		p := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[p] {
			continue
		}
		seen[p] = true
		if !root[p] && skip != nil && skip(p) {
			continue
		}
		i, err := info(p)
		if err != nil {
			return nil, err
		}
		out = append(out, i)
		stack = append(stack, i.References...)
	}
	return out, nil
}

// invalidPaths lists which of paths are not valid in the local store.
func invalidPaths(ctx context.Context, paths []string) (map[string]bool, error) {
	cmd := exec.CommandContext(ctx, "nix-store", append([]string{"--check-validity", "--print-invalid"}, paths...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("nix-store --check-validity: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	invalid := map[string]bool{}
	for _, p := range strings.Fields(string(out)) {
		invalid[p] = true
	}
	return invalid, nil
}

// pathInfosRecursive is `nix path-info --json --recursive` of paths: their infos and
// those of everything they reference.
func pathInfosRecursive(ctx context.Context, paths []string, _ func(string) bool) ([]protocol.PathInfo, error) {
	args := append([]string{"--extra-experimental-features", "nix-command", "path-info", "--json", "--recursive",
		"--option", "substituters", ""}, paths...)
	cmd := exec.CommandContext(ctx, "nix", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	raw, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("nix path-info: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return push.ParsePathInfo(raw)
}
