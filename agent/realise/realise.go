// Package realise realises derivations on this agent the way build steps need them:
// nix-store --realise (several runnable steps share one process, see Batcher) with
// the coordinator's cache as the only substituter (plus the step's upstreams), the
// step's limits, GC roots for the outputs, the builder's log taken live from Nix's
// structured output, and the outcome classified into a step status (or an
// infrastructure failure, which is retried elsewhere rather than reported as the
// derivation's fault). After a success it reads the outputs' Hydra metadata: build
// products, metrics and release name. It only runs Nix: agent/work.StepRunner takes a
// step from the coordinator, streams its log and reports it; which step runs where is
// decided on the coordinator by coordinator/buildqueue.
//
// A Batcher reaches Nix one of two ways (BatcherConfig.Connection): a nix-store
// process per batch (any Nix 2.x), or a warm `nix-daemon --stdio` connection per batch
// from a pool started ahead (agent/nixworker; worker protocol 1.34, Nix 2.8 and
// later), so a step does not wait for a Nix process to start. Both share the log
// parsing, the limits, the early finisher and the statuses.
//
// Files by job: realise.go (the API: Request, Result, Realise), batcher.go (gathering
// requests into batches), job.go (one request in a batch), prepare.go (outputs and
// GC roots before a batch), process.go (the nix-store process), daemon.go (a batch on
// a daemon connection), nixlog.go (Nix's log, split per derivation), early.go
// (handing on derivations built before their batch ends), classify.go (results after
// nix-store), logwriter.go (the log limit), metadata.go (Hydra's nix-support files).
package realise

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sort"
	"strings"
	"time"

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
	// NetrcFile, if set, replaces Nix's netrc-file: the credentials Nix presents to
	// CacheURL (a private cache) and the upstreams. One agent uses one for every
	// request, so it does not part batches.
	NetrcFile string
	// TrustedKeys replace Nix's trusted-public-keys when not empty.
	TrustedKeys []string
	// Features replace Nix's system-features when not empty: a step is built with
	// exactly the features the agent advertised.
	Features []string
	// InCache, if set, says which store paths the coordinator's cache is known to
	// hold (push.Cached): Result.Closure leaves them out, and with them what only they
	// refer to. Those of the requests in one batch must agree (one agent sets one).
	InCache func(storePath string) bool
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
	// empty: inherited. A batch uses its first request's, creating it. (A daemon
	// connection has its daemon's own, see BatcherConfig.DaemonCacheDir.)
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
	// Closure is the path infos of the outputs' closure (the outputs and everything
	// they reference, less what Request.InCache says the cache holds and what only
	// that refers to) when Outputs is set: what an upload offers.
	Closure []protocol.PathInfo
	// StartedAt is when Nix began building the derivation (zero if it never did, e.g.
	// its outputs were substituted).
	StartedAt time.Time
}

// Realise builds req.DrvPath in a process of its own. Build failures are a Result
// with their status and a nil error; an infrastructure failure is an error wrapping
// ErrInfrastructure (with the Result filled as far as it got); cancelling ctx stops
// Nix and its builder and returns ctx.Err().
func Realise(ctx context.Context, req Request) (Result, error) {
	j, err := newJob(ctx, req)
	if err != nil {
		return Result{}, err
	}
	runBatch([]*job{j}, 1)
	return j.res, j.err
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
