// Package evalqueue owns when and where evaluations happen: it decides per jobset whether
// an evaluation is due (poll interval, triggers from webhooks and the API, states,
// changed inputs), pushes queued evaluations to agents with the eval role over their
// sessions, has the lease keeper (coordinator/lease) keep their leases, and records
// what the agents report. The evaluations API, its trigger and the forges' webhooks
// are evalapi's.
package evalqueue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/fleet"
	"github.com/fc-ci/fc/coordinator/lease"
	"github.com/fc-ci/fc/coordinator/metrics"
	"github.com/fc-ci/fc/internal/gitcmd"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// Config is the [evaluator] section plus the lease settings.
type Config struct {
	MaxConcurrentEvals int
	EvalTimeout        time.Duration
	MaxMemoryMB        int
	Workers            int
	RestrictEval       bool
	AllowIFD           bool
	GitTimeout         time.Duration
	// GitDir keeps what git needs on the coordinator (SSH known_hosts).
	GitDir string
	// AllowedInputPaths is evaluator.allowed_input_paths: a jobset whose path input
	// is not under one of them (the list changed since it was set) is not evaluated.
	AllowedInputPaths []string
	// Leases keeps the evaluations' leases (required; the build scheduler shares it).
	Leases *lease.Keeper
	// Tick is how often due jobsets and expired leases are looked for; triggers and
	// new agents wake the loop at once.
	Tick time.Duration
	// Dispatcher is the agent sessions connected here (the fleet); nil: no
	// evaluation is handed out.
	Dispatcher Dispatcher
	// Metrics records evaluation durations; nil: none.
	Metrics *metrics.Metrics
	Logger  *slog.Logger
}

// Evals is the evaluation scheduler.
type Evals struct {
	cfg   Config
	db    *storage.DB
	fleet Dispatcher
	log   *slog.Logger
	wake  chan struct{}

	mu       sync.Mutex
	inFlight map[int64]int // evaluations assigned per agent on this coordinator

	// checkMu serializes checks, so a trigger checking at once and a scheduler pass
	// do not both create an evaluation of the same commit.
	checkMu sync.Mutex
}

// New returns the scheduler; Run starts it. Attach it to the fleet with Hooks.
func New(cfg Config, db *storage.DB) *Evals {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Tick <= 0 {
		cfg.Tick = 5 * time.Second
	}
	if cfg.MaxConcurrentEvals <= 0 {
		cfg.MaxConcurrentEvals = 4
	}
	return &Evals{cfg: cfg, db: db, fleet: cfg.Dispatcher, log: cfg.Logger, wake: make(chan struct{}, 1), inFlight: map[int64]int{}}
}

// Wake makes the scheduler look for work now.
func (e *Evals) Wake() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Hooks are the fleet hooks the scheduler needs (the lease keeper has its own).
func (e *Evals) Hooks() fleet.Hooks {
	return fleet.Hooks{
		Connected: func(int64) { e.Wake() },
		Disconnected: func(agentID int64) {
			e.mu.Lock()
			delete(e.inFlight, agentID)
			e.mu.Unlock()
		},
		Heartbeat: e.heartbeat,
	}
}

// heartbeat has the lease keeper extend the leases of the evaluations an agent runs
// and requeue those it released, counts what the agent runs, and returns the
// evaluations it no longer holds.
func (e *Evals) heartbeat(ctx context.Context, agentID int64, hb *protocol.Heartbeat) []protocol.WorkRef {
	beat := e.cfg.Leases.Heartbeat(ctx, agentID, storage.LeaseEval, hb)
	e.mu.Lock()
	e.inFlight[agentID] = beat.Running
	e.mu.Unlock()
	for range beat.Requeued {
		e.finished(agentID)
	}
	return beat.Lost
}

// Run schedules until ctx ends.
func (e *Evals) Run(ctx context.Context) {
	t := time.NewTicker(e.cfg.Tick)
	defer t.Stop()
	for {
		e.pass(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-e.wake:
		}
	}
}

func (e *Evals) pass(ctx context.Context) {
	e.cfg.Leases.Rescue(ctx, storage.LeaseEval)
	if err := e.schedule(ctx); err != nil && ctx.Err() == nil {
		e.log.Warn("schedule evaluations", "err", err)
	}
	e.dispatch(ctx)
}

// schedule creates evaluations for due jobsets whose inputs changed (or forced ones).
func (e *Evals) schedule(ctx context.Context) error {
	due, err := e.db.DueJobsets(ctx, 50)
	if err != nil {
		return err
	}
	for _, t := range due {
		e.checkMu.Lock()
		_, err := e.check(ctx, t)
		e.checkMu.Unlock()
		if err != nil {
			e.log.Warn("check jobset", "jobset", t.Jobset.ID, "err", err)
			if merr := e.db.MarkChecked(ctx, t.Jobset.ID, err.Error()); merr != nil {
				return merr
			}
		}
	}
	return nil
}

// CheckResult is what a check of a jobset decided: EvaluationID is the evaluation it
// created, else Reason says why none (ReasonUnchanged, ReasonBusy, ReasonBuildsUnfinished)
// and WaitingFor names the evaluation it waits for.
type CheckResult struct {
	EvaluationID int64
	Reason       string
	WaitingFor   int64
	Error        string // ReasonCheckFailed's
}

// Why a check created no evaluation.
const (
	ReasonUnchanged = "unchanged" // the inputs are those of the newest evaluation
	// ReasonBusy: the newest evaluation is still queued or running; the trigger
	// stays pending and is checked when it ends.
	ReasonBusy = "evaluation_in_progress"
	// ReasonBuildsUnfinished: a one_at_a_time jobset waits for its newest
	// evaluation's builds; the trigger stays pending.
	ReasonBuildsUnfinished = "builds_unfinished"
	// ReasonCheckFailed: the repository or an input could not be read (Error says
	// why, as the jobset's last_check_error does); the trigger stays pending.
	ReasonCheckFailed = "check_failed"
)

// check decides about one jobset: it creates an evaluation when its inputs changed
// (or the trigger is forced). The caller holds checkMu.
func (e *Evals) check(ctx context.Context, t storage.EvalTarget) (CheckResult, error) {
	j := t.Jobset
	last, hasLast, err := e.db.LatestEvaluation(ctx, j.ID)
	if err != nil {
		return CheckResult{}, err
	}
	if hasLast && (last.Status == "queued" || last.Status == "running") {
		return CheckResult{Reason: ReasonBusy, WaitingFor: last.ID}, nil // one at a time per jobset
	}
	if j.State == storage.JobsetOneAtATime && hasLast && last.UnfinishedBuild {
		return CheckResult{Reason: ReasonBuildsUnfinished, WaitingFor: last.ID}, nil
	}
	return e.checkInputs(ctx, t, last, hasLast)
}

// checkInputs reads the jobset's commit and inputs and creates an evaluation when
// they differ from the newest evaluation's (or the trigger is forced).
func (e *Evals) checkInputs(ctx context.Context, t storage.EvalTarget, last storage.LastEvaluation, hasLast bool) (CheckResult, error) {
	j := t.Jobset
	gctx, cancel := context.WithTimeout(ctx, e.cfg.GitTimeout)
	defer cancel()
	creds := gitcmd.Credentials{SSHKey: t.Credentials.SSHKey, HTTPSToken: t.Credentials.HTTPSToken}
	commit, err := e.commitOf(gctx, t, creds)
	if err != nil {
		return CheckResult{}, err
	}
	inputs := make([]storage.EvaluationInput, 0, len(j.Inputs))
	for _, in := range j.Inputs {
		ei := storage.EvaluationInput{Name: in.Name, Type: in.Type, Value: in.Value}
		if in.Type == storage.InputTypePath {
			if _, ok := config.PathInputAllowed(in.Value, e.cfg.AllowedInputPaths); !ok {
				return CheckResult{}, fmt.Errorf("input %s: path %q is not under a directory of %s", in.Name, in.Value, config.AllowedInputPathsKey)
			}
		}
		if in.Type == storage.InputTypeGit {
			url, branch, _ := strings.Cut(strings.TrimSpace(in.Value), " ")
			if ei.Revision, err = gitcmd.LsRemote(gctx, e.cfg.GitDir, url, strings.TrimSpace(branch), gitcmd.Credentials{}); err != nil {
				return CheckResult{}, fmt.Errorf("input %s: %w", in.Name, err)
			}
		}
		inputs = append(inputs, ei)
	}
	hash := inputsHash(commit, j, inputs)
	if hasLast && last.Commit == commit && last.InputsHash == hash && !t.TriggerForced {
		return CheckResult{Reason: ReasonUnchanged, WaitingFor: 0}, e.db.MarkChecked(ctx, j.ID, "")
	}
	trigger := "poll"
	if t.TriggerPending {
		trigger = "trigger"
	}
	id, err := e.db.CreateEvaluation(ctx, storage.NewEvaluation{JobsetID: j.ID, Commit: commit, InputsHash: hash,
		Trigger: trigger, Forced: t.TriggerForced, Inputs: inputs})
	if err != nil {
		return CheckResult{}, err
	}
	e.log.Info("evaluation queued", "eval", id, "jobset", j.ID, "commit", commit, "trigger", trigger)
	return CheckResult{EvaluationID: id}, nil
}

// commitOf is the commit a jobset evaluates now: a pull request's head as the forge
// last said it (the pull request's ref may lag behind its webhook), else what its
// branch (or full ref) points to.
func (e *Evals) commitOf(ctx context.Context, t storage.EvalTarget, creds gitcmd.Credentials) (string, error) {
	if pr := t.Jobset.PullRequest; pr != nil && pr.HeadSHA != "" {
		return pr.HeadSHA, nil
	}
	return gitcmd.LsRemote(ctx, e.cfg.GitDir, t.RepositoryURL, t.Jobset.Branch, creds)
}

// inputsHash identifies what an evaluation sees: the commit, the expression and every
// input (with git inputs' revisions).
func inputsHash(commit string, j storage.Jobset, inputs []storage.EvaluationInput) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%v\x00%s\x00", commit, j.FlakeMode, j.NixExpression)
	sorted := slices.Clone(inputs)
	slices.SortFunc(sorted, func(a, b storage.EvaluationInput) int { return strings.Compare(a.Name, b.Name) })
	for _, in := range sorted {
		fmt.Fprintf(h, "%s\x00%s\x00%s\x00%s\x00", in.Name, in.Type, in.Value, in.Revision)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// dispatch pushes queued evaluations to idle eval agents connected here.
func (e *Evals) dispatch(ctx context.Context) {
	if e.fleet == nil {
		return
	}
	if queued, err := e.db.QueuedEvaluations(ctx); err != nil || !queued {
		return // nothing to hand out: no need to look at every agent
	}
	for _, agentID := range e.fleet.AgentIDs() {
		if ctx.Err() != nil {
			return
		}
		caps, ok := e.fleet.Capabilities(agentID)
		if !ok || !slices.Contains(caps.Roles, protocol.RoleEval) {
			continue
		}
		e.mu.Lock()
		busy := e.inFlight[agentID] > 0
		e.mu.Unlock()
		if busy {
			continue
		}
		a, err := e.db.GetAgent(ctx, agentID)
		if err != nil || !a.Enabled || a.Draining || a.SelfDraining || a.RevokedAt != nil || a.Running > 0 {
			continue
		}
		running, err := e.db.RunningEvaluations(ctx)
		if err != nil || running >= e.cfg.MaxConcurrentEvals {
			return
		}
		if err := e.assign(ctx, agentID); err != nil && !errors.Is(err, errNothingQueued) {
			e.log.Warn("assign evaluation", "agent", agentID, "err", err)
		}
	}
}

var errNothingQueued = errors.New("no evaluation queued")

func (e *Evals) assign(ctx context.Context, agentID int64) error {
	l, ok, err := e.db.ClaimEvaluation(ctx, agentID, e.cfg.Leases.TTL())
	if err != nil {
		return err
	}
	if !ok {
		return errNothingQueued
	}
	task, err := e.task(ctx, l.ID)
	if err != nil {
		_ = e.cfg.Leases.Release(ctx, l)
		return err
	}
	ref := protocol.WorkRef{Kind: protocol.WorkEval, ID: l.ID, Epoch: l.Epoch}
	reply, err := e.fleet.Command(ctx, agentID, protocol.Message{Type: protocol.TypeAssign,
		Assign: &protocol.Assign{Work: ref, Eval: &task}})
	if err != nil || reply.Type != protocol.TypeAccept {
		reason := "no answer"
		if err != nil {
			reason = err.Error()
		} else if reply.Reject != nil {
			reason = reply.Reject.Reason
		}
		_ = e.cfg.Leases.Release(ctx, l)
		return fmt.Errorf("agent %d declined evaluation %d: %s", agentID, l.ID, reason)
	}
	e.mu.Lock()
	e.inFlight[agentID]++
	e.mu.Unlock()
	e.log.Info("evaluation assigned", "eval", l.ID, "agent", agentID, "epoch", l.Epoch, "attempt", l.Attempt)
	return nil
}

func (e *Evals) task(ctx context.Context, evalID int64) (protocol.EvalTask, error) {
	t, err := e.db.EvalTaskOf(ctx, evalID)
	if err != nil {
		return protocol.EvalTask{}, err
	}
	inputs := make([]protocol.EvalInput, len(t.Inputs))
	for i, in := range t.Inputs {
		inputs[i] = protocol.EvalInput(in)
	}
	return protocol.EvalTask{SSHKey: t.Credentials.SSHKey, HTTPSToken: t.Credentials.HTTPSToken,
		EvaluationID: evalID, RepoURL: t.RepositoryURL, Revision: t.Commit, Branch: t.Branch,
		FlakeMode: t.FlakeMode, Expression: t.Expression, Inputs: inputs, Workers: e.cfg.Workers,
		MaxMemoryMB: e.cfg.MaxMemoryMB, RestrictEval: e.cfg.RestrictEval, AllowIFD: e.cfg.AllowIFD,
		TimeoutSecs: int(e.cfg.EvalTimeout / time.Second)}, nil
}

// finished notes that an agent is done with an evaluation.
func (e *Evals) finished(agentID int64) {
	e.mu.Lock()
	if e.inFlight[agentID] > 0 {
		e.inFlight[agentID]--
	}
	e.mu.Unlock()
	e.Wake()
}
