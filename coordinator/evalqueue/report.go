package evalqueue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// maxReportBatches bounds one report (a nixpkgs-sized evaluation is ~100 batches of
// 1,000 nodes); beyond it the report is refused rather than exhausting memory.
const maxReportBatches = 10_000

// reportStream is an evaluation report's stream once its first frame was read.
type reportStream struct {
	rep   protocol.EvalReport
	lease storage.Lease
	st    io.ReadWriter
}

// verdict answers the report: accepted when err is nil.
func (r reportStream) verdict(err error) error {
	v := protocol.EvalVerdict{Accepted: err == nil}
	if err != nil {
		v.Error = err.Error()
	}
	return protocol.WriteFrame(r.st, v)
}

// openReport reads the first frame of an evaluation report (what names the stream)
// and checks that it is this agent's current lease of the evaluation. When it is not
// (or the frame cannot be read) the stream has been answered: ok is false and err is
// what the handler returns.
func (e *Evals) openReport(ctx context.Context, agentID int64, st io.ReadWriter, what string) (r reportStream, ok bool, err error) {
	r.st = st
	if err := protocol.ReadFrame(st, &r.rep); err != nil {
		return r, false, fmt.Errorf("read %s: %w", what, err)
	}
	if r.rep.Work.Kind != protocol.WorkEval {
		return r, false, r.verdict(fmt.Errorf("report for %q work on the evaluation stream", r.rep.Work.Kind))
	}
	r.lease = storage.Lease{Kind: storage.LeaseEval, ID: r.rep.Work.ID, Epoch: r.rep.Work.Epoch, AgentID: agentID}
	if err := e.cfg.Leases.Check(ctx, r.lease); err != nil {
		e.log.Warn(what+" refused", "eval", r.lease.ID, "epoch", r.lease.Epoch, "agent", agentID, "err", err)
		return r, false, r.verdict(err)
	}
	return r, true, nil
}

// HandleReport serves a protocol.StreamEvalReport stream: the report is accepted only
// for the current lease (id, epoch, agent); a stale one changes nothing.
func (e *Evals) HandleReport(ctx context.Context, agentID int64, st io.ReadWriter) error {
	// Refused before its batches are read (a report may be large); the transaction
	// that records it checks the lease again, and that check counts.
	r, ok, err := e.openReport(ctx, agentID, st, "evaluation report")
	if !ok {
		return err
	}
	rep, l, verdict := r.rep, r.lease, r.verdict
	defer e.finished(agentID)
	received := time.Now()
	var o storage.EvalOutcome
	o.CheckoutSeconds, o.EvalSeconds = rep.CheckoutSeconds, rep.EvalSeconds
	for i := 0; ; i++ {
		if i >= maxReportBatches {
			return verdict(errors.New("report too large"))
		}
		var b protocol.EvalBatch
		if err := protocol.ReadFrame(st, &b); err != nil {
			return fmt.Errorf("read evaluation batch: %w", err)
		}
		jobs, errs, nodes := batchParts(b)
		o.Jobs, o.Errors, o.Nodes = append(o.Jobs, jobs...), append(o.Errors, errs...), append(o.Nodes, nodes...)
		if b.Done {
			break
		}
	}
	read := time.Since(received)
	stored := time.Now()
	outcome := "succeeded"
	if rep.Failed && rep.Retry {
		outcome = "retried"
		err = e.cfg.Leases.Retry(ctx, l, rep.Error)
		e.log.Warn("evaluation hit an infrastructure failure; retrying", "eval", l.ID, "agent", agentID, "err", rep.Error)
	} else if rep.Failed {
		outcome = "failed"
		err = e.db.FailEvaluation(ctx, l, rep.Error, rep.CheckoutSeconds, rep.EvalSeconds)
		e.log.Info("evaluation failed", "eval", l.ID, "agent", agentID, "err", rep.Error)
	} else {
		err = e.db.FinishEvaluation(ctx, l, o)
		e.log.Info("evaluation finished", "eval", l.ID, "agent", agentID, "jobs", len(o.Jobs), "errors", len(o.Errors), "steps", len(o.Nodes),
			"read_s", read.Seconds(), "store_s", time.Since(stored).Seconds())
	}
	if err != nil {
		e.log.Warn("record evaluation", "eval", l.ID, "err", err)
	} else {
		e.cfg.Metrics.ObserveEvaluation(outcome, time.Duration((rep.CheckoutSeconds+rep.EvalSeconds)*float64(time.Second)))
	}
	return verdict(err)
}

// batchParts converts a batch to storage's types.
func batchParts(b protocol.EvalBatch) ([]storage.EvalJob, []storage.AttrError, []storage.EvalNode) {
	jobs := make([]storage.EvalJob, len(b.Jobs))
	for i, j := range b.Jobs {
		jobs[i] = storage.EvalJob{Attr: j.Attr, Name: j.Name, DrvPath: j.DrvPath, System: j.System,
			Outputs: j.Outputs, Description: j.Meta.Description, License: j.Meta.License, Homepage: j.Meta.Homepage,
			SchedulingPriority: j.Meta.SchedulingPriority, Timeout: j.Meta.Timeout, MaxSilent: j.Meta.MaxSilent,
			IsAggregate: j.IsAggregate, Constituents: j.Constituents}
	}
	errs := make([]storage.AttrError, len(b.Errors))
	for i, er := range b.Errors {
		errs[i] = storage.AttrError{Attr: er.Attr, Message: er.Message}
	}
	nodes := make([]storage.EvalNode, len(b.Nodes))
	for i, n := range b.Nodes {
		nodes[i] = storage.EvalNode{DrvPath: n.DrvPath, System: n.System, RequiredFeatures: n.RequiredFeatures,
			PreferLocalBuild: n.PreferLocalBuild, Outputs: n.Outputs, OutputCA: n.OutputCA, Inputs: n.Inputs}
	}
	return jobs, errs, nodes
}
