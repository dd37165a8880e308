package work

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/fc-ci/fc/agent/evaluator"
	"github.com/fc-ci/fc/protocol"
)

// keepAlive is how long a report stream may go without a frame before an empty one
// is sent (protocol.StreamIdleTimeout would end it).
const keepAlive = 30 * time.Second

// evalStream is a report sent while the evaluation runs (protocol.StreamEvalStream):
// the jobs, and the nodes they need, go to the coordinator as soon as they are final,
// so that it stores them meanwhile rather than after the evaluation; the rest and the
// outcome follow at the end. The coordinator shows nothing of it before then.
type evalStream struct {
	st  io.ReadWriteCloser
	log *slog.Logger

	mu   sync.Mutex // guards st's writes and the fields below
	last time.Time
	err  error // the first write error: the stream is unusable

	sentJobs  map[string]bool // by attribute (used by the pipeline's goroutine, then finish)
	sentNodes map[string]bool // by drv path
	stop      chan struct{}
	stopped   chan struct{}
}

// openEvalStream opens the report stream of work and waits for the coordinator to
// accept it. nil: it did not (an older coordinator closes a stream of a kind it does
// not know; a stale lease is refused): the report goes on StreamEvalReport at the end.
func openEvalStream(ctx context.Context, link Link, work protocol.WorkRef, log *slog.Logger) *evalStream {
	st, err := link.OpenStream(ctx, protocol.StreamEvalStream)
	if err != nil {
		log.Info("no report stream; reporting at the end", "err", err)
		return nil
	}
	var v protocol.EvalVerdict
	err = protocol.WriteFrame(st, protocol.EvalReport{Work: work})
	if err == nil {
		err = protocol.ReadFrame(st, &v)
	}
	if err != nil || !v.Accepted {
		_ = st.Close()
		log.Info("the coordinator takes no report stream; reporting at the end", "err", err, "refused", v.Error)
		return nil
	}
	s := &evalStream{st: st, log: log, last: time.Now(), sentJobs: map[string]bool{}, sentNodes: map[string]bool{},
		stop: make(chan struct{}), stopped: make(chan struct{})}
	go s.keepAlive()
	return s
}

func (s *evalStream) keepAlive() {
	defer close(s.stopped)
	t := time.NewTicker(keepAlive / 3)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.mu.Lock()
			idle := time.Since(s.last) >= keepAlive
			s.mu.Unlock()
			if idle {
				_ = s.send(protocol.EvalBatch{})
			}
		}
	}
}

// send writes one frame.
func (s *evalStream) send(b protocol.EvalBatch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if err := protocol.WriteFrame(s.st, b); err != nil {
		s.err = fmt.Errorf("report stream: %w", err)
		return s.err
	}
	s.last = time.Now()
	return nil
}

// healthy reports whether every frame so far was written.
func (s *evalStream) healthy() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err == nil
}

// sendParts sends jobs, errors and nodes in frames of at most batch each, skipping
// jobs and nodes already sent.
func (s *evalStream) sendParts(jobs []evaluator.Job, errs []evaluator.AttrError, nodes []evaluator.Node) error {
	var js []evaluator.Job
	for _, j := range jobs {
		if !s.sentJobs[j.Attr] {
			s.sentJobs[j.Attr] = true
			js = append(js, j)
		}
	}
	var ns []evaluator.Node
	for _, n := range nodes {
		if !s.sentNodes[n.DrvPath] {
			s.sentNodes[n.DrvPath] = true
			ns = append(ns, n)
		}
	}
	for i := 0; i < len(js); i += batch {
		if err := s.send(protocol.EvalBatch{Jobs: js[i:min(i+batch, len(js))]}); err != nil {
			return err
		}
	}
	for i := 0; i < len(errs); i += batch {
		if err := s.send(protocol.EvalBatch{Errors: errs[i:min(i+batch, len(errs))]}); err != nil {
			return err
		}
	}
	for i := 0; i < len(ns); i += batch {
		if err := s.send(protocol.EvalBatch{Nodes: ns[i:min(i+batch, len(ns))]}); err != nil {
			return err
		}
	}
	return nil
}

// streamReady sends the jobs the pipeline holds whose derivations it has walked, with
// the nodes they need (on the pipeline's goroutine, after a step).
func (p *drvPipeline) streamReady() error {
	p.mu.Lock()
	jobs := p.jobs
	p.jobs = nil
	p.mu.Unlock()
	var ready, later []evaluator.Job
	var drvs []string
	for _, j := range jobs {
		if p.g.Walked(j.DrvPath) {
			ready = append(ready, j)
			drvs = append(drvs, j.DrvPath)
		} else {
			later = append(later, j)
		}
	}
	if len(later) > 0 {
		p.mu.Lock()
		p.jobs = append(later, p.jobs...)
		p.mu.Unlock()
	}
	if len(ready) == 0 {
		return nil
	}
	return p.stream.sendParts(ready, nil, p.g.NodesFromExcept(drvs, p.stream.sentNodes))
}

// finish sends what was not sent yet and the outcome, and waits for the verdict.
func (s *evalStream) finish(rep protocol.EvalReport, res evaluator.Result, nodes []evaluator.Node) error {
	close(s.stop)
	<-s.stopped
	defer s.st.Close()
	sort.Slice(res.Jobs, func(i, j int) bool { return res.Jobs[i].Attr < res.Jobs[j].Attr })
	if !rep.Failed {
		if err := s.sendParts(res.Jobs, res.Errors, nodes); err != nil {
			return err
		}
	}
	out := rep
	out.Work = protocol.WorkRef{}
	if err := s.send(protocol.EvalBatch{Done: true, Outcome: &out}); err != nil {
		return err
	}
	var v protocol.EvalVerdict
	if err := protocol.ReadFrame(s.st, &v); err != nil {
		return fmt.Errorf("read the coordinator's verdict: %w", err)
	}
	if !v.Accepted {
		return fmt.Errorf("coordinator refused the report: %s", v.Error)
	}
	return nil
}

// close abandons the stream: the coordinator stores nothing of it.
func (s *evalStream) close() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.stopped
	_ = s.st.Close()
}
