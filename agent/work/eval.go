package work

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"time"

	"github.com/fc-ci/fc/agent/evaluator"
	"github.com/fc-ci/fc/agent/push"
	"github.com/fc-ci/fc/protocol"
)

// EvalRunner evaluates jobsets on this agent.
type EvalRunner struct {
	// StateDir holds the repository mirrors (StateDir/git).
	StateDir string
	// AllowedInputPaths are the directories path inputs may name
	// (agent.allowed_input_paths); Protected are paths none may reach, whatever
	// AllowedInputPaths says (the state directory and key, see config.InputProtected).
	AllowedInputPaths []string
	Protected         []string
	// Store, when set, is where evaluations write .drv files (see EvalStore);
	// nil: Nix's own store. Jobsets that allow import-from-derivation always use
	// Nix's own store, where the imported derivations are built.
	Store  *EvalStore
	Logger *slog.Logger
}

// Close empties the eval store (the daemon calls it when no work is left).
func (e *EvalRunner) Close() error {
	if e.Store == nil {
		return nil
	}
	return e.Store.Close()
}

// batch is how many jobs, errors or nodes go in one report frame.
const batch = 1000

// Run implements daemon.Executor.
func (e *EvalRunner) Run(ctx context.Context, a protocol.Assign, link Link) error {
	if a.Eval == nil {
		return errors.New("evaluation assignment without a task")
	}
	t := *a.Eval
	log := e.Logger.With("eval", t.EvaluationID)
	if t.TimeoutSecs > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(t.TimeoutSecs)*time.Second)
		defer cancel()
	}
	rep := protocol.EvalReport{Work: a.Work}
	root := ""
	if e.Store != nil && !t.AllowIFD {
		release, err := e.Store.acquire(ctx)
		switch {
		case err == nil:
			defer release()
			root = e.Store.Dir()
		case errors.Is(ctx.Err(), context.Canceled):
			return ctx.Err() // cancelled or lease lost: nothing to report
		default:
			// The evaluation need not fail for it: Nix's own store does the same, slower.
			log.Warn("eval store unusable; evaluating in Nix's store", "err", err)
		}
	}
	// The report goes to the coordinator while the evaluation runs, where it can.
	es := openEvalStream(ctx, link, a.Work, log)
	res, nodes, err := e.evaluate(ctx, t, root, &rep, link, es)
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
		if es != nil {
			es.close()
		}
		return ctx.Err() // cancelled or lease lost: nothing to report
	}
	if err != nil {
		rep.Failed, rep.Error = true, err.Error()
		// The expression itself failing is final; anything else (git unreachable, the
		// cache upload broke) is an infrastructure failure, retried under the lease rules.
		rep.Retry = !errors.Is(err, evaluator.ErrEvalFailed)
		log.Warn("evaluation failed", "err", err, "retry", rep.Retry)
	}
	if es != nil {
		if es.healthy() {
			return es.finish(rep, res, nodes)
		}
		es.close() // broke during the evaluation: the coordinator stored none of it
	}
	return report(ctx, link, rep, res, nodes)
}

// evaluate evaluates t, writing .drv files to the store whose root directory is
// root ("" for Nix's own store).
func (e *EvalRunner) evaluate(ctx context.Context, t protocol.EvalTask, root string, rep *protocol.EvalReport, link Link,
	es *evalStream) (evaluator.Result, []evaluator.Node, error) {
	start := time.Now()
	dir, cleanup, err := evaluator.Checkout(ctx, filepath.Join(e.StateDir, "git"), t.RepoURL, t.Revision,
		evaluator.Credentials{SSHKey: t.SSHKey, HTTPSToken: t.HTTPSToken})
	rep.CheckoutSeconds = time.Since(start).Seconds()
	if err != nil {
		return evaluator.Result{}, nil, fmt.Errorf("checkout %s at %s: %w", t.RepoURL, t.Revision, err)
	}
	defer cleanup()
	inputs := make([]evaluator.Input, len(t.Inputs))
	for i, in := range t.Inputs {
		inputs[i] = evaluator.Input{Name: in.Name, Type: in.Type, Value: in.Value}
	}
	// The graph is walked and the .drv closure uploaded while the evaluation runs,
	// from the drv paths the evaluator reports as it goes.
	start = time.Now()
	pipe := startDrvPipeline(ctx, link, root, es)
	var onJob func(evaluator.Job)
	if es != nil {
		onJob = pipe.addJob
	}
	res, err := evaluator.Evaluate(ctx, dir, evaluator.Request{RepoURL: t.RepoURL, Revision: t.Revision, Branch: t.Branch,
		FlakeMode: t.FlakeMode, Expression: t.Expression, Inputs: inputs, MaxMemoryMB: t.MaxMemoryMB,
		// More workers than CPUs only compete for them (and each holds its own heap).
		Workers:      min(t.Workers, runtime.NumCPU()),
		RestrictEval: t.RestrictEval, AllowIFD: t.AllowIFD, SSHKey: t.SSHKey, HTTPSToken: t.HTTPSToken,
		EvalStore: root, CacheDir: filepath.Join(e.StateDir, "git"), OnDrv: pipe.add, OnJob: onJob,
		AllowedInputPaths: e.AllowedInputPaths, ProtectedPaths: append([]string{e.StateDir}, e.Protected...)})
	if err != nil {
		pipe.stop()
		rep.EvalSeconds = time.Since(start).Seconds()
		return evaluator.Result{}, nil, err
	}
	evaluated := time.Now()
	nodes, up, err := pipe.finish(res.Jobs)
	rep.EvalSeconds = time.Since(start).Seconds()
	if err != nil {
		return evaluator.Result{}, nil, err
	}
	e.Logger.Info("evaluated", "eval", t.EvaluationID, "jobs", len(res.Jobs), "nodes", len(nodes),
		"evaluate_s", evaluated.Sub(start).Seconds(), "after_evaluate_s", time.Since(evaluated).Seconds(),
		"graph_s", up.graph.Seconds(), "closure_s", up.closure.Seconds(), "upload_s", up.upload.Seconds(),
		"stream_s", up.stream.Seconds(), "streamed", es != nil,
		"batches", up.batches, "uploaded", up.sent, "eval_store", root)
	return res, nodes, nil
}

func present(ctx context.Context, link Link, paths []string) (map[string]bool, error) {
	st, err := link.OpenStream(ctx, protocol.StreamPresent)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if err := protocol.WriteFrame(st, protocol.PresentRequest{Paths: paths}); err != nil {
		return nil, err
	}
	var ans protocol.PresentAnswer
	if err := protocol.ReadFrame(st, &ans); err != nil {
		return nil, err
	}
	if ans.Error != "" {
		return nil, errors.New(ans.Error)
	}
	out := make(map[string]bool, len(ans.Present))
	for _, p := range ans.Present {
		out[p] = true
	}
	return out, nil
}

// streamOpener adapts the daemon's link to push.StreamOpener.
type streamOpener struct {
	ctx  context.Context
	link Link
}

func (s streamOpener) OpenStream(kind string) (io.ReadWriteCloser, error) {
	return s.link.OpenStream(s.ctx, kind)
}

// drvUpload is what walking the graph and pushing the .drv closure took.
type drvUpload struct {
	graph, closure, upload time.Duration // walking the graph; finding the closure's path infos; sending it
	stream                 time.Duration // sending jobs and nodes on the report stream
	batches, sent          int
}

// drvPipeline follows an evaluation as it runs: the drv paths the evaluator reports
// are walked into the derivation graph, and the .drv closure of the nodes (what must
// be built: every agent must be able to realise any step from an empty store) is
// uploaded to the coordinator's cache, a batch at a time, while the evaluation goes
// on. Evaluating writes the .drv files and mostly waits on the store, so this work
// fits beside it rather than after it.
type drvPipeline struct {
	ctx    context.Context
	cancel context.CancelFunc
	link   Link
	root   string // the store's root directory ("" for Nix's own)
	g      *evaluator.Grapher
	seen   map[string]bool // paths already offered to the cache
	stream *evalStream     // nil: the report goes at the end
	wake   chan struct{}
	done   chan struct{}

	mu      sync.Mutex
	pending []string
	jobs    []evaluator.Job // to stream once their derivations are walked
	closed  bool

	err   error // set by the pipeline's goroutine before done closes
	stats drvUpload
}

// gatherWindow is how long the pipeline waits for a batch to fill before walking it:
// each batch costs a few round trips to the coordinator.
const (
	gatherWindow = 250 * time.Millisecond
	gatherSize   = 2000
)

func startDrvPipeline(ctx context.Context, link Link, root string, stream *evalStream) *drvPipeline {
	ctx, cancel := context.WithCancel(ctx)
	p := &drvPipeline{ctx: ctx, cancel: cancel, link: link, root: root, seen: map[string]bool{}, stream: stream,
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	p.g = evaluator.NewGrapher(root, func(ctx context.Context, paths []string) (map[string]bool, error) {
		return present(ctx, link, paths)
	})
	go p.run()
	return p
}

// add takes a drv path from the evaluator (any goroutine).
func (p *drvPipeline) add(drv string) {
	p.mu.Lock()
	p.pending = append(p.pending, drv)
	n := len(p.pending)
	p.mu.Unlock()
	if n == 1 || n == gatherSize {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// addJob takes a job to stream from the evaluator (any goroutine).
func (p *drvPipeline) addJob(j evaluator.Job) {
	p.mu.Lock()
	p.jobs = append(p.jobs, j)
	p.mu.Unlock()
}

// finish adds the result's jobs (those not reported yet), waits for the pipeline to
// walk and upload everything, and returns the graph.
func (p *drvPipeline) finish(jobs []evaluator.Job) ([]evaluator.Node, drvUpload, error) {
	p.mu.Lock()
	for _, j := range jobs {
		p.pending = append(p.pending, j.DrvPath)
	}
	p.closed = true
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
	<-p.done
	p.cancel()
	if p.err != nil {
		return nil, p.stats, p.err
	}
	drvs := make([]string, len(jobs))
	for i, j := range jobs {
		drvs[i] = j.DrvPath
	}
	return p.g.NodesFrom(drvs), p.stats, nil
}

// stop abandons the pipeline (the evaluation failed).
func (p *drvPipeline) stop() {
	p.cancel()
	<-p.done
}

func (p *drvPipeline) run() {
	defer close(p.done)
	for {
		// Wait for work, then let the batch fill for up to gatherWindow: each batch
		// costs a few round trips and a commit on the coordinator. A full batch or
		// finish cuts the wait short.
		select {
		case <-p.wake:
		case <-p.ctx.Done():
			p.err = p.ctx.Err()
			return
		}
		timer := time.NewTimer(gatherWindow)
		for {
			p.mu.Lock()
			ready := len(p.pending) >= gatherSize || p.closed
			p.mu.Unlock()
			if ready {
				break
			}
			select {
			case <-p.wake:
				continue
			case <-timer.C:
			case <-p.ctx.Done():
				timer.Stop()
				p.err = p.ctx.Err()
				return
			}
			break
		}
		timer.Stop()
		p.mu.Lock()
		batch, closed := p.pending, p.closed
		p.pending = nil
		p.mu.Unlock()
		var err error
		switch {
		case len(batch) > 0:
			err = p.step(batch)
		case p.stream != nil:
			err = p.streamReady() // jobs that came after their derivations' step
		}
		if err != nil {
			p.err = err
			return
		}
		p.mu.Lock()
		more := len(p.pending) > 0
		p.mu.Unlock()
		if closed && !more {
			return
		}
		if more || closed {
			// Work arrived during the step (its wake may have been taken by the
			// gathering above): go round again.
			select {
			case p.wake <- struct{}{}:
			default:
			}
		}
	}
}

// step walks one batch of drv paths, uploads the closure of the nodes found and
// streams the jobs that are ready.
func (p *drvPipeline) step(drvs []string) error {
	if err := p.walk(drvs); err != nil {
		return err
	}
	if p.stream == nil {
		return nil
	}
	start := time.Now()
	defer func() { p.stats.stream += time.Since(start) }()
	return p.streamReady()
}

// walk walks one batch of drv paths and uploads the closure of the nodes found.
func (p *drvPipeline) walk(drvs []string) error {
	p.stats.batches++
	start := time.Now()
	nodes, err := p.g.Add(p.ctx, drvs)
	p.stats.graph += time.Since(start)
	if err != nil {
		return fmt.Errorf("derivation graph: %w", err)
	}
	if len(nodes) == 0 {
		return nil
	}
	start = time.Now()
	cl, err := push.ReadDrvClosure(p.ctx, p.root, nodes, p.seen)
	p.stats.closure += time.Since(start)
	if err != nil {
		return fmt.Errorf("upload the .drv closure: %w", err)
	}
	if len(cl.Infos) == 0 {
		return nil
	}
	start = time.Now()
	st, err := push.Upload(p.ctx, streamOpener{p.ctx, p.link}, cl.Infos, push.Options{Dump: cl.Dump})
	p.stats.upload += time.Since(start)
	p.stats.sent += st.Sent
	if err != nil {
		return fmt.Errorf("upload the .drv closure: %w", err)
	}
	return nil
}

// report sends the outcome in batches and waits for the coordinator's verdict.
func report(ctx context.Context, link Link, rep protocol.EvalReport, res evaluator.Result, nodes []evaluator.Node) error {
	st, err := link.OpenStream(ctx, protocol.StreamEvalReport)
	if err != nil {
		return err
	}
	defer st.Close()
	if err := protocol.WriteFrame(st, rep); err != nil {
		return err
	}
	sort.Slice(res.Jobs, func(i, j int) bool { return res.Jobs[i].Attr < res.Jobs[j].Attr })
	for i := 0; i < len(res.Jobs); i += batch {
		if err := protocol.WriteFrame(st, protocol.EvalBatch{Jobs: res.Jobs[i:min(i+batch, len(res.Jobs))]}); err != nil {
			return err
		}
	}
	for i := 0; i < len(res.Errors); i += batch {
		if err := protocol.WriteFrame(st, protocol.EvalBatch{Errors: res.Errors[i:min(i+batch, len(res.Errors))]}); err != nil {
			return err
		}
	}
	for i := 0; i < len(nodes); i += batch {
		if err := protocol.WriteFrame(st, protocol.EvalBatch{Nodes: nodes[i:min(i+batch, len(nodes))]}); err != nil {
			return err
		}
	}
	if err := protocol.WriteFrame(st, protocol.EvalBatch{Done: true}); err != nil {
		return err
	}
	var v protocol.EvalVerdict
	if err := protocol.ReadFrame(st, &v); err != nil {
		return fmt.Errorf("read the coordinator's verdict: %w", err)
	}
	if !v.Accepted {
		return fmt.Errorf("coordinator refused the report: %s", v.Error)
	}
	return nil
}
