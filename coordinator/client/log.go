package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/gorilla/websocket"
)

func runLog(ctx context.Context, c *cmdEnv, args []string) error {
	if err := wantArgs("log", args, 1, 1, "[-f] ID"); err != nil {
		return err
	}
	id, err := idArg("a build's id", args[0])
	if err != nil {
		return err
	}
	if !c.follow {
		if c.json {
			return usagef("log: --json needs -f (a stored log is text; -f --json prints the stream's JSON messages)")
		}
		return c.api.copyLog(ctx, id, c.Stdout)
	}
	status, err := c.api.follow(ctx, id, c.Stdout, c.Stderr, c.json)
	if err != nil {
		return err
	}
	if status != "succeeded" {
		return buildError{id: id, status: status}
	}
	return nil
}

// copyLog prints what is stored of a build's log.
func (a *api) copyLog(ctx context.Context, id int64, w io.Writer) error {
	u := fmt.Sprintf("%s/api/v1/builds/%d/log", a.base, id)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	a.authorize(req.Header)
	resp, err := a.http.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return errorOf(resp.StatusCode, b)
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("build %d's log: %w", id, err)
	}
	return nil
}

// streamMsg is one message of the live log WebSocket (coordinator/buildapi).
type streamMsg struct {
	Type   string `json:"type"`
	Step   int64  `json:"step"`
	Offset *int64 `json:"offset"`
	Line   *int64 `json:"line"`
	Next   int64  `json:"next"`
	Data   string `json:"data"`
	Status string `json:"status,omitempty"`
}

// Following a log: how long to wait between reconnects, and how many failed
// connection attempts in a row end it.
const (
	reconnectFirst = 250 * time.Millisecond
	reconnectMax   = 5 * time.Second
	reconnectTries = 30
	streamIdle     = 70 * time.Second // the server pings every 20 s
)

// follower prints one build's live log across reconnects: next is the byte offset
// printed up to, so a new connection asks for ?offset=next and nothing is printed
// twice or skipped.
type follower struct {
	a      *api
	id     int64
	out    io.Writer
	errw   io.Writer
	next   int64
	waited bool
	json   bool // print each message as JSON, one a line, rather than the log's text
}

// follow prints the log as it grows and returns the build's final status.
func (a *api) follow(ctx context.Context, id int64, out, errw io.Writer, asJSON bool) (string, error) {
	f := &follower{a: a, id: id, out: out, errw: errw, json: asJSON}
	delay, failures := reconnectFirst, 0
	for {
		conn, err := f.dial(ctx)
		var ae *APIError
		if errors.As(err, &ae) && ae.Status < 500 {
			return "", err // no such build, or not allowed: trying again changes nothing
		}
		var status string
		progressed := false
		if err == nil {
			before := f.next
			status, err = f.read(ctx, conn)
			progressed = f.next > before || status != ""
			conn.Close()
			if status != "" {
				return status, nil
			}
			var oe outputError
			if errors.As(err, &oe) {
				return "", err // stdout is gone: another connection cannot help
			}
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		if progressed {
			delay, failures = reconnectFirst, 0
		}
		if failures++; failures > reconnectTries {
			return "", fmt.Errorf("build %d's log: gave up after %d attempts: %w", id, reconnectTries, err)
		}
		fmt.Fprintf(errw, "fc: log stream lost at byte %d (%v); reconnecting\n", f.next, err)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, reconnectMax)
	}
}

func (f *follower) dial(ctx context.Context) (*websocket.Conn, error) {
	u := strings.Replace(f.a.base, "http", "ws", 1) + fmt.Sprintf("/api/v1/builds/%d/log/stream?offset=%d", f.id, f.next)
	h := http.Header{}
	f.a.authorize(h)
	d := websocket.Dialer{HandshakeTimeout: 30 * time.Second, Proxy: http.ProxyFromEnvironment}
	conn, resp, err := d.DialContext(ctx, u, h)
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			return nil, errorOf(resp.StatusCode, b)
		}
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}

// read prints messages until the stream ends: the final status when the build's
// step ended, "" and why when the connection broke first.
func (f *follower) read(ctx context.Context, conn *websocket.Conn) (string, error) {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	alive := func() { _ = conn.SetReadDeadline(time.Now().Add(streamIdle)) }
	conn.SetPingHandler(func(data string) error {
		alive()
		return conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(10*time.Second))
	})
	for {
		alive()
		var m streamMsg
		_, raw, err := conn.ReadMessage()
		if err != nil {
			return "", err
		}
		if err := json.Unmarshal(raw, &m); err != nil {
			return "", fmt.Errorf("decode log message: %w", err)
		}
		if f.json && m.Type != "log" {
			if err := f.print(oneLine(raw)); err != nil {
				return "", err
			}
		}
		switch m.Type {
		case "log":
			if err := f.write(m, raw); err != nil {
				return "", err
			}
		case "wait":
			if !f.waited {
				f.waited = true
				fmt.Fprintf(f.errw, "fc: build %d has not started yet; waiting\n", f.id)
			}
		case "attempt":
			if !f.json {
				fmt.Fprintf(f.errw, "fc: build %d is tried again; its log starts over\n", f.id)
			}
			f.next = 0
		case "end":
			return m.Status, nil
		}
	}
}

// write prints the part of a log message past what was printed already: its text,
// or with --json the message (as it came, unless a part of it was printed already).
func (f *follower) write(m streamMsg, raw []byte) error {
	if m.Offset == nil {
		return errors.New("a log message without its offset")
	}
	off := *m.Offset
	if off > f.next {
		return fmt.Errorf("the stream skipped from byte %d to %d", f.next, off)
	}
	end := m.Next // bytes of the stored log: the data may hold fewer where it was not UTF-8
	if end <= off {
		end = off + int64(len(m.Data))
	}
	if skip := f.next - off; skip > 0 { // already printed (never expected: we asked for next)
		if skip >= int64(len(m.Data)) {
			return nil
		}
		if m.Line != nil {
			*m.Line += int64(strings.Count(m.Data[:skip], "\n"))
		}
		next := f.next
		m.Data, m.Offset = m.Data[skip:], &next
		if f.json {
			b, err := json.Marshal(m)
			if err != nil {
				return fmt.Errorf("encode log message: %w", err)
			}
			raw = b
		}
	}
	out := []byte(m.Data)
	if f.json {
		out = oneLine(raw)
	}
	if err := f.print(out); err != nil {
		return err
	}
	f.next = end
	return nil
}

func (f *follower) print(b []byte) error {
	if _, err := f.out.Write(b); err != nil {
		return outputError{err}
	}
	return nil
}

// outputError: printing failed (a closed pipe), which ends fc log -f.
type outputError struct{ err error }

func (e outputError) Error() string { return "print the log: " + e.err.Error() }
func (e outputError) Unwrap() error { return e.err }

// oneLine is a JSON message on a line of its own.
func oneLine(raw []byte) []byte { return append(bytes.TrimRight(raw, "\r\n"), '\n') }
