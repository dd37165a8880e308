// Package work holds the agent's executors of leased work: evaluations now, build
// steps with the builds issue. An executor does the work and reports it over the
// agent's session, quoting its lease (id, epoch) so a stale report is refused.
package work

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sort"
	"time"

	"github.com/fc-ci/fc/agent/daemon"
	"github.com/fc-ci/fc/agent/eval"
	"github.com/fc-ci/fc/agent/push"
	"github.com/fc-ci/fc/protocol"
)

// Eval evaluates jobsets on this agent.
type Eval struct {
	// StateDir holds the repository mirrors (StateDir/git).
	StateDir string
	Logger   *slog.Logger
}

// batch is how many jobs, errors or nodes go in one report frame.
const batch = 1000

// Run implements daemon.Executor.
func (e *Eval) Run(ctx context.Context, a protocol.Assign, link daemon.Link) error {
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
	res, nodes, err := e.evaluate(ctx, t, &rep, link)
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
		return ctx.Err() // cancelled or lease lost: nothing to report
	}
	if err != nil {
		rep.Failed, rep.Error = true, err.Error()
		// The expression itself failing is final; anything else (git unreachable, the
		// cache upload broke) is an infrastructure failure, retried under the lease rules.
		rep.Retry = !errors.Is(err, eval.ErrEvalFailed)
		log.Warn("evaluation failed", "err", err, "retry", rep.Retry)
	}
	return report(ctx, link, rep, res, nodes)
}

func (e *Eval) evaluate(ctx context.Context, t protocol.EvalTask, rep *protocol.EvalReport, link daemon.Link) (eval.Result, []eval.Node, error) {
	start := time.Now()
	dir, cleanup, err := eval.Checkout(ctx, filepath.Join(e.StateDir, "git"), t.RepoURL, t.Revision,
		eval.Credentials{SSHKey: t.SSHKey, HTTPSToken: t.HTTPSToken})
	rep.CheckoutSeconds = time.Since(start).Seconds()
	if err != nil {
		return eval.Result{}, nil, fmt.Errorf("checkout %s at %s: %w", t.RepoURL, t.Revision, err)
	}
	defer cleanup()
	inputs := make([]eval.Input, len(t.Inputs))
	for i, in := range t.Inputs {
		inputs[i] = eval.Input{Name: in.Name, Type: in.Type, Value: in.Value}
	}
	start = time.Now()
	res, err := eval.Evaluate(ctx, dir, eval.Request{RepoURL: t.RepoURL, Revision: t.Revision, Branch: t.Branch,
		FlakeMode: t.FlakeMode, Expression: t.Expression, Inputs: inputs, Workers: t.Workers, MaxMemoryMB: t.MaxMemoryMB,
		RestrictEval: t.RestrictEval, AllowIFD: t.AllowIFD, SSHKey: t.SSHKey, HTTPSToken: t.HTTPSToken,
		CacheDir: filepath.Join(e.StateDir, "git")})
	if err != nil {
		rep.EvalSeconds = time.Since(start).Seconds()
		return eval.Result{}, nil, err
	}
	nodes, err := eval.Graph(ctx, res.Jobs, func(ctx context.Context, paths []string) (map[string]bool, error) {
		return present(ctx, link, paths)
	})
	if err != nil {
		rep.EvalSeconds = time.Since(start).Seconds()
		return eval.Result{}, nil, fmt.Errorf("derivation graph: %w", err)
	}
	// Every agent must be able to realise any step from an empty store: the .drv
	// closure of what must be built goes to the coordinator's cache.
	if err := pushDrvClosure(ctx, link, nodes); err != nil {
		rep.EvalSeconds = time.Since(start).Seconds()
		return eval.Result{}, nil, fmt.Errorf("upload the .drv closure: %w", err)
	}
	rep.EvalSeconds = time.Since(start).Seconds()
	return res, nodes, nil
}

func present(ctx context.Context, link daemon.Link, paths []string) (map[string]bool, error) {
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
	link daemon.Link
}

func (s streamOpener) OpenStream(kind string) (io.ReadWriteCloser, error) {
	return s.link.OpenStream(s.ctx, kind)
}

func pushDrvClosure(ctx context.Context, link daemon.Link, nodes []eval.Node) error {
	if len(nodes) == 0 {
		return nil
	}
	drvs := make([]string, len(nodes))
	for i, n := range nodes {
		drvs[i] = n.DrvPath
	}
	infos, err := push.ClosureInfos(ctx, drvs)
	if err != nil {
		return err
	}
	_, err = push.Upload(ctx, streamOpener{ctx, link}, infos, push.Options{})
	return err
}

// report sends the outcome in batches and waits for the coordinator's verdict.
func report(ctx context.Context, link daemon.Link, rep protocol.EvalReport, res eval.Result, nodes []eval.Node) error {
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
