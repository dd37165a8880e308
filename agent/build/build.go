// Package build realises one derivation the way a build step needs it: nix-store
// --realise with the coordinator's cache as the only substituter (plus the step's
// upstreams), the step's limits, GC roots for the outputs, the builder's log taken
// live from Nix's structured output, and the outcome classified into a step status
// (or an infrastructure failure, which is retried elsewhere rather than reported as
// the derivation's fault). After a success it reads the outputs' Hydra metadata:
// build products, metrics and release name.
package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fc-ci/fc/agent/push"
	"github.com/fc-ci/fc/protocol"
)

// Request is one derivation to realise.
type Request struct {
	DrvPath string
	// Outputs maps output names to store paths (protocol.StepTask.Outputs); empty: read
	// from the derivation after the build.
	Outputs map[string]string
	// CacheURL is the coordinator's binary cache; Substituters are upstreams after it.
	// Nothing else is ever asked, whatever nix.conf says.
	CacheURL     string
	Substituters []string
	// TrustedKeys replace Nix's trusted-public-keys when not empty.
	TrustedKeys []string
	// Features replace Nix's system-features when not empty: a step is built with
	// exactly the features the agent advertised.
	Features []string
	// Limits; zero means none.
	Timeout       time.Duration
	MaxSilent     time.Duration
	MaxLogSize    int64
	MaxOutputSize int64
	// GCRootDir, if set, is created and holds indirect GC roots for the outputs, so a
	// concurrent garbage collection cannot delete them before they are uploaded. The
	// caller removes the directory when it no longer needs the outputs.
	GCRootDir string
	// CacheHome is XDG_CACHE_HOME for Nix (where it remembers binary cache misses);
	// empty: inherited.
	CacheHome string
	// Log receives the build log: the builders' lines and Nix's error messages, each
	// ending in a newline. It is written from one goroutine at a time.
	Log io.Writer
}

// Result is what became of a realisation.
type Result struct {
	// Status is one of protocol.Step*; empty together with an ErrInfrastructure error.
	Status   string
	ExitCode int
	// Error is Nix's error messages (or the limit that was hit), for the report.
	Error string
	// OutputPaths maps output names to store paths.
	OutputPaths map[string]string
	// Outputs are the path infos of the outputs after a success or a failure with
	// output; nil when the outputs exceeded MaxOutputSize.
	Outputs    []protocol.PathInfo
	OutputSize int64 // sum of the outputs' NAR sizes
	Products   []protocol.BuildProduct
	Metrics    []protocol.BuildMetric
	// ReleaseName is nix-support/hydra-release-name, if an output has one.
	ReleaseName string
	// LogSize is how many bytes went to Request.Log.
	LogSize int64
}

// ErrInfrastructure marks failures that are not the derivation's: Nix missing, a
// cache that cannot be reached, the wrong system, the log or disk failing. Such a
// step is retried, never reported as failed.
var ErrInfrastructure = errors.New("infrastructure failure")

// StoreDir is the Nix store; build products must lie inside it.
const StoreDir = "/nix/store"

// Grace periods: how long Nix gets to stop its builder after SIGINT before its
// whole process group is killed, and how long the log is drained after Nix exits
// (a process that inherited its stderr must not keep the step open).
const (
	stopGrace  = 3 * time.Second
	drainGrace = time.Second
)

// Args is the nix-store command line for req (without the program name).
func Args(req Request) []string {
	subs := make([]string, 0, 1+len(req.Substituters))
	if req.CacheURL != "" {
		subs = append(subs, req.CacheURL)
	}
	subs = append(subs, req.Substituters...)
	args := []string{"--log-format", "internal-json", "--realise", req.DrvPath,
		"--option", "substituters", strings.Join(subs, " "),
		"--option", "narinfo-cache-negative-ttl", "0",
		// The agent is the builder: never hand the step to nix.conf's remote builders.
		"--option", "builders", "",
		"--max-jobs", "1",
	}
	if len(req.TrustedKeys) > 0 {
		args = append(args, "--option", "trusted-public-keys", strings.Join(req.TrustedKeys, " "))
	}
	if len(req.Features) > 0 {
		args = append(args, "--option", "system-features", strings.Join(req.Features, " "))
	}
	if req.Timeout > 0 {
		args = append(args, "--timeout", strconv.FormatInt(int64(max(req.Timeout/time.Second, 1)), 10))
	}
	if req.MaxSilent > 0 {
		args = append(args, "--option", "max-silent-time", strconv.FormatInt(int64(max(req.MaxSilent/time.Second, 1)), 10))
	}
	if req.GCRootDir != "" {
		args = append(args, "--add-root", filepath.Join(req.GCRootDir, "result"), "--indirect")
	}
	return args
}

// Realise builds req.DrvPath. Build failures are a Result with their status and a
// nil error; an infrastructure failure is an error wrapping ErrInfrastructure (with
// the Result filled as far as it got); cancelling ctx stops Nix and its builder and
// returns ctx.Err().
func Realise(ctx context.Context, req Request) (Result, error) {
	if req.DrvPath == "" {
		return Result{}, errors.New("realise: no derivation given")
	}
	if req.Log == nil {
		req.Log = io.Discard
	}
	if req.GCRootDir != "" {
		if err := os.MkdirAll(req.GCRootDir, 0o755); err != nil {
			return Result{}, fmt.Errorf("%w: create the GC root directory: %w", ErrInfrastructure, err)
		}
	}
	if req.CacheHome != "" {
		if err := os.MkdirAll(req.CacheHome, 0o700); err != nil {
			return Result{}, fmt.Errorf("%w: create the Nix cache directory: %w", ErrInfrastructure, err)
		}
	}
	cmd := exec.Command("nix-store", Args(req)...)
	cmd.Env = os.Environ()
	if req.CacheHome != "" {
		cmd.Env = append(cmd.Env, "XDG_CACHE_HOME="+req.CacheHome)
	}
	// Its own process group, so stopping it reaches every process Nix started; and
	// SIGINT if the agent dies (even by SIGKILL), so Nix stops its builder rather than
	// finishing a step nobody will report. (Pdeathsig follows the forking thread; Go
	// ends threads only behind LockOSThread, which the agent does not use.)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGINT}
	// Our own pipe rather than an io.Writer: exec would wait for a copy goroutine that
	// a grandchild holding the pipe could keep open forever.
	pr, pw, err := os.Pipe()
	if err != nil {
		return Result{}, fmt.Errorf("%w: create the log pipe: %w", ErrInfrastructure, err)
	}
	defer pr.Close()
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		pw.Close()
		return Result{}, fmt.Errorf("%w: start nix-store: %w", ErrInfrastructure, err)
	}
	pw.Close()

	lw := newLimitWriter(req.Log, req.MaxLogSize)
	parsed := make(chan parseResult, 1)
	go func() { parsed <- parseLog(pr, lw) }()

	exited := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-exited:
			return
		case <-ctx.Done():
		case <-lw.stop:
		}
		stopGroup(cmd.Process.Pid, exited)
	}()
	waitErr := cmd.Wait()
	close(exited)
	<-stopped

	var pres parseResult
	select {
	case pres = <-parsed:
	case <-time.After(drainGrace):
		_ = pr.SetReadDeadline(time.Now())
		pres = <-parsed
	}

	res := Result{ExitCode: cmd.ProcessState.ExitCode(), LogSize: lw.n}
	nixErr := strings.Join(pres.errors, "\n")
	switch code := res.ExitCode; {
	case ctx.Err() != nil:
		if errors.Is(ctx.Err(), context.Canceled) {
			return res, ctx.Err()
		}
		return res, fmt.Errorf("%w: realise %s: %w", ErrInfrastructure, req.DrvPath, ctx.Err())
	case lw.err != nil:
		return res, fmt.Errorf("%w: write the build log: %w", ErrInfrastructure, lw.err)
	case lw.exceeded:
		res.Status = protocol.StepLogLimitExceeded
		res.Error = fmt.Sprintf("the log exceeded the limit of %d bytes", req.MaxLogSize)
		return res, nil
	case code == 0:
		return finish(ctx, req, res)
	case code&0xf0 == 0x60 && code&0x04 != 0:
		// Nix's failure bits (100 failed, 101 timed out, 102 hash mismatch, 104 not
		// deterministic), combined as bits.
		res.Status = protocol.StepFailed
		if code&0x01 != 0 {
			res.Status = protocol.StepTimedOut
		}
		res.Error = nixErr
		return res, nil
	default:
		msg := nixErr
		if msg == "" && waitErr != nil {
			msg = waitErr.Error()
		}
		return res, fmt.Errorf("%w: nix-store --realise %s exited with %d: %s", ErrInfrastructure, req.DrvPath, code, msg)
	}
}

// stopGroup asks Nix to stop (SIGINT: it kills its builder, which runs in a session of
// its own that a signal to Nix's group does not reach), then kills the group if Nix
// has not exited within stopGrace.
func stopGroup(pid int, exited <-chan struct{}) {
	_ = syscall.Kill(-pid, syscall.SIGINT)
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-exited:
	case <-t.C:
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// finish classifies a realisation Nix completed and reads the outputs' metadata.
func finish(ctx context.Context, req Request, res Result) (Result, error) {
	outs := req.Outputs
	if len(outs) == 0 {
		var err error
		if outs, err = derivationOutputs(ctx, req.DrvPath); err != nil {
			return res, fmt.Errorf("%w: %w", ErrInfrastructure, err)
		}
	}
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
	infos, err := push.PathInfos(ctx, paths)
	if err != nil {
		return res, fmt.Errorf("%w: read the outputs' path infos: %w", ErrInfrastructure, err)
	}
	for _, i := range infos {
		res.OutputSize += i.NarSize
	}
	if req.MaxOutputSize > 0 && res.OutputSize > req.MaxOutputSize {
		res.Status = protocol.StepOutputLimitExceeded
		res.Error = fmt.Sprintf("the outputs are %d bytes, over the limit of %d", res.OutputSize, req.MaxOutputSize)
		return res, nil
	}
	res.Outputs = infos
	meta, err := ReadMetadata(paths)
	if err != nil {
		return res, fmt.Errorf("%w: %w", ErrInfrastructure, err)
	}
	res.Products, res.Metrics, res.ReleaseName = meta.Products, meta.Metrics, meta.ReleaseName
	return res, nil
}

// orderedOutputs lists output paths with "out" first, then by name.
func orderedOutputs(outs map[string]string) []string {
	names := make([]string, 0, len(outs))
	for n := range outs {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		if (names[i] == "out") != (names[j] == "out") {
			return names[i] == "out"
		}
		return names[i] < names[j]
	})
	paths := make([]string, len(names))
	for i, n := range names {
		paths[i] = outs[n]
	}
	return paths
}

// CollectGarbage runs nix-store --gc: it deletes every store path no GC root holds
// (running and unreported steps hold theirs).
func CollectGarbage(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "nix-store", "--gc", "--option", "substituters", "")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nix-store --gc: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
