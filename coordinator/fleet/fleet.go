// Package fleet owns the coordinator's side of agent sessions: the WebSocket + yamux
// connection an agent dials, the signed-challenge handshake and enrollment, the live
// session registry, heartbeats and presence in PostgreSQL, commands pushed to agents
// over their own session, and the agents' admin API.
package fleet

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"
	"golang.org/x/crypto/ssh"

	"github.com/fc-ci/fc/coordinator/auth"
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

// connect upgrades GET /api/v1/agent/connect and runs the session until it ends.
func (f *Fleet) connect(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	closing := f.closing
	if !closing {
		f.wg.Add(1)
	}
	f.mu.Unlock()
	if closing {
		http.Error(w, "coordinator is shutting down", http.StatusServiceUnavailable)
		return
	}
	defer f.wg.Done()
	ws, err := f.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader answered already
	}
	conn := protocol.NetConn(ws)
	mux, err := yamux.Server(conn, protocol.YamuxConfig())
	if err != nil {
		conn.Close()
		return
	}
	defer mux.Close()
	remote := r.RemoteAddr
	if err := f.runSession(r.Context(), mux, remote); err != nil {
		f.log.Info("agent session ended", "remote", remote, "err", err)
	}
}

// acceptControl waits for the agent's control stream, bounded by the handshake timeout.
func acceptControl(mux *yamux.Session) (*yamux.Stream, error) {
	t := time.AfterFunc(protocol.HandshakeTimeout, func() { mux.Close() })
	defer t.Stop()
	st, err := mux.AcceptStream()
	if err != nil {
		return nil, fmt.Errorf("accept control stream: %w", err)
	}
	_ = st.SetDeadline(time.Now().Add(protocol.HandshakeTimeout))
	var h protocol.StreamHeader
	if err := protocol.ReadFrame(st, &h); err != nil {
		st.Close()
		return nil, fmt.Errorf("read stream header: %w", err)
	}
	if h.Kind != protocol.StreamControl {
		st.Close()
		return nil, fmt.Errorf("first stream is %q, want %q", h.Kind, protocol.StreamControl)
	}
	return st, nil
}

func refuse(st io.Writer, code, msg string) error {
	_ = protocol.WriteFrame(st, protocol.Message{Type: protocol.TypeRefused, Refused: &protocol.Refused{Code: code, Message: msg}})
	return &protocol.Refused{Code: code, Message: msg}
}

// handshake authenticates the agent: version, key possession (a signed nonce), then a
// pinned key or enrollment with a token.
func (f *Fleet) handshake(ctx context.Context, st *yamux.Stream, remote string) (storage.Agent, protocol.Hello, bool, error) {
	var m protocol.Message
	if err := protocol.ReadFrame(st, &m); err != nil || m.Type != protocol.TypeHello || m.Hello == nil {
		return storage.Agent{}, protocol.Hello{}, false, fmt.Errorf("read hello: %v (type %q)", err, m.Type)
	}
	hello := *m.Hello
	if err := protocol.CheckVersion(hello.ProtocolVersion); err != nil {
		f.log.Warn("agent refused: incompatible protocol", "remote", remote, "name", logName(hello.Name), "agent_protocol", hello.ProtocolVersion, "protocol", protocol.Version)
		return storage.Agent{}, hello, false, refuse(st, protocol.RefusedVersion, err.Error())
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(hello.PublicKey))
	if err != nil || pub.Type() != ssh.KeyAlgoED25519 {
		return storage.Agent{}, hello, false, refuse(st, protocol.RefusedUnauthorized, "public key must be an ssh-ed25519 authorized_keys line")
	}
	fp := ssh.FingerprintSHA256(pub)
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		return storage.Agent{}, hello, false, err
	}
	if err := protocol.WriteFrame(st, protocol.Message{Type: protocol.TypeChallenge, Challenge: &protocol.Challenge{Nonce: nonce}}); err != nil {
		return storage.Agent{}, hello, false, err
	}
	if err := protocol.ReadFrame(st, &m); err != nil || m.Type != protocol.TypeSignature || m.Signature == nil {
		return storage.Agent{}, hello, false, fmt.Errorf("read signature: %v (type %q)", err, m.Type)
	}
	if err := pub.Verify(protocol.ChallengeMessage(nonce), &ssh.Signature{Format: m.Signature.Format, Blob: m.Signature.Blob}); err != nil {
		f.log.Warn("agent refused: bad challenge signature", "remote", remote, "fingerprint", fp)
		return storage.Agent{}, hello, false, refuse(st, protocol.RefusedUnauthorized, "challenge signature does not verify with the presented key")
	}

	agent, err := f.db.AgentByFingerprint(ctx, fp)
	switch {
	case err == nil && agent.RevokedAt != nil:
		f.log.Warn("agent refused: key revoked", "remote", remote, "agent", agent.ID, "fingerprint", fp)
		return agent, hello, false, refuse(st, protocol.RefusedRevoked, fmt.Sprintf("agent %d (key %s) was revoked", agent.ID, fp))
	case err == nil:
		return agent, hello, false, nil
	case !errors.Is(err, storage.ErrNotFound):
		return storage.Agent{}, hello, false, refuse(st, protocol.RefusedUnavailable, "coordinator database unavailable")
	}
	if hello.EnrollmentToken == "" {
		f.log.Warn("agent refused: unknown key and no enrollment token", "remote", remote, "name", logName(hello.Name), "fingerprint", fp)
		return storage.Agent{}, hello, false, refuse(st, protocol.RefusedUnauthorized,
			fmt.Sprintf("key %s is not registered: give the agent an enrollment token, or have an admin register its public key", fp))
	}
	// The pinned line is the key alone: what the agent put after it is its business.
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
	var nameErr error
	agent, err = f.db.EnrollAgent(ctx, auth.HashKey(hello.EnrollmentToken), func(tokenName string) (string, error) {
		name := enrollName(hello, tokenName)
		nameErr = protocol.CheckAgentName("agent name", name)
		return name, nameErr
	}, line, fp)
	var taken *storage.AgentNameTakenError
	switch {
	case errors.Is(err, storage.ErrTokenInvalid):
		f.log.Warn("agent refused: enrollment token unknown, expired or used up", "remote", remote, "name", logName(hello.Name), "fingerprint", fp)
		return storage.Agent{}, hello, false, refuse(st, protocol.RefusedUnauthorized, "enrollment token is unknown, expired or used up")
	case nameErr != nil:
		f.log.Warn("agent refused: invalid name", "remote", remote, "name", logName(hello.Name), "fingerprint", fp, "err", nameErr)
		return storage.Agent{}, hello, false, refuse(st, protocol.RefusedInvalidName, nameErr.Error()+"; set agent.name")
	case errors.As(err, &taken):
		f.log.Warn("agent refused: name taken", "remote", remote, "name", taken.Name, "holder", taken.AgentID, "fingerprint", fp)
		return storage.Agent{}, hello, false, refuse(st, protocol.RefusedNameTaken,
			fmt.Sprintf("%v; give this agent another agent.name, or revoke agent %d", taken, taken.AgentID))
	case err != nil:
		f.log.Warn("agent enrollment failed", "remote", remote, "fingerprint", fp, "err", err)
		return storage.Agent{}, hello, false, refuse(st, protocol.RefusedUnavailable, "enrollment failed; retry later")
	}
	f.log.Info("agent enrolled", "agent", agent.ID, "name", agent.Name, "fingerprint", fp, "remote", remote)
	return agent, hello, true, nil
}

// enrollName is the name an enrolling agent gets: its own (agent.name), else the
// enrollment token's, else its host name (which an agent without agent.name sends,
// saying so).
func enrollName(h protocol.Hello, tokenName string) string {
	if h.Name != "" && !h.NameFromHost {
		return h.Name
	}
	if tokenName != "" {
		return tokenName
	}
	return h.Name
}

// logName is a name an agent sent, cut short for the log: it has not been checked.
func logName(s string) string {
	const limit = 100
	if len(s) > limit {
		return fmt.Sprintf("%s… (%d bytes)", strings.ToValidUTF8(s[:limit], ""), len(s))
	}
	return s
}

func (f *Fleet) runSession(ctx context.Context, mux *yamux.Session, remote string) error {
	st, err := acceptControl(mux)
	if err != nil {
		return err
	}
	defer st.Close()
	agent, hello, enrolled, err := f.handshake(ctx, st, remote)
	if err != nil {
		return err
	}
	ctx = context.WithoutCancel(ctx) // the request context ends with the hijack
	if hello.Purpose == protocol.PurposePush {
		return f.runPushSession(ctx, mux, st, agent, enrolled)
	}
	s := &Session{AgentID: agent.ID, Name: agent.Name, mux: mux, caps: hello.Capabilities}
	if err := f.db.AgentConnected(ctx, agent.ID, presence(f.cfg, hello)); err != nil {
		_ = refuse(st, protocol.RefusedUnavailable, "coordinator database unavailable")
		return err
	}
	f.register(s)
	defer f.unregister(ctx, s)
	welcome := protocol.Welcome{AgentID: agent.ID, Name: agent.Name, Coordinator: f.cfg.CoordinatorID,
		HeartbeatSeconds: max(1, int(f.cfg.Heartbeat/time.Second)), Enrolled: enrolled,
		ProtocolVersion: protocol.Version, CoordinatorVersion: f.cfg.Version}
	_ = st.SetWriteDeadline(time.Now().Add(protocol.CommandTimeout))
	if err := protocol.WriteFrame(st, protocol.Message{Type: protocol.TypeWelcome, Welcome: &welcome}); err != nil {
		return err
	}
	f.log.Info("agent connected", "agent", agent.ID, "name", agent.Name, "remote", remote,
		"systems", hello.Capabilities.Systems, "running", len(hello.Running), "agent_version", hello.AgentVersion)
	if agent.Draining {
		go f.notifyDrain(ctx, agent.ID, true) // an admin drained it while it was away
	}
	go f.serveStreams(ctx, mux, agent.ID)
	if f.cfg.Hooks.Connected != nil {
		f.cfg.Hooks.Connected(agent.ID)
	}
	return f.controlLoop(ctx, s, st)
}

// runPushSession serves a one-off client's streams until it hangs up; it is not a
// registered session and changes no presence.
func (f *Fleet) runPushSession(ctx context.Context, mux *yamux.Session, st *yamux.Stream, agent storage.Agent, enrolled bool) error {
	f.mu.Lock()
	if f.pushes[agent.ID] == nil {
		f.pushes[agent.ID] = map[*yamux.Session]struct{}{}
	}
	f.pushes[agent.ID][mux] = struct{}{}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.pushes[agent.ID], mux)
		if len(f.pushes[agent.ID]) == 0 {
			delete(f.pushes, agent.ID)
		}
		f.mu.Unlock()
	}()
	// A revocation that committed before the session was listed above would not
	// have closed it: look again now that it is.
	if a, err := f.db.GetAgent(ctx, agent.ID); err == nil && a.RevokedAt != nil {
		return refuse(st, protocol.RefusedRevoked, fmt.Sprintf("agent %d was revoked", agent.ID))
	}
	welcome := protocol.Welcome{AgentID: agent.ID, Name: agent.Name, Coordinator: f.cfg.CoordinatorID, Enrolled: enrolled,
		ProtocolVersion: protocol.Version, CoordinatorVersion: f.cfg.Version}
	_ = st.SetWriteDeadline(time.Now().Add(protocol.CommandTimeout))
	if err := protocol.WriteFrame(st, protocol.Message{Type: protocol.TypeWelcome, Welcome: &welcome}); err != nil {
		return err
	}
	f.log.Info("agent push session", "agent", agent.ID, "name", agent.Name)
	f.serveStreams(ctx, mux, agent.ID)
	return errors.New("push session ended")
}

// serveStreams dispatches the streams an agent opens until its session closes.
func (f *Fleet) serveStreams(ctx context.Context, mux *yamux.Session, agentID int64) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		st, err := mux.AcceptStream()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer st.Close()
			_ = st.SetReadDeadline(time.Now().Add(protocol.CommandTimeout))
			var h protocol.StreamHeader
			if err := protocol.ReadFrame(st, &h); err != nil {
				f.log.Warn("read stream header", "agent", agentID, "err", err)
				return
			}
			handler := f.cfg.Streams[h.Kind]
			if handler == nil {
				f.log.Warn("agent opened a stream of unknown kind", "agent", agentID, "kind", h.Kind)
				return
			}
			if err := handler(ctx, agentID, protocol.IdleStream(st)); err != nil {
				f.log.Warn("agent stream failed", "agent", agentID, "kind", h.Kind, "err", err)
			}
		}()
	}
}

func presence(cfg Config, h protocol.Hello) storage.AgentPresence {
	c := h.Capabilities
	return storage.AgentPresence{Coordinator: cfg.CoordinatorID, Systems: c.Systems, Features: c.Features,
		MandatoryFeatures: c.MandatoryFeatures, Roles: c.Roles, MaxJobs: c.MaxJobs, SpeedFactor: c.SpeedFactor,
		AgentVersion: h.AgentVersion, NixVersion: c.NixVersion, SelfDraining: h.Draining}
}

// controlLoop answers heartbeats and capability updates until the session dies or
// stays silent for three heartbeat intervals.
func (f *Fleet) controlLoop(ctx context.Context, s *Session, st *yamux.Stream) error {
	for {
		_ = st.SetReadDeadline(time.Now().Add(3 * f.cfg.Heartbeat))
		var m protocol.Message
		if err := protocol.ReadFrame(st, &m); err != nil {
			if errors.Is(err, io.EOF) || s.mux.IsClosed() {
				return errors.New("agent disconnected")
			}
			return fmt.Errorf("control stream: %w", err)
		}
		switch m.Type {
		case protocol.TypeHeartbeat:
			if m.Heartbeat == nil {
				continue
			}
			hb := m.Heartbeat
			revoked, err := f.heartbeat(ctx, s.AgentID, hb)
			if err != nil {
				f.log.Warn("record heartbeat", "agent", s.AgentID, "err", err)
			}
			if revoked { // revoked through another coordinator
				return errors.New("agent revoked")
			}
			if f.cfg.Hooks.Heartbeat != nil {
				for _, w := range f.cfg.Hooks.Heartbeat(ctx, s.AgentID, hb) {
					go func() { // the agent must stop work it no longer holds
						cctx, cancel := context.WithTimeout(ctx, protocol.CommandTimeout)
						defer cancel()
						_, _ = s.command(cctx, protocol.Message{Type: protocol.TypeCancel, Cancel: &protocol.Cancel{Work: w}})
					}()
				}
			}
			_ = st.SetWriteDeadline(time.Now().Add(protocol.CommandTimeout))
			if err := protocol.WriteFrame(st, protocol.Message{Type: protocol.TypeHeartbeatAck}); err != nil {
				return fmt.Errorf("ack heartbeat: %w", err)
			}
		case protocol.TypeCapabilities:
			if m.Capabilities == nil {
				continue
			}
			s.mu.Lock()
			s.caps = *m.Capabilities
			s.mu.Unlock()
			agent, err := f.db.GetAgent(ctx, s.AgentID)
			if err == nil {
				p := presence(f.cfg, protocol.Hello{Capabilities: *m.Capabilities, AgentVersion: agent.AgentVersion, Draining: agent.SelfDraining})
				err = f.db.AgentConnected(ctx, s.AgentID, p)
			}
			if err != nil {
				f.log.Warn("record capabilities", "agent", s.AgentID, "err", err)
			}
			f.log.Info("agent capabilities changed", "agent", s.AgentID, "systems", m.Capabilities.Systems, "features", m.Capabilities.Features)
		default:
			f.log.Debug("ignoring control message", "agent", s.AgentID, "type", m.Type)
		}
	}
}

func (f *Fleet) heartbeat(ctx context.Context, id int64, hb *protocol.Heartbeat) (revoked bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return f.db.AgentHeartbeat(ctx, id, f.cfg.CoordinatorID, hb.Load1, hb.FreeDiskBytes, hb.Draining)
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
// sessions (revocation). Uploads in flight then break off; one that got as far as its
// commit is refused there (the grant is checked inside the transaction).
func (f *Fleet) Disconnect(agentID int64) {
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

// Command sends one command to an agent over a stream the coordinator opens on the
// agent's own session, and returns the agent's reply.
func (f *Fleet) Command(ctx context.Context, agentID int64, m protocol.Message) (protocol.Message, error) {
	s, ok := f.Session(agentID)
	if !ok {
		return protocol.Message{}, fmt.Errorf("agent %d is not connected here", agentID)
	}
	return s.command(ctx, m)
}

func (s *Session) command(ctx context.Context, m protocol.Message) (protocol.Message, error) {
	st, err := s.mux.OpenStream()
	if err != nil {
		return protocol.Message{}, fmt.Errorf("open command stream: %w", err)
	}
	defer st.Close()
	deadline := time.Now().Add(protocol.CommandTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = st.SetDeadline(deadline)
	if err := protocol.WriteFrame(st, protocol.StreamHeader{Kind: protocol.StreamCommand}); err != nil {
		return protocol.Message{}, err
	}
	if err := protocol.WriteFrame(st, m); err != nil {
		return protocol.Message{}, err
	}
	var reply protocol.Message
	if err := protocol.ReadFrame(st, &reply); err != nil {
		return protocol.Message{}, fmt.Errorf("read reply to %s: %w", m.Type, err)
	}
	return reply, nil
}

func (f *Fleet) notifyDrain(ctx context.Context, agentID int64, on bool) {
	ctx, cancel := context.WithTimeout(ctx, protocol.CommandTimeout)
	defer cancel()
	if _, err := f.Command(ctx, agentID, protocol.Message{Type: protocol.TypeDrain, Drain: &protocol.Drain{On: on}}); err != nil {
		f.log.Debug("tell agent about drain", "agent", agentID, "err", err)
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
