// The pool: daemons started ahead, so a build gets an open connection at once.

package nixworker

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// PoolConfig sizes a Pool.
type PoolConfig struct {
	// Size is how many daemons the pool keeps, idle and taken together (the most
	// builds that take one at once); default 1.
	Size int
	// Command runs the daemon (DefaultCommand if empty); CacheParent holds each
	// daemon's XDG_CACHE_HOME (os.TempDir() if empty).
	Command     []string
	CacheParent string
	// StopGrace is how long a daemon being stopped gets before SIGKILL (default 3 s).
	StopGrace time.Duration
	Logger    *slog.Logger
}

// Pool keeps Size daemons, idle and ready unless taken. Get takes one (starting one if none
// is ready); Put gives a healthy one back; Discard stops one whose connection is no
// longer wanted (cancelled, broken) and starts a replacement in the background.
type Pool struct {
	cfg PoolConfig

	mu       sync.Mutex
	idle     []*Process
	starting int
	taken    int
	closed   bool
	wg       sync.WaitGroup
	started  int64
}

// NewPool returns a pool; Warm starts its daemons.
func NewPool(cfg PoolConfig) *Pool {
	if cfg.Size < 1 {
		cfg.Size = 1
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 3 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Pool{cfg: cfg}
}

// Start starts one daemon synchronously and keeps it idle: a check that daemons
// work here, which the caller may use to choose another way.
func (p *Pool) Start(ctx context.Context) (*Process, error) {
	proc, err := Start(ctx, p.cfg.Command, p.cfg.CacheParent)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.started++
	p.taken++
	p.mu.Unlock()
	p.Put(proc)
	return proc, nil
}

// Started is how many daemons the pool has started.
func (p *Pool) Started() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.started
}

// Warm starts daemons in the background until Size are idle, taken or starting.
func (p *Pool) Warm() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for !p.closed && len(p.idle)+p.starting+p.taken < p.cfg.Size {
		p.starting++
		p.wg.Add(1)
		go p.startOne()
	}
}

func (p *Pool) startOne() {
	defer p.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	proc, err := Start(ctx, p.cfg.Command, p.cfg.CacheParent)
	p.mu.Lock()
	p.starting--
	if err == nil {
		p.started++
	}
	closed := p.closed
	if err == nil && !closed {
		p.idle = append(p.idle, proc)
	}
	p.mu.Unlock()
	switch {
	case err != nil:
		p.cfg.Logger.Warn("start a nix daemon ahead", "err", err)
	case closed:
		proc.Stop(p.cfg.StopGrace)
	}
}

// Get takes an idle daemon that is still alive, or starts one.
func (p *Pool) Get(ctx context.Context) (*Process, error) {
	for {
		p.mu.Lock()
		var proc *Process
		if n := len(p.idle); n > 0 {
			proc = p.idle[n-1]
			p.idle = p.idle[:n-1]
			p.taken++
		}
		p.mu.Unlock()
		if proc == nil {
			break
		}
		if proc.ExitError() == nil && proc.Conn.Err() == nil {
			return proc, nil
		}
		p.cfg.Logger.Warn("an idle nix daemon died; starting another", "pid", proc.Pid(), "err", proc.ExitError(), "stderr", proc.Stderr())
		p.Discard(proc)
	}
	proc, err := Start(ctx, p.cfg.Command, p.cfg.CacheParent)
	p.mu.Lock()
	if err == nil {
		p.started++
		p.taken++
	}
	p.mu.Unlock()
	return proc, err
}

// Put returns a daemon taken with Get whose connection is healthy and idle.
func (p *Pool) Put(proc *Process) {
	p.mu.Lock()
	p.taken--
	if !p.closed && len(p.idle)+p.starting+p.taken < p.cfg.Size && proc.Conn.Err() == nil {
		p.idle = append(p.idle, proc)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	p.stopLater(proc)
}

// Discard stops proc, taken with Get, in the background and starts a replacement.
func (p *Pool) Discard(proc *Process) {
	p.mu.Lock()
	p.taken--
	p.mu.Unlock()
	p.stopLater(proc)
	p.Warm()
}

func (p *Pool) stopLater(proc *Process) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		proc.Stop(p.cfg.StopGrace)
	}()
}

// Close stops the idle daemons and waits for the pool's goroutines; daemons taken
// with Get are the taker's to give back or stop.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, proc := range idle {
		p.stopLater(proc)
	}
	p.wg.Wait()
}
