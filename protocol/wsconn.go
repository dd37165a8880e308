package protocol

import (
	"io"
	"net"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/yamux"
)

// wsConn presents a WebSocket as a byte stream (net.Conn) so yamux can run over it;
// each Write is one binary message.
type wsConn struct {
	ws *websocket.Conn

	rmu sync.Mutex
	r   io.Reader

	wmu sync.Mutex
}

// NetConn wraps ws as a net.Conn.
func NetConn(ws *websocket.Conn) net.Conn { return &wsConn{ws: ws} }

func (c *wsConn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		if c.r == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				if websocket.IsCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway) {
					return 0, io.EOF
				}
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				continue
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if err == io.EOF {
			c.r = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *wsConn) Close() error {
	c.wmu.Lock()
	_ = c.ws.WriteControl(websocket.CloseMessage,
		websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	c.wmu.Unlock()
	return c.ws.Close()
}

func (c *wsConn) LocalAddr() net.Addr                { return c.ws.LocalAddr() }
func (c *wsConn) RemoteAddr() net.Addr               { return c.ws.RemoteAddr() }
func (c *wsConn) SetReadDeadline(t time.Time) error  { return c.ws.SetReadDeadline(t) }
func (c *wsConn) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }
func (c *wsConn) SetDeadline(t time.Time) error {
	if err := c.ws.SetReadDeadline(t); err != nil {
		return err
	}
	return c.ws.SetWriteDeadline(t)
}

// YamuxConfig is the multiplexer configuration both sides use. Defaults have caused
// hangs at scale (nomad#14869, yamux#142), so everything is explicit: a 1 MiB window
// per stream, write and stream-close timeouts, and yamux keepalives on top of the
// application heartbeat.
func YamuxConfig() *yamux.Config {
	c := yamux.DefaultConfig()
	c.AcceptBacklog = 256
	c.EnableKeepAlive = true
	c.KeepAliveInterval = 15 * time.Second
	c.ConnectionWriteTimeout = 30 * time.Second
	c.StreamOpenTimeout = 30 * time.Second
	c.StreamCloseTimeout = 2 * time.Minute
	c.MaxStreamWindowSize = 1 << 20
	c.LogOutput = nil
	c.Logger = discardLogger{}
	return c
}

type discardLogger struct{}

func (discardLogger) Print(...any)          {}
func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}

// Timeouts for streams: every frame read or written on a stream has a deadline.
const (
	HandshakeTimeout = 30 * time.Second
	CommandTimeout   = 30 * time.Second
	HeartbeatEvery   = 15 * time.Second
)

// IdleStream wraps a yamux stream so every read and write renews its deadline: a
// stream lives as long as bytes keep moving, but never hangs on a silent peer.
func IdleStream(st *yamux.Stream) io.ReadWriteCloser { return idleStream{st} }

type idleStream struct{ st *yamux.Stream }

func (s idleStream) Read(p []byte) (int, error) {
	_ = s.st.SetReadDeadline(time.Now().Add(StreamIdleTimeout))
	return s.st.Read(p)
}

func (s idleStream) Write(p []byte) (int, error) {
	_ = s.st.SetWriteDeadline(time.Now().Add(StreamIdleTimeout))
	return s.st.Write(p)
}

func (s idleStream) Close() error { return s.st.Close() }
