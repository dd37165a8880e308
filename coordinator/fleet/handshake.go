// The handshake: the WebSocket upgrade, the control stream, the signed challenge, and a pinned key or enrollment.

package fleet

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/crypto/ssh"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

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
	k, err := protocol.ParseAgentKey(hello.PublicKey)
	if err != nil {
		return storage.Agent{}, hello, false, refuse(st, protocol.RefusedUnauthorized, "public key must be an ssh-ed25519 authorized_keys line")
	}
	pub, fp := k.Key, k.Fingerprint
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
