// Package buildqueue is the step scheduler: it hands runnable steps to agents with free
// slots that can build them (system, features, mandatory features; least loaded
// relative to speed first), keeps the steps' leases, records what agents report and
// stores their logs. The builds API and its live log stream are buildapi's.
//
// It is event-driven: a finished evaluation or step, a restart or a bump (in this
// coordinator or, through PostgreSQL NOTIFY, any other on the same database), a new
// agent or a freed slot wakes it at once; the periodic sweep is only a safety net.
package buildqueue

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fc-ci/fc/coordinator/fleet"
	"github.com/fc-ci/fc/coordinator/lease"
	"github.com/fc-ci/fc/coordinator/logs"
	"github.com/fc-ci/fc/coordinator/metrics"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// Config configures the scheduler.
type Config struct {
	// Leases keeps the steps' leases (required; the evaluation scheduler shares it).
	Leases          *lease.Keeper
	SweepInterval   time.Duration
	UnsupportedWait time.Duration
	BuildTimeout    time.Duration // for steps whose job sets no meta.timeout
	MaxSilent       time.Duration // for steps whose job sets no meta.maxSilent
	MaxLogSize      int64
	MaxOutputSize   int64
	// Substituters are the upstream caches agents may substitute from besides the
	// coordinator's own; TrustedKeys are the coordinator's cache key, then theirs.
	Substituters []string
	TrustedKeys  []string
	Logs         logs.Store
	// Hub wakes live log viewers; nil: a private one.
	Hub *logs.Hub
	// Sign signs a step's outputs, uploaded by its builder and held back until then,
	// when its success is recorded: from that commit on the cache serves them.
	Sign storage.Signer
	// Dispatcher is the agent sessions connected here (the fleet); nil: no step is
	// handed out.
	Dispatcher Dispatcher
	// Metrics records dispatch latency, step durations and log bytes; nil: none.
	Metrics *metrics.Metrics
	Logger  *slog.Logger
}

// Builds is the build scheduler.
type Builds struct {
	cfg   Config
	db    *storage.DB
	fleet Dispatcher
	log   *slog.Logger
	wake  chan struct{}

	mu       sync.Mutex
	lowDisk  map[int64]bool          // agents that said they are short of disk
	stepTime map[int64]time.Duration // per agent, a moving average of how long its steps build
	shares   shareCache

	finishQ       chan *finishReq // reports waiting for a finisher (finish.go)
	finishing     atomic.Bool     // the finishers run
	finishersGone chan struct{}   // closed once they stopped
}

// An agent is handed all its step slots only while its steps are quick: the steps
// beyond its builds wait in its batches, which is what hides the Nix process starts
// of trivial steps, but would leave slow steps waiting on one agent while another
// could build them. Until its steps prove quick (or once they turn slow), an agent
// gets twice its builds. stepTimeWeight is the weight of the newest step in the
// average.
const (
	quickStep      = time.Second
	stepTimeWeight = 0.25
)

// observeStep adds how long one of the agent's steps built to its average.
func (b *Builds) observeStep(agentID int64, d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if avg, ok := b.stepTime[agentID]; ok {
		d = time.Duration(float64(avg)*(1-stepTimeWeight) + float64(d)*stepTimeWeight)
	}
	b.stepTime[agentID] = d
}

// depth is how many steps the agent may hold at once (see quickStep).
func (b *Builds) depth(agentID int64, caps protocol.Capabilities) int {
	b.mu.Lock()
	avg, ok := b.stepTime[agentID]
	b.mu.Unlock()
	if ok && avg < quickStep {
		return caps.StepSlots()
	}
	return min(caps.StepSlots(), 2*max(caps.MaxJobs, 1))
}

// New returns the scheduler; Run starts it. Attach it to the fleet with Hooks.
func New(cfg Config, db *storage.DB) *Builds {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = 30 * time.Second
	}
	if cfg.Hub == nil {
		cfg.Hub = logs.NewHub()
	}
	return &Builds{cfg: cfg, db: db, fleet: cfg.Dispatcher, log: cfg.Logger, wake: make(chan struct{}, 1), lowDisk: map[int64]bool{},
		stepTime: map[int64]time.Duration{}, finishQ: make(chan *finishReq, finishBacklog), finishersGone: make(chan struct{})}
}

// Wake makes the scheduler look for work now.
func (b *Builds) Wake() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// Hooks are the fleet hooks the scheduler needs.
func (b *Builds) Hooks() fleet.Hooks {
	return fleet.Hooks{
		Connected: func(int64) { b.Wake() },
		Disconnected: func(id int64) {
			b.mu.Lock()
			delete(b.lowDisk, id)
			delete(b.stepTime, id) // it learns its depth again when it comes back
			b.mu.Unlock()
		},
		Heartbeat: b.heartbeat,
	}
}

// heartbeat notes whether an agent is short of disk and has the lease keeper extend
// the leases of the steps it runs and requeue those it released; it returns the steps
// it no longer holds (the fleet tells the agent to stop them).
func (b *Builds) heartbeat(ctx context.Context, agentID int64, hb *protocol.Heartbeat) []protocol.WorkRef {
	b.mu.Lock()
	was := b.lowDisk[agentID]
	b.lowDisk[agentID] = hb.LowDisk
	b.mu.Unlock()
	if was && !hb.LowDisk {
		b.Wake()
	}
	beat := b.cfg.Leases.Heartbeat(ctx, agentID, storage.LeaseStep, hb)
	if beat.Requeued > 0 {
		b.Wake()
	}
	return beat.Lost
}

// Run schedules until ctx ends. It listens for steps made runnable through other
// coordinators on the same database.
func (b *Builds) Run(ctx context.Context) {
	go b.listen(ctx)
	go b.runFinishers(ctx)
	sweep := time.NewTicker(b.cfg.SweepInterval)
	defer sweep.Stop()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	b.sweep(ctx)
	for {
		b.dispatch(ctx)
		// A step backing off after a retry becomes runnable with no event to say so.
		wait := time.Hour
		if at, ok, err := b.db.NextRetry(ctx); err == nil && ok {
			wait = max(time.Until(at), 10*time.Millisecond)
		}
		retry.Reset(wait)
		select {
		case <-ctx.Done():
			return
		case <-sweep.C:
			b.sweep(ctx)
		case <-retry.C:
		case <-b.wake:
		}
	}
}

// listen wakes the scheduler on every notification on storage.StepsChannel,
// listening again when the connection drops.
func (b *Builds) listen(ctx context.Context) {
	b.db.Follow(ctx, time.Second, nil, b.Wake, func(err error) {
		b.log.Warn("listen for runnable steps; retrying", "err", err)
	}, storage.StepsChannel)
}

// sweep rescues expired leases and ends steps that cannot be built: on one
// coordinator at a time (the others skip their pass while it runs).
func (b *Builds) sweep(ctx context.Context) {
	if _, err := b.db.TryJob(ctx, "build-sweep", b.sweepPass); err != nil && ctx.Err() == nil {
		b.log.Warn("build sweep", "err", err)
	}
}

func (b *Builds) sweepPass(ctx context.Context) {
	b.cfg.Leases.Rescue(ctx, storage.LeaseStep)
	if n, err := b.db.UnblockSteps(ctx); err != nil {
		b.log.Warn("unblock runnable steps", "err", err)
	} else if n > 0 {
		b.log.Info("steps found runnable by the sweep", "steps", n)
	}
	if n, err := b.db.FailCachedSteps(ctx); err != nil {
		b.log.Warn("cached failures", "err", err)
	} else if n > 0 {
		b.log.Info("steps ended as cached failures", "steps", n)
	}
	if n, err := b.db.EndUnsupportedSteps(ctx, b.cfg.UnsupportedWait); err != nil {
		b.log.Warn("unsupported steps", "err", err)
	} else if n > 0 {
		b.log.Info("steps no agent can build ended unsupported_system", "steps", n)
	}
}

// push offers one claimed step to the agent; a step it declines is released.
func (b *Builds) push(ctx context.Context, agentID int64, st storage.ClaimedStep) bool {
	task := b.task(st)
	ref := protocol.WorkRef{Kind: protocol.WorkStep, ID: st.ID, Epoch: st.Epoch}
	reply, err := b.fleet.Command(ctx, agentID, protocol.Message{Type: protocol.TypeAssign,
		Assign: &protocol.Assign{Work: ref, Step: &task}})
	if err != nil || reply.Type != protocol.TypeAccept {
		reason := "no answer"
		if err != nil {
			reason = err.Error()
		} else if reply.Reject != nil {
			reason = reply.Reject.Reason
		}
		if rerr := b.cfg.Leases.Release(ctx, st.Lease); rerr != nil {
			b.log.Warn("release declined step", "step", st.ID, "err", rerr)
		}
		b.log.Info("agent declined step", "step", st.ID, "agent", agentID, "reason", reason)
		return false
	}
	b.cfg.Hub.Wake(st.ID) // viewers waiting for it to start
	b.log.Info("step assigned", "step", st.ID, "drv", st.DrvPath, "agent", agentID, "epoch", st.Epoch, "attempt", st.Attempt)
	return true
}

func (b *Builds) task(st storage.ClaimedStep) protocol.StepTask {
	t := protocol.StepTask{StepID: st.ID, DrvPath: st.DrvPath, Outputs: st.Outputs,
		TimeoutSecs: int(b.cfg.BuildTimeout / time.Second), MaxSilentSecs: int(b.cfg.MaxSilent / time.Second),
		MaxLogSize: b.cfg.MaxLogSize, MaxOutputSize: b.cfg.MaxOutputSize,
		Substituters: b.cfg.Substituters, TrustedKeys: b.cfg.TrustedKeys}
	if st.TimeoutSecs != nil && *st.TimeoutSecs > 0 {
		t.TimeoutSecs = *st.TimeoutSecs
	}
	if st.MaxSilentSecs != nil && *st.MaxSilentSecs > 0 {
		t.MaxSilentSecs = *st.MaxSilentSecs
	}
	return t
}

// StopOnAgents tells the agents holding these leases to stop (a cancel).
func (b *Builds) StopOnAgents(ctx context.Context, leases []storage.Lease) {
	if b.fleet == nil {
		return
	}
	for _, l := range leases {
		if l.AgentID == 0 {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, protocol.CommandTimeout)
		b.logEnded(l.ID, l.Epoch)
		_, err := b.fleet.Command(cctx, l.AgentID, protocol.Message{Type: protocol.TypeCancel,
			Cancel: &protocol.Cancel{Work: protocol.WorkRef{Kind: protocol.WorkStep, ID: l.ID, Epoch: l.Epoch}}})
		cancel()
		if err != nil {
			// Connected elsewhere or gone: its next heartbeat learns the lease is lost.
			b.log.Info("cancel not delivered now; the agent's next heartbeat stops it", "step", l.ID, "agent", l.AgentID, "err", err)
		}
	}
}

// logEnded finishes a step attempt's log (compressing it) and tells its viewers.
func (b *Builds) logEnded(step, epoch int64) {
	if err := b.cfg.Logs.Finish(step, epoch); err != nil {
		b.log.Warn("finish log", "step", step, "err", err)
	}
	b.cfg.Hub.Wake(step)
}
