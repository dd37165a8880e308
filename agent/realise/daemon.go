// The daemon path: a batch realised on a warm `nix-daemon --stdio` connection
// (agent/nixworker) instead of a nix-store process of its own. The log, its limit,
// the early finisher and the statuses are the process path's; what differs is how
// the batch starts (an open connection, options by wopSetOptions), how it stops (the
// daemon is stopped and replaced) and where the results come from (Nix's
// BuildResults and path infos on the connection rather than exit codes and more
// processes).

package realise

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/fc-ci/fc/agent/nixworker"
	"github.com/fc-ci/fc/protocol"
)

// Connections: how a Batcher reaches Nix.
const (
	// ConnectionProcess runs nix-store --realise per batch (any Nix 2.x).
	ConnectionProcess = "process"
	// ConnectionDaemon submits batches on warm nix-daemon --stdio connections
	// (worker protocol 1.34: Nix 2.8 and later), falling back to processes where a
	// daemon cannot be started.
	ConnectionDaemon = "daemon"
)

// daemonStartTimeout bounds the check that a daemon starts, when the Batcher is made.
const daemonStartTimeout = 30 * time.Second

// newDaemonPool starts the pool of a Batcher using daemons, or says why it cannot;
// it returns the declining build hook too (see writeDeclineHook).
func newDaemonPool(cfg BatcherConfig, logger *slog.Logger) (*nixworker.Pool, string, error) {
	if cfg.DaemonCacheDir != "" {
		// The directory is the Batcher's: daemons of a previous run left theirs.
		if err := os.RemoveAll(cfg.DaemonCacheDir); err != nil {
			return nil, "", fmt.Errorf("empty %s: %w", cfg.DaemonCacheDir, err)
		}
	}
	hook, err := writeDeclineHook(cfg.DaemonCacheDir)
	if err != nil {
		return nil, "", err
	}
	pool := nixworker.NewPool(nixworker.PoolConfig{Size: cfg.MaxJobs, Command: cfg.DaemonCommand,
		CacheParent: cfg.DaemonCacheDir, StopGrace: stopGrace, Logger: logger})
	ctx, cancel := context.WithTimeout(context.Background(), daemonStartTimeout)
	defer cancel()
	proc, err := pool.Start(ctx)
	if err != nil {
		pool.Close()
		return nil, "", err
	}
	logger.Info("building on nix-daemon connections", "nix", proc.Conn.NixVersion,
		"protocol", fmt.Sprintf("%d.%d", proc.Conn.DaemonVersion>>8, proc.Conn.DaemonVersion&0xff))
	pool.Warm()
	return pool, hook, nil
}

// declineHook is a build hook that declines every build for good, at once. Nix
// 2.8 starts its build hook (`nix __build-remote`, a whole Nix process) in every
// worker, that is once per batch, even with builders = "" (the agent never hands a
// build on), and an empty build-hook is an error; this one costs a shell instead.
// It reads what Nix sends until Nix kills it, so Nix's writes never fail.
const declineHook = `#!/bin/sh
# fc-agent: builds are never handed to remote builders.
echo "# decline-permanently" >&2
command -v cat >/dev/null 2>&1 && exec cat >/dev/null
while read -r _; do :; done
`

// writeDeclineHook writes declineHook into dir (a new temporary directory if
// empty) and returns its path.
func writeDeclineHook(dir string) (string, error) {
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "fc-nix-hook-"); err != nil {
			return "", fmt.Errorf("create a directory for the build hook: %w", err)
		}
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create %s: %w", dir, err)
	}
	path := filepath.Join(dir, "decline-build-hook")
	if err := os.WriteFile(path, []byte(declineHook), 0o700); err != nil {
		return "", fmt.Errorf("write the build hook: %w", err)
	}
	return path, nil
}

// runDaemon realises jobs on a connection from the pool and finishes every job.
func (b *Batcher) runDaemon(jobs []*job, maxJobs int) {
	ctx := context.Background()
	jobs = prepare(ctx, jobs)
	if len(jobs) == 0 {
		return
	}
	var basic *nixworker.BasicDerivation
	if len(jobs) == 1 {
		if drv, why := b.basicFor(jobs[0].ctx, jobs[0]); why == nil {
			basic = &drv
		} else {
			b.logger.Debug("built by BuildPaths", "drv", jobs[0].req.DrvPath, "why", why)
		}
	}
	proc, err := b.daemonFor(ctx, jobs[0].req)
	if err != nil {
		b.logger.Warn("no nix daemon connection; this batch runs nix-store instead", "err", err)
		b.processes.Add(1)
		runProcess(jobs, maxJobs)
		return
	}
	stop, unwatch := watchJobs(jobs)
	defer unwatch()
	d := newDemux(jobs)
	stopEarly := startEarly(ctx, jobs, d, daemonQueries(b.side))

	lg := &daemonLog{d: d}
	paths := make([]string, len(jobs))
	for i, j := range jobs {
		paths[i] = j.req.DrvPath + "!" + strings.Join(outputNames(j.outs), ",")
	}
	type outcome struct {
		res []nixworker.BuildResult
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		opts := daemonOptions(jobs[0].req, maxJobs, b.buildHook)
		// A derivation sent whole has its inputs here, and its outputs are not in the
		// coordinator's cache (or the step would not have been assigned): Nix need
		// not ask the cache about them.
		opts.NoSubstitutes = basic != nil
		if err := proc.Conn.SetOptions(opts, lg); err != nil {
			done <- outcome{err: fmt.Errorf("set the options: %w", err)}
			return
		}
		if basic != nil {
			b.basicBuilds.Add(1)
			r, err := proc.Conn.BuildDerivation(jobs[0].req.DrvPath, *basic, lg)
			done <- outcome{[]nixworker.BuildResult{r}, err}
			return
		}
		res, err := proc.Conn.BuildPaths(paths, lg)
		done <- outcome{res, err}
	}()
	var out outcome
	select {
	case out = <-done:
	case <-stop:
		proc.Stop(stopGrace) // the builds with it; BuildPaths then fails
		out = <-done
	}
	stopEarly()
	wasStopped := closed(stop)
	if out.err != nil && !wasStopped {
		out.err = fmt.Errorf("the nix daemon connection failed: %w", out.err)
		if e := proc.ExitError(); e != nil {
			out.err = fmt.Errorf("%w (%w)", out.err, e)
		}
		b.logger.Warn("nix daemon connection failed; its batch is retried and the daemon replaced", "pid", proc.Pid(), "err", out.err)
	}
	b.classifyDaemon(ctx, unhanded(jobs), out.res, out.err, wasStopped, lg.general, proc)
	if wasStopped || out.err != nil || proc.Conn.Err() != nil {
		b.pool.Discard(proc)
	} else {
		b.pool.Put(proc)
	}
}

// daemonFor takes a daemon from the pool whose sticky options (those Nix keeps when
// a later batch does not set them) suit req.
func (b *Batcher) daemonFor(ctx context.Context, req Request) (*nixworker.Process, error) {
	key := stickyKey(req)
	for {
		proc, err := b.pool.Get(ctx)
		if err != nil {
			return nil, err
		}
		if proc.Key == "" || proc.Key == key {
			proc.Key = key
			return proc, nil
		}
		b.pool.Discard(proc) // a fresh one (Key "") comes at the latest once none is idle
	}
}

// stickyKey is the options a daemon keeps from its first batch: the substituters
// (Nix opens them once per process and keeps them, whatever is set later) and those
// a batch sets only when given, as nix-store's command line does.
func stickyKey(req Request) string {
	k, _ := json.Marshal([]any{req.CacheURL, req.Substituters, req.NetrcFile, req.TrustedKeys, req.Features})
	return string(k)
}

// freshLookups are the settings for asking substituters (space-separated URLs) on a
// daemon connection: a nix-store process starts with an empty cache of narinfo
// lookups, but a daemon lives on, and an answer it remembered (a path missing a
// moment ago) may be wrong now.
func freshLookups(substituters string) [][2]string {
	return [][2]string{
		{"substituters", substituters},
		{"narinfo-cache-negative-ttl", "0"},
		{"narinfo-cache-positive-ttl", "0"},
	}
}

// daemonOptions are Args's options, for wopSetOptions, with hook as Nix's build
// hook when set.
func daemonOptions(req Request, maxJobs int, hook string) nixworker.Options {
	subs := make([]string, 0, 1+len(req.Substituters))
	if req.CacheURL != "" {
		subs = append(subs, req.CacheURL)
	}
	subs = append(subs, req.Substituters...)
	timeout := strconv.FormatInt(int64(req.Timeout/time.Second), 10)
	if req.Timeout > 0 && req.Timeout < time.Second {
		timeout = "1"
	}
	o := nixworker.Options{KeepGoing: true, MaxJobs: maxJobs, MaxSilent: req.MaxSilent, BuildCores: runtime.NumCPU(),
		Overrides: append(freshLookups(strings.Join(subs, " ")), [2]string{"builders", ""}, [2]string{"timeout", timeout})}
	if req.MaxSilent > 0 && req.MaxSilent < time.Second {
		o.MaxSilent = time.Second
	}
	if hook != "" {
		o.Overrides = append(o.Overrides, [2]string{"build-hook", hook})
	}
	if req.NetrcFile != "" {
		o.Overrides = append(o.Overrides, [2]string{"netrc-file", req.NetrcFile})
	}
	if len(req.TrustedKeys) > 0 {
		o.Overrides = append(o.Overrides, [2]string{"trusted-public-keys", strings.Join(req.TrustedKeys, " ")})
	}
	if len(req.Features) > 0 {
		o.Overrides = append(o.Overrides, [2]string{"system-features", strings.Join(req.Features, " ")})
	}
	return o
}

// outputNames lists outs' names in orderedOutputs' order.
func outputNames(outs map[string]string) []string {
	names := make([]string, 0, len(outs))
	for n := range outs {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// daemonLog turns the daemon's log into the records of nix-store's internal-json
// log, for the demultiplexer.
type daemonLog struct {
	d       *demux
	general []string
}

func (l *daemonLog) Message(text string) {
	// The connection's verbosity is errors only.
	if g, ok := l.d.record(record{Action: "msg", Level: lvlError, Msg: text}); ok {
		l.general = append(l.general, g)
	}
}

func (l *daemonLog) StartActivity(id, _, typ uint64, _ string, fields []any, _ uint64) {
	l.d.record(record{Action: "start", ID: id, Type: int(typ), Fields: rawFields(fields)})
}

func (l *daemonLog) StopActivity(uint64) {}

func (l *daemonLog) Result(id, typ uint64, fields []any) {
	// A build's log lines, most of what the daemon sends, skip the records' JSON.
	if typ == resBuildLogLine || typ == resPostBuildLogLine {
		if len(fields) == 0 {
			return
		}
		if text, ok := fields[0].(string); ok {
			l.d.logLine(id, text)
			return
		}
	}
	l.d.record(record{Action: "result", ID: id, Type: int(typ), Fields: rawFields(fields)})
}

func rawFields(fields []any) []json.RawMessage {
	out := make([]json.RawMessage, len(fields))
	for i, f := range fields {
		out[i], _ = json.Marshal(f)
	}
	return out
}

// lastLines starts the end Nix gives a builder's failure when its logger is not
// verbose: the lines are in the log already.
const lastLines = "\nlast "

// errorText is a BuildResult's error as nix-store prints it.
func errorText(msg string) string {
	msg = ansi.ReplaceAllString(msg, "")
	if i := strings.Index(msg, ";"+lastLines); i >= 0 {
		msg = msg[:i]
	}
	return "error: " + strings.TrimPrefix(strings.TrimSpace(msg), "error: ")
}

// classifyDaemon gives jobs their results from the daemon's (res), or, when the
// connection failed (err) or the batch was stopped, from which outputs are valid.
func (b *Batcher) classifyDaemon(ctx context.Context, jobs []*job, res []nixworker.BuildResult, err error, wasStopped bool, general []string, proc *nixworker.Process) {
	byPath := map[string]nixworker.BuildResult{}
	for _, r := range res {
		byPath[strings.SplitN(r.Path, "!", 2)[0]] = r
	}
	// Failures' messages go through the demultiplexer as nix-store's would.
	for _, j := range jobs {
		if r, ok := byPath[j.req.DrvPath]; ok && !r.Status.Success() && r.ErrorMsg != "" {
			lg := &daemonLog{d: newDemux([]*job{j})}
			lg.Message(errorText(r.ErrorMsg))
		}
	}
	if err != nil || wasStopped {
		// The outputs that are valid were built: the process path's classification.
		classify(ctx, jobs, 1, wasStopped, appendErr(general, err), nil)
		return
	}
	var built []*job
	var base []Result
	var valid []string
	for _, j := range jobs {
		r, ok := byPath[j.req.DrvPath]
		res := Result{ExitCode: 1, LogSize: j.lw.n, StartedAt: j.started}
		msgs := strings.Join(append(slices.Clone(j.errors), general...), "\n")
		switch {
		case j.ctx.Err() != nil:
			j.finish(res, ctxError(j.ctx, j.req.DrvPath))
		case j.lw.err != nil:
			j.finish(res, fmt.Errorf("%w: write the build log: %w", ErrInfrastructure, j.lw.err))
		case j.lw.exceeded || (ok && r.Status == nixworker.LogLimitExceeded):
			res.Status = protocol.StepLogLimitExceeded
			res.Error = fmt.Sprintf("the log exceeded the limit of %d bytes", j.req.MaxLogSize)
			j.finish(res, nil)
		case !ok:
			j.finish(res, fmt.Errorf("%w: the nix daemon gave no result for %s", ErrInfrastructure, j.req.DrvPath))
		case r.Status.Success():
			built = append(built, j)
			base = append(base, Result{LogSize: j.lw.n, StartedAt: j.started})
			valid = append(valid, orderedOutputs(j.outs)...)
		case j.status != "":
			res.Status, res.ExitCode, res.Error = j.status, j.exit, msgs
			j.finish(res, nil)
		case r.Status == nixworker.TimedOut || r.Status == nixworker.PermanentFailure || r.Status == nixworker.NotDeterministic:
			res.Status, res.ExitCode, res.Error = protocol.StepFailed, 100, msgs
			if r.Status == nixworker.TimedOut {
				res.Status, res.ExitCode = protocol.StepTimedOut, 101
			} else if r.Status == nixworker.NotDeterministic {
				res.ExitCode = 104
			}
			j.finish(res, nil)
		default:
			// Rejected inputs (a missing feature), failed dependencies, transient
			// failures: not the derivation's fault, as on the process path.
			j.finish(res, fmt.Errorf("%w: realise %s: %s: %s", ErrInfrastructure, j.req.DrvPath, r.Status, msgs))
		}
	}
	if len(built) > 0 {
		finishBuilt(ctx, built, base, valid, connPathInfos(proc.Conn))
	}
}

func appendErr(general []string, err error) []string {
	if err == nil {
		return general
	}
	return append(slices.Clone(general), err.Error())
}

// connPathInfos reads path infos on the connection: the paths' and, recursively,
// those of what they reference (nix path-info --recursive, without a process).
func connPathInfos(c *nixworker.Conn) pathInfosFunc {
	return func(_ context.Context, paths []string, skip func(string) bool) ([]protocol.PathInfo, error) {
		return walkClosure(paths, skip, func(p string) (protocol.PathInfo, error) {
			info, err := c.QueryPathInfo(p)
			if err != nil {
				return protocol.PathInfo{}, fmt.Errorf("query the path info of %s: %w", p, err)
			}
			if info == nil {
				return protocol.PathInfo{}, fmt.Errorf("path %s is not valid in the local store", p)
			}
			h, err := nixhash.ParseAny("sha256:"+info.NarHash, nil)
			if err != nil {
				return protocol.PathInfo{}, fmt.Errorf("%s: nar hash %q: %w", p, info.NarHash, err)
			}
			return protocol.PathInfo{StorePath: p, NarHash: h.Format(nixhash.NixBase32, true),
				NarSize: int64(info.NarSize), References: info.References, Deriver: info.Deriver, CA: info.CA}, nil
		})
	}
}
