// Package session is one connection from an agent to its coordinator: the WebSocket
// dial (through proxies and TLS like any HTTPS request), yamux on top, the signed
// handshake, heartbeats on the control stream, and commands the coordinator pushes
// over streams it opens. Reconnecting is the daemon's job (agent/daemon); the
// coordinator's end of the same connection is coordinator/fleet.
package session

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"

	"github.com/fc-ci/fc/agent/identity"
	"github.com/fc-ci/fc/protocol"
)

// Config describes the agent to the coordinator.
type Config struct {
	// URL is the coordinator's base URL (http:// or https://).
	URL      string
	TLS      *tls.Config
	Identity identity.Identity
	Name     string
	// NameFromHost says Name is the host name, not agent.name: enrolling with a token,
	// the agent then takes the token's name.
	NameFromHost    bool
	AgentVersion    string
	ProtocolVersion int // 0: protocol.Version; tests set others
	EnrollmentToken string
	// Purpose is "" for the daemon or protocol.PurposePush for a one-off upload.
	Purpose string
	Logger  *slog.Logger
}

// State is what the agent reports about itself at hello and in heartbeats.
type State struct {
	Capabilities  protocol.Capabilities
	Running       []protocol.WorkRef
	Draining      bool
	Load1         float64
	FreeDiskBytes int64
	LowDisk       bool // free disk under min_free_disk: steps are rejected
	// Released is work stopped by force before it finished: the coordinator requeues
	// it at once rather than when its lease expires.
	Released []protocol.WorkRef
}

// Handler answers a command from the coordinator.
type Handler func(ctx context.Context, m protocol.Message) protocol.Message

// Conn is an established, authenticated session.
type Conn struct {
	Welcome protocol.Welcome
	mux     *yamux.Session
	control *yamux.Stream
	log     *slog.Logger

	mu sync.Mutex // serialises use of the control stream
}

// ConnectURL turns the coordinator's base URL into the agent WebSocket URL.
func ConnectURL(base string) (string, error) {
	u, err := url.Parse(base)
	if err != nil {
		return "", fmt.Errorf("coordinator url: %w", err)
	}
	switch u.Scheme {
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	default:
		return "", fmt.Errorf("coordinator url %q must be http:// or https://", base)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/api/v1/agent/connect"
	return u.String(), nil
}

// Dial connects and authenticates. A *protocol.Refused error says why the coordinator
// said no (and whether retrying can help).
func Dial(ctx context.Context, cfg Config, st State) (*Conn, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	wsURL, err := ConnectURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	d := websocket.Dialer{
		Proxy:            http.ProxyFromEnvironment,
		HandshakeTimeout: protocol.HandshakeTimeout,
		TLSClientConfig:  cfg.TLS,
		ReadBufferSize:   8 << 10,
		WriteBufferSize:  64 << 10,
		WriteBufferPool:  &sync.Pool{},
	}
	hdr := http.Header{"User-Agent": {"fc-agent/" + cfg.AgentVersion}}
	ws, resp, err := d.DialContext(ctx, wsURL, hdr)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("connect to %s: %w (HTTP %s)", wsURL, err, resp.Status)
		}
		return nil, fmt.Errorf("connect to %s: %w", wsURL, err)
	}
	mux, err := yamux.Client(protocol.NetConn(ws), protocol.YamuxConfig())
	if err != nil {
		ws.Close()
		return nil, fmt.Errorf("start yamux: %w", err)
	}
	c := &Conn{mux: mux, log: cfg.Logger}
	if err := c.handshake(ctx, cfg, st); err != nil {
		mux.Close()
		return nil, err
	}
	return c, nil
}

func (c *Conn) handshake(ctx context.Context, cfg Config, st State) error {
	ctl, err := c.mux.OpenStream()
	if err != nil {
		return fmt.Errorf("open control stream: %w", err)
	}
	c.control = ctl
	// A cancelled context (drain, second signal) must end a stalled handshake now, not
	// at the handshake timeout.
	stop := context.AfterFunc(ctx, func() { _ = ctl.SetDeadline(time.Now()) })
	defer stop()
	deadline := time.Now().Add(protocol.HandshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = ctl.SetDeadline(deadline)
	version := cfg.ProtocolVersion
	if version == 0 {
		version = protocol.Version
	}
	hello := protocol.Hello{ProtocolVersion: version, AgentVersion: cfg.AgentVersion, Name: cfg.Name, NameFromHost: cfg.NameFromHost,
		PublicKey: cfg.Identity.PublicKey(cfg.Name), EnrollmentToken: cfg.EnrollmentToken,
		Capabilities: st.Capabilities, Running: st.Running, Draining: st.Draining, Purpose: cfg.Purpose}
	if err := protocol.WriteFrame(ctl, protocol.StreamHeader{Kind: protocol.StreamControl}); err != nil {
		return err
	}
	if err := protocol.WriteFrame(ctl, protocol.Message{Type: protocol.TypeHello, Hello: &hello}); err != nil {
		return err
	}
	var m protocol.Message
	for {
		if err := protocol.ReadFrame(ctl, &m); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("handshake: %w (%v)", ctx.Err(), err)
			}
			return fmt.Errorf("handshake: %w", err)
		}
		switch m.Type {
		case protocol.TypeRefused:
			if m.Refused == nil {
				return errors.New("handshake: refused without a reason")
			}
			return m.Refused
		case protocol.TypeChallenge:
			if m.Challenge == nil || len(m.Challenge.Nonce) < 16 {
				return errors.New("handshake: challenge without a proper nonce")
			}
			sig, err := cfg.Identity.Sign(protocol.ChallengeMessage(m.Challenge.Nonce))
			if err != nil {
				return fmt.Errorf("sign challenge: %w", err)
			}
			if err := protocol.WriteFrame(ctl, protocol.Message{Type: protocol.TypeSignature,
				Signature: &protocol.Signature{Format: sig.Format, Blob: sig.Blob}}); err != nil {
				return err
			}
		case protocol.TypeWelcome:
			if m.Welcome == nil {
				return errors.New("handshake: empty welcome")
			}
			c.Welcome = *m.Welcome
			_ = ctl.SetDeadline(time.Time{})
			return nil
		default:
			return fmt.Errorf("handshake: unexpected %q", m.Type)
		}
	}
}

// Heartbeat sends the agent's state and waits for the coordinator's answer; a
// cancelled ctx ends the wait at once.
func (c *Conn) Heartbeat(ctx context.Context, st State) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { _ = c.control.SetDeadline(time.Now()) })
	defer stop()
	_ = c.control.SetDeadline(time.Now().Add(protocol.CommandTimeout))
	hb := protocol.Heartbeat{Running: st.Running, Load1: st.Load1, FreeDiskBytes: st.FreeDiskBytes,
		LowDisk: st.LowDisk, Draining: st.Draining, Released: st.Released, SentAt: time.Now().UTC()}
	if err := protocol.WriteFrame(c.control, protocol.Message{Type: protocol.TypeHeartbeat, Heartbeat: &hb}); err != nil {
		return fmt.Errorf("send heartbeat: %w", err)
	}
	var m protocol.Message
	if err := protocol.ReadFrame(c.control, &m); err != nil {
		return fmt.Errorf("heartbeat answer: %w", err)
	}
	if m.Type != protocol.TypeHeartbeatAck {
		return fmt.Errorf("heartbeat answered with %q", m.Type)
	}
	return nil
}

// SendCapabilities tells the coordinator the agent's capabilities changed.
func (c *Conn) SendCapabilities(caps protocol.Capabilities) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_ = c.control.SetWriteDeadline(time.Now().Add(protocol.CommandTimeout))
	return protocol.WriteFrame(c.control, protocol.Message{Type: protocol.TypeCapabilities, Capabilities: &caps})
}

// Serve answers the coordinator's command streams until the session ends.
func (c *Conn) Serve(ctx context.Context, h Handler) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		st, err := c.mux.AcceptStream()
		if err != nil {
			if c.mux.IsClosed() {
				return errors.New("session closed")
			}
			return fmt.Errorf("accept stream: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer st.Close()
			_ = st.SetDeadline(time.Now().Add(protocol.CommandTimeout))
			var hdr protocol.StreamHeader
			if err := protocol.ReadFrame(st, &hdr); err != nil || hdr.Kind != protocol.StreamCommand {
				c.log.Warn("unexpected stream from coordinator", "kind", hdr.Kind, "err", err)
				return
			}
			var m protocol.Message
			if err := protocol.ReadFrame(st, &m); err != nil {
				c.log.Warn("read command", "err", err)
				return
			}
			reply := h(ctx, m)
			if err := protocol.WriteFrame(st, reply); err != nil {
				c.log.Warn("answer command", "type", m.Type, "err", err)
			}
		}()
	}
}

// OpenStream opens a stream of kind to the coordinator. Every read and write renews
// an idle deadline, so a stream lives while bytes move and never hangs on silence.
func (c *Conn) OpenStream(kind string) (io.ReadWriteCloser, error) {
	st, err := c.mux.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("open %s stream: %w", kind, err)
	}
	s := protocol.IdleStream(st)
	if err := protocol.WriteFrame(s, protocol.StreamHeader{Kind: kind}); err != nil {
		st.Close()
		return nil, err
	}
	return s, nil
}

// Done is closed when the session ends.
func (c *Conn) Done() <-chan struct{} { return c.mux.CloseChan() }

// Close ends the session.
func (c *Conn) Close() error { return c.mux.Close() }
