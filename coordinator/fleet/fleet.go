// Package fleet owns the coordinator's side of agent sessions: the WebSocket + yamux
// connection an agent dials, the signed-challenge handshake and enrollment, the live
// session registry, heartbeats and presence in PostgreSQL, commands pushed to agents
// over their own session, and the agents' admin API.
package fleet

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// Config configures the fleet.
type Config struct {
	// CoordinatorID names this coordinator in agents' presence rows.
	CoordinatorID string
	// Heartbeat is how often agents ping; a session silent for three of them is dead.
	Heartbeat time.Duration
	Version   string
	Logger    *slog.Logger
	// Streams handle streams agents open, by kind (e.g. protocol.StreamUpload).
	Streams map[string]StreamHandler
	// Hooks tell the schedulers about sessions; any may be nil.
	Hooks Hooks
	// Remote reaches agents connected to the other coordinators of a cluster; nil:
	// none (one coordinator).
	Remote Remote
}

// Remote reaches agents whose session is on another coordinator.
type Remote interface {
	Command(ctx context.Context, agentID int64, m protocol.Message) (protocol.Message, error)
	Disconnect(ctx context.Context, agentID int64)
}

// Hooks are called as sessions come, beat and go.
type Hooks struct {
	Connected    func(agentID int64)
	Disconnected func(agentID int64)
	// Heartbeat reports the work the agent says it runs; it returns the work whose
	// lease the agent no longer holds.
	Heartbeat func(ctx context.Context, agentID int64, hb *protocol.Heartbeat) []protocol.WorkRef
}

// CombineHooks calls each set of hooks in turn (the evaluation and build schedulers
// both follow sessions).
func CombineHooks(hs ...Hooks) Hooks {
	return Hooks{
		Connected: func(id int64) {
			for _, h := range hs {
				if h.Connected != nil {
					h.Connected(id)
				}
			}
		},
		Disconnected: func(id int64) {
			for _, h := range hs {
				if h.Disconnected != nil {
					h.Disconnected(id)
				}
			}
		},
		Heartbeat: func(ctx context.Context, id int64, hb *protocol.Heartbeat) []protocol.WorkRef {
			var lost []protocol.WorkRef
			for _, h := range hs {
				if h.Heartbeat != nil {
					lost = append(lost, h.Heartbeat(ctx, id, hb)...)
				}
			}
			return lost
		},
	}
}

// StreamHandler serves one stream an agent opened. Every read has an idle deadline.
type StreamHandler func(ctx context.Context, agentID int64, st io.ReadWriter) error

// Fleet is the registry of live agent sessions.
type Fleet struct {
	cfg      Config
	db       *storage.DB
	log      *slog.Logger
	upgrader websocket.Upgrader

	mu       sync.Mutex
	sessions map[int64]*Session
	// pushes are the one-off push sessions (fc-agent push) of each agent: not
	// registered as the agent's session, but closed with it when it is revoked.
	pushes  map[int64]map[*yamux.Session]struct{}
	closing bool
	wg      sync.WaitGroup // one per running session
}

// Session is one connected agent.
type Session struct {
	AgentID int64
	Name    string
	mux     *yamux.Session

	mu   sync.Mutex
	caps protocol.Capabilities
}

// Capabilities are what the agent advertised last.
func (s *Session) Capabilities() protocol.Capabilities {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.caps
}

// New returns an empty fleet.
func New(cfg Config, db *storage.DB) *Fleet {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = protocol.HeartbeatEvery
	}
	return &Fleet{
		cfg: cfg, db: db, log: cfg.Logger,
		sessions: map[int64]*Session{},
		pushes:   map[int64]map[*yamux.Session]struct{}{},
		upgrader: websocket.Upgrader{
			// Small read buffers and pooled write buffers: most sessions are idle, and
			// per-session buffers were most of a session's memory.
			ReadBufferSize: 8 << 10, WriteBufferSize: 64 << 10, WriteBufferPool: &sync.Pool{},
			// Agents are not browsers: they authenticate by key, not by cookie.
			CheckOrigin: func(*http.Request) bool { return true },
		},
	}
}

// Connected is the number of live sessions on this coordinator.
func (f *Fleet) Connected() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sessions)
}

// Session returns the live session of an agent.
func (f *Fleet) Session(agentID int64) (*Session, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.sessions[agentID]
	return s, ok
}

// Capabilities are what a connected agent advertised last; false if it has no live
// session here.
func (f *Fleet) Capabilities(agentID int64) (protocol.Capabilities, bool) {
	s, ok := f.Session(agentID)
	if !ok {
		return protocol.Capabilities{}, false
	}
	return s.Capabilities(), true
}

// register adds s, replacing (and closing) an older session of the same agent.
func (f *Fleet) register(s *Session) {
	f.mu.Lock()
	old := f.sessions[s.AgentID]
	f.sessions[s.AgentID] = s
	f.mu.Unlock()
	if old != nil {
		f.log.Info("agent reconnected: closing its previous session", "agent", s.AgentID)
		old.mux.Close()
	}
}

func (f *Fleet) unregister(ctx context.Context, s *Session) {
	f.mu.Lock()
	current := f.sessions[s.AgentID] == s
	if current {
		delete(f.sessions, s.AgentID)
	}
	f.mu.Unlock()
	s.mux.Close()
	if current {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := f.db.AgentDisconnected(ctx, s.AgentID, f.cfg.CoordinatorID); err != nil {
			f.log.Warn("record agent disconnected", "agent", s.AgentID, "err", err)
		}
		f.log.Info("agent disconnected", "agent", s.AgentID, "name", s.Name)
		if f.cfg.Hooks.Disconnected != nil {
			f.cfg.Hooks.Disconnected(s.AgentID)
		}
	}
}

// Disconnect closes every session of an agent at once, its daemon's and its push
// sessions (revocation), here and on the other coordinators of a cluster. Uploads in
// flight then break off; one that got as far as its commit is refused there (the
// grant is checked inside the transaction).
func (f *Fleet) Disconnect(ctx context.Context, agentID int64) {
	f.DisconnectHere(agentID)
	if f.cfg.Remote != nil {
		f.cfg.Remote.Disconnect(ctx, agentID)
	}
}

// DisconnectHere closes the agent's sessions on this coordinator.
func (f *Fleet) DisconnectHere(agentID int64) {
	f.mu.Lock()
	var muxes []*yamux.Session
	if s, ok := f.sessions[agentID]; ok {
		muxes = append(muxes, s.mux)
	}
	for m := range f.pushes[agentID] {
		muxes = append(muxes, m)
	}
	f.mu.Unlock()
	for _, m := range muxes {
		m.Close()
	}
}

// Shutdown tells every agent this coordinator is going away (they reconnect, to it or
// another one, with backoff), closes the sessions and waits for them to end.
func (f *Fleet) Shutdown(ctx context.Context) error {
	f.mu.Lock()
	f.closing = true
	sessions := make([]*Session, 0, len(f.sessions))
	for _, s := range f.sessions {
		sessions = append(sessions, s)
	}
	var pushes []*yamux.Session
	for _, ms := range f.pushes {
		for m := range ms {
			pushes = append(pushes, m)
		}
	}
	f.mu.Unlock()
	for _, m := range pushes {
		m.Close() // fc-agent push says the upload broke off; the user runs it again
	}
	var wg sync.WaitGroup
	for _, s := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			_, _ = s.command(cctx, protocol.Message{Type: protocol.TypeShutdown, Shutdown: &protocol.Shutdown{Reason: "coordinator shutting down"}})
			s.mux.Close()
		}()
	}
	wg.Wait()
	done := make(chan struct{})
	go func() { f.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("agent sessions still closing: %w", ctx.Err())
	}
}

// AgentIDs lists the agents connected here, sorted.
func (f *Fleet) AgentIDs() []int64 {
	f.mu.Lock()
	ids := make([]int64, 0, len(f.sessions))
	for id := range f.sessions {
		ids = append(ids, id)
	}
	f.mu.Unlock()
	slices.Sort(ids)
	return ids
}
