package evalqueue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/fc-ci/fc/protocol"
)

// maxStreamFrames bounds one streamed report, keep-alives included.
const maxStreamFrames = 1_000_000

// HandleStream serves a protocol.StreamEvalStream stream: a report that arrives while
// the evaluation runs. Each batch is staged as it comes (storage.EvalIngest: nothing
// another evaluation or the build queue needs is locked meanwhile); the evaluation
// becomes visible, whole, only when the last batch says it is done. A stream that
// ends before that leaves nothing stored: the agent's lease expires and the
// evaluation is retried, as when an agent dies without reporting.
func (e *Evals) HandleStream(ctx context.Context, agentID int64, st io.ReadWriter) error {
	r, ok, err := e.openReport(ctx, agentID, st, "evaluation stream")
	if !ok {
		return err
	}
	l, verdict := r.lease, r.verdict
	in, err := e.db.BeginEvalIngest(ctx, l)
	if err != nil {
		return verdict(err)
	}
	finished := false
	defer func() {
		if !finished {
			// Not ctx: the staged rows go even when the session's context ended.
			if err := in.Discard(context.WithoutCancel(ctx)); err != nil {
				e.log.Warn("discard a broken evaluation stream", "eval", l.ID, "err", err)
			}
		}
	}()
	if err := verdict(nil); err != nil {
		return err
	}
	defer e.finished(agentID)

	start := time.Now()
	var staging time.Duration
	var out *protocol.EvalReport
	for i := 0; out == nil; i++ {
		if i >= maxStreamFrames {
			return verdict(errors.New("report too large"))
		}
		var b protocol.EvalBatch
		if err := protocol.ReadFrame(st, &b); err != nil {
			e.log.Warn("evaluation stream broke; nothing of it is stored", "eval", l.ID, "agent", agentID, "err", err)
			return fmt.Errorf("read evaluation batch: %w", err)
		}
		if b.Done && b.Outcome == nil {
			return verdict(errors.New("the last batch has no outcome"))
		}
		jobs, errs, nodes := batchParts(b)
		t := time.Now()
		if err := in.Add(ctx, jobs, errs, nodes); err != nil {
			return verdict(err)
		}
		staging += time.Since(t)
		if b.Done {
			out = b.Outcome
		}
	}
	stored := time.Now()
	outcome := "succeeded"
	switch {
	case out.Failed && out.Retry:
		outcome = "retried"
		err = e.cfg.Leases.Retry(ctx, l, out.Error)
		e.log.Warn("evaluation hit an infrastructure failure; retrying", "eval", l.ID, "agent", agentID, "err", out.Error)
	case out.Failed:
		outcome = "failed"
		err = e.db.FailEvaluation(ctx, l, out.Error, out.CheckoutSeconds, out.EvalSeconds)
		e.log.Info("evaluation failed", "eval", l.ID, "agent", agentID, "err", out.Error)
	default:
		err = in.Finish(ctx, out.CheckoutSeconds, out.EvalSeconds)
		finished = err == nil
		e.log.Info("evaluation finished", "eval", l.ID, "agent", agentID, "jobs", in.Jobs(), "errors", in.Errors(),
			"steps", in.Nodes(), "streamed_s", stored.Sub(start).Seconds(), "staging_s", staging.Seconds(),
			"store_s", time.Since(stored).Seconds())
	}
	if err != nil {
		e.log.Warn("record evaluation", "eval", l.ID, "err", err)
	} else {
		e.cfg.Metrics.ObserveEvaluation(outcome, time.Duration((out.CheckoutSeconds+out.EvalSeconds)*float64(time.Second)))
	}
	return verdict(err)
}
