// A running session: the welcome, the streams an agent opens, the control loop, and commands sent to the agent.

package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

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
	cacheToken, err := f.issueCacheToken(ctx, agent.ID)
	if errors.Is(err, storage.ErrNotFound) { // revoked since the handshake
		return refuse(st, protocol.RefusedRevoked, fmt.Sprintf("agent %d was revoked", agent.ID))
	}
	if err != nil {
		_ = refuse(st, protocol.RefusedUnavailable, "coordinator database unavailable")
		return err
	}
	f.register(s)
	defer f.unregister(ctx, s)
	welcome := protocol.Welcome{AgentID: agent.ID, Name: agent.Name, Coordinator: f.cfg.CoordinatorID,
		HeartbeatSeconds: max(1, int(f.cfg.Heartbeat/time.Second)), Enrolled: enrolled,
		ProtocolVersion: protocol.Version, CoordinatorVersion: f.cfg.Version, CacheToken: cacheToken}
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

// issueCacheToken gives the agent a new cache read token, replacing the one of its
// previous session; only the hash is stored. Every session gets one, whether or not
// the cache is private: another coordinator on the same database may serve a
// private cache, and a public one ignores credentials.
func (f *Fleet) issueCacheToken(ctx context.Context, agentID int64) (string, error) {
	token, hash, err := auth.NewCacheToken()
	if err != nil {
		return "", err
	}
	if err := f.db.SetAgentCacheToken(ctx, agentID, hash); err != nil {
		return "", err
	}
	return token, nil
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

// Command sends one command to an agent over a stream the coordinator opens on the
// agent's own session, and returns the agent's reply. A cancel or drain for an agent
// connected to another coordinator of the cluster is forwarded there (an assignment
// never is: only the coordinator holding the session hands it work).
func (f *Fleet) Command(ctx context.Context, agentID int64, m protocol.Message) (protocol.Message, error) {
	reply, ok, err := f.CommandHere(ctx, agentID, m)
	if ok {
		return reply, err
	}
	if f.cfg.Remote != nil && (m.Type == protocol.TypeCancel || m.Type == protocol.TypeDrain) {
		return f.cfg.Remote.Command(ctx, agentID, m)
	}
	return protocol.Message{}, fmt.Errorf("agent %d is not connected here", agentID)
}

// CommandHere sends a command to an agent with a session on this coordinator; ok is
// false if it has none here.
func (f *Fleet) CommandHere(ctx context.Context, agentID int64, m protocol.Message) (reply protocol.Message, ok bool, err error) {
	s, ok := f.Session(agentID)
	if !ok {
		return protocol.Message{}, false, nil
	}
	reply, err = s.command(ctx, m)
	return reply, true, err
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
