package buildqueue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// HandleReport serves a protocol.StreamStepReport stream: the report counts only for
// the current lease (step, epoch, agent); a stale one changes nothing.
func (b *Builds) HandleReport(ctx context.Context, agentID int64, st io.ReadWriter) error {
	var rep protocol.StepReport
	if err := protocol.ReadFrame(st, &rep); err != nil {
		return fmt.Errorf("read step report: %w", err)
	}
	err := b.record(ctx, agentID, rep)
	if err != nil {
		b.log.Warn("step report refused", "step", rep.Work.ID, "epoch", rep.Work.Epoch, "agent", agentID, "err", err)
	}
	v := protocol.StepVerdict{Accepted: err == nil}
	if err != nil {
		v.Error = err.Error()
	}
	return protocol.WriteFrame(st, v)
}

// record stores a step report. Its lease is checked once, by the storage
// transaction that records it (FinishStep, or RetryStep through the lease keeper):
// a stale report changes nothing there, and nothing here either.
func (b *Builds) record(ctx context.Context, agentID int64, rep protocol.StepReport) error {
	if rep.Work.Kind != protocol.WorkStep {
		return fmt.Errorf("report for %q work on the step report stream", rep.Work.Kind)
	}
	l := storage.Lease{Kind: storage.LeaseStep, ID: rep.Work.ID, Epoch: rep.Work.Epoch, AgentID: agentID}
	// The agent reports once it has delivered the whole log: the log moves to its
	// final store before the outcome is recorded, so that once the step shows finished
	// every coordinator serves all of it (a log in S3, not only this one's local
	// file), and a coordinator dying right after the record loses none of it. Only
	// the lease's holder may end the attempt's log.
	if err := b.cfg.Leases.Check(ctx, l); err != nil {
		return err
	}
	if err := b.cfg.Logs.Finish(l.ID, l.Epoch); err != nil {
		b.log.Warn("finish log before the report", "step", l.ID, "err", err) // still served locally; attemptEnded tries again
	}
	if rep.Retry || rep.Status == "" {
		err := b.cfg.Leases.Retry(ctx, l, rep.Error)
		if errors.Is(err, storage.ErrStaleLease) {
			return err
		}
		b.log.Warn("step hit an infrastructure failure; retrying", "step", l.ID, "agent", agentID, "err", rep.Error)
		b.attemptEnded(l)
		return err
	}
	if !reportedStatus(rep.Status) {
		b.attemptEnded(l)
		return fmt.Errorf("unknown step status %q", rep.Status)
	}
	system, err := b.finish(ctx, l, rep)
	if errors.Is(err, storage.ErrStaleLease) {
		return err
	}
	if !rep.StartedAt.IsZero() && rep.FinishedAt.After(rep.StartedAt) {
		b.observeStep(agentID, rep.FinishedAt.Sub(rep.StartedAt))
		if err == nil {
			b.observeDuration(ctx, l.ID, system, rep)
		}
	}
	b.attemptEnded(l)
	return err
}

// observeDuration records a finished step's build time under its system (read
// here when the report's batch did not return it).
func (b *Builds) observeDuration(ctx context.Context, stepID int64, system string, rep protocol.StepReport) {
	if b.cfg.Metrics == nil {
		return
	}
	if system == "" {
		var err error
		if system, err = b.db.StepSystem(ctx, stepID); err != nil {
			b.log.Warn("step duration not recorded", "step", stepID, "err", err)
			return
		}
	}
	b.cfg.Metrics.ObserveStep(system, rep.Status, rep.FinishedAt.Sub(rep.StartedAt))
}

// attemptEnded follows a report of the attempt under l: whatever its outcome, the
// attempt's log is complete and the agent has a free slot.
func (b *Builds) attemptEnded(l storage.Lease) {
	b.logEnded(l.ID, l.Epoch)
	b.Wake()
}

// reportedStatus says whether an agent may report status (protocol.Step...).
func reportedStatus(status string) bool {
	switch status {
	case protocol.StepSucceeded, protocol.StepFailed, protocol.StepTimedOut, protocol.StepFailedWithOutput,
		protocol.StepLogLimitExceeded, protocol.StepOutputLimitExceeded:
		return true
	}
	return false
}

// finish records the outcome of a step built (or failed) under lease l; it returns
// the step's system when it learnt it.
func (b *Builds) finish(ctx context.Context, l storage.Lease, rep protocol.StepReport) (string, error) {
	o := storage.StepOutcome{Status: rep.Status, Error: rep.Error, ExitCode: rep.ExitCode, ReleaseName: rep.ReleaseName,
		LogSize: rep.LogSize, StartedAt: rep.StartedAt, FinishedAt: rep.FinishedAt}
	products, dropped, err := b.ownProducts(ctx, l.ID, rep.Products)
	if err != nil {
		return "", err
	}
	if len(dropped) > 0 {
		// The agent names product paths; only files of the step's own outputs count
		// (a product is downloaded out of the cache, which holds much else).
		msg := fmt.Sprintf("dropped %d build product(s) outside the step's outputs: %s", len(dropped), strings.Join(dropped, ", "))
		b.log.Warn("step report names products outside its outputs", "step", l.ID, "agent", l.AgentID, "dropped", dropped)
		o.Error = strings.TrimPrefix(o.Error+"; "+msg, "; ")
	}
	for i, p := range products {
		pr := storage.Product{Nr: i + 1, Type: p.Type, Subtype: p.Subtype, Name: p.Name, Path: p.Path,
			DefaultPath: p.DefaultPath, SHA256: p.SHA256}
		if p.Type == "file" || p.FileSize > 0 {
			size := p.FileSize
			pr.FileSize = &size
		}
		o.Products = append(o.Products, pr)
	}
	for _, m := range rep.Metrics {
		o.Metrics = append(o.Metrics, storage.Metric{Name: m.Name, Value: m.Value, Unit: m.Unit})
	}
	system, err := b.finishStep(ctx, l, o)
	if err != nil {
		if errors.Is(err, storage.ErrOutputsMissing) {
			// The agent must upload before it reports: an infrastructure failure.
			return "", errors.Join(err, b.cfg.Leases.Retry(ctx, l, err.Error()))
		}
		return "", err
	}
	b.log.Info("step finished", "step", l.ID, "agent", l.AgentID, "status", rep.Status)
	return system, nil
}

// ownProducts keeps the products whose path lies inside one of the step's declared
// outputs and returns the paths of the others.
func (b *Builds) ownProducts(ctx context.Context, stepID int64, products []protocol.BuildProduct) (kept []protocol.BuildProduct, dropped []string, err error) {
	if len(products) == 0 {
		return nil, nil, nil
	}
	outputs, err := b.db.StepOutputs(ctx, stepID)
	if err != nil {
		return nil, nil, err
	}
	for _, p := range products {
		if insideOutputs(p.Path, outputs) {
			kept = append(kept, p)
		} else {
			dropped = append(dropped, p.Path)
		}
	}
	return kept, dropped, nil
}

// insideOutputs says whether p, cleaned, is one of outputs or a file inside one.
func insideOutputs(p string, outputs map[string]string) bool {
	if !strings.HasPrefix(p, "/") {
		return false
	}
	p = path.Clean(p)
	for _, o := range outputs {
		if o != "" && (p == o || strings.HasPrefix(p, o+"/")) {
			return true
		}
	}
	return false
}

// HandleLog serves a protocol.StreamLog stream: it tells the agent how much of the
// log is stored, then appends chunks at their offsets (a repeat is ignored, a gap
// (logs.ErrGap) refused) up to max_log_size.
func (b *Builds) HandleLog(ctx context.Context, agentID int64, st io.ReadWriter) error {
	var open protocol.LogOpen
	if err := protocol.ReadFrame(st, &open); err != nil {
		return fmt.Errorf("read log open: %w", err)
	}
	w := open.Work
	if w.Kind != protocol.WorkStep {
		return protocol.WriteFrame(st, protocol.LogAck{Error: "logs are for steps"})
	}
	// Logs are stored outside PostgreSQL: no transaction would refuse them.
	l := storage.Lease{Kind: storage.LeaseStep, ID: w.ID, Epoch: w.Epoch, AgentID: agentID}
	if err := b.cfg.Leases.Check(ctx, l); err != nil {
		return protocol.WriteFrame(st, protocol.LogAck{Error: err.Error()})
	}
	size, err := b.cfg.Logs.Size(w.ID, w.Epoch)
	if err != nil {
		return protocol.WriteFrame(st, protocol.LogAck{Error: err.Error()})
	}
	if err := protocol.WriteFrame(st, protocol.LogAck{Offset: size}); err != nil {
		return err
	}
	for {
		var c protocol.LogChunk
		if err := protocol.ReadFrame(st, &c); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read log chunk: %w", err)
		}
		if len(c.Data) > 0 {
			before := size
			var err error
			size, _, err = b.cfg.Logs.Append(w.ID, w.Epoch, c.Offset, c.Data, b.cfg.MaxLogSize)
			b.cfg.Metrics.AddLogBytes(int(size - before)) // a repeat adds nothing
			// A gap (logs.ErrGap) or storage: the agent resumes from size.
			if err != nil {
				return protocol.WriteFrame(st, protocol.LogAck{Offset: size, Error: err.Error()})
			}
			b.cfg.Hub.Grew(w.ID) // viewers read the new bytes; the step did not change
		}
		if c.Done {
			return protocol.WriteFrame(st, protocol.LogAck{Offset: size})
		}
	}
}
