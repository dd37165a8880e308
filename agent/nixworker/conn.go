// Package nixworker speaks Nix's worker protocol (the one nix-daemon serves on its
// socket and on `nix-daemon --stdio`) over any io.ReadWriter, and keeps a pool of
// warm `nix-daemon --stdio` processes, so a build starts on a connection that is
// already open rather than paying a Nix process start.
//
// Only what the agent needs is here: the handshake, wopSetOptions,
// wopBuildPathsWithResults, wopBuildDerivation, wopQueryPathInfo and
// wopQueryValidPaths, with the daemon's log (STDERR_NEXT, activities and their
// results) handed to a Logger as it arrives. wopBuildPathsWithResults needs
// protocol 1.34 (Nix 2.8 and later; the client announces 1.34, so a newer daemon
// answers as 2.8 does, though only 2.8 is tested here); Dial refuses older
// daemons, and the caller falls back to running nix-store.
package nixworker

import (
	"bufio"
	"errors"
	"fmt"
	"io"

	"github.com/nix-community/go-nix/pkg/wire"
)

// Protocol constants from Nix's worker-protocol.hh.
const (
	magic1 = 0x6e697863
	magic2 = 0x6478696f
	// ClientVersion is the protocol this client speaks (1.34, Nix 2.8).
	ClientVersion = 1<<8 | 34
	// MinDaemonMinor is the oldest daemon protocol minor it accepts: the first with
	// wopBuildPathsWithResults.
	MinDaemonMinor = 34

	stderrNext          = 0x6f6c6d67
	stderrRead          = 0x64617461
	stderrWrite         = 0x64617416
	stderrLast          = 0x616c7473
	stderrError         = 0x63787470
	stderrStartActivity = 0x53545254
	stderrStopActivity  = 0x53544f50
	stderrResult        = 0x52534c54

	opIsValidPath           = 1
	opSetOptions            = 19
	opQueryPathInfo         = 26
	opQueryValidPaths       = 31
	opBuildDerivation       = 36
	opBuildPathsWithResults = 46

	// maxString bounds one string from the daemon (a log line, an error, a path).
	maxString = 64 << 20
	maxCount  = 1 << 20
)

// Logger receives the daemon's log while an operation runs. Fields are uint64 or
// string, as Nix sends them.
type Logger interface {
	// Message is a log message (STDERR_NEXT), without its trailing newline.
	Message(text string)
	StartActivity(id, level, typ uint64, text string, fields []any, parent uint64)
	StopActivity(id uint64)
	Result(id, typ uint64, fields []any)
}

// ErrProtocol marks a broken connection: the daemon is gone or said something this
// client cannot read. The connection cannot be used again.
var ErrProtocol = errors.New("nix worker protocol")

// DaemonError is an error the daemon reported for an operation (STDERR_ERROR). An
// error found before the operation began (a malformed argument) also ends Nix's side
// of the connection, so callers drop a connection after one.
type DaemonError struct {
	Message string
	Status  uint64
}

func (e *DaemonError) Error() string { return e.Message }

// Conn is one connection to a Nix daemon. It runs one operation at a time; it is
// not safe for concurrent use.
type Conn struct {
	r *bufio.Reader
	w *bufio.Writer
	// DaemonVersion is the daemon's protocol version; NixVersion its Nix version
	// (empty before protocol 1.33).
	DaemonVersion uint64
	NixVersion    string
	broken        error
}

// Dial performs the handshake on rw. An error wraps ErrProtocol.
func Dial(rw io.ReadWriter) (*Conn, error) {
	c := &Conn{r: bufio.NewReaderSize(rw, 64<<10), w: bufio.NewWriterSize(rw, 16<<10)}
	if err := c.handshake(); err != nil {
		return nil, c.fail(err)
	}
	return c, nil
}

func (c *Conn) handshake() error {
	if err := wire.WriteUint64(c.w, magic1); err != nil {
		return err
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	m, err := wire.ReadUint64(c.r)
	if err != nil {
		return fmt.Errorf("read the daemon's greeting: %w", err)
	}
	if m != magic2 {
		return fmt.Errorf("not a Nix daemon (greeting %#x)", m)
	}
	if c.DaemonVersion, err = wire.ReadUint64(c.r); err != nil {
		return err
	}
	if c.DaemonVersion>>8 != 1 || c.DaemonVersion&0xff < MinDaemonMinor {
		return fmt.Errorf("daemon protocol %d.%d, need 1.%d or later (Nix 2.8)", c.DaemonVersion>>8, c.DaemonVersion&0xff, MinDaemonMinor)
	}
	// Our version, no CPU affinity, the obsolete reserveSpace.
	for _, n := range []uint64{ClientVersion, 0, 0} {
		if err := wire.WriteUint64(c.w, n); err != nil {
			return err
		}
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	if c.NixVersion, err = wire.ReadString(c.r, maxString); err != nil {
		return err
	}
	return c.processStderr(nil)
}

// fail marks the connection broken by err (wrapped in ErrProtocol) unless err is a
// DaemonError, after which the connection goes on.
func (c *Conn) fail(err error) error {
	var de *DaemonError
	if err == nil || errors.As(err, &de) {
		return err
	}
	if !errors.Is(err, ErrProtocol) {
		err = fmt.Errorf("%w: %w", ErrProtocol, err)
	}
	if c.broken == nil {
		c.broken = err
	}
	return err
}

// Err is why the connection broke, or nil.
func (c *Conn) Err() error { return c.broken }

// send writes an operation and its arguments: uint64, bool, string or []string.
func (c *Conn) send(op uint64, args ...any) error {
	if c.broken != nil {
		return c.broken
	}
	if err := wire.WriteUint64(c.w, op); err != nil {
		return c.fail(err)
	}
	for _, a := range args {
		var err error
		switch v := a.(type) {
		case uint64:
			err = wire.WriteUint64(c.w, v)
		case bool:
			err = wire.WriteBool(c.w, v)
		case string:
			err = wire.WriteString(c.w, v)
		case []string:
			err = wire.WriteUint64(c.w, uint64(len(v)))
			for _, s := range v {
				if err == nil {
					err = wire.WriteString(c.w, s)
				}
			}
		default:
			err = fmt.Errorf("cannot send %T", a)
		}
		if err != nil {
			return c.fail(err)
		}
	}
	return c.fail(c.w.Flush())
}

// processStderr reads the daemon's log messages until STDERR_LAST (nil) or
// STDERR_ERROR (a DaemonError).
func (c *Conn) processStderr(log Logger) error {
	for {
		kind, err := wire.ReadUint64(c.r)
		if err != nil {
			return c.fail(err)
		}
		switch kind {
		case stderrLast:
			return nil
		case stderrError:
			de, err := c.readError()
			if err != nil {
				return c.fail(err)
			}
			return de
		case stderrNext:
			s, err := wire.ReadString(c.r, maxString)
			if err != nil {
				return c.fail(err)
			}
			if log != nil {
				log.Message(trimNewline(s))
			}
		case stderrStartActivity:
			if err := c.readStart(log); err != nil {
				return c.fail(err)
			}
		case stderrStopActivity:
			id, err := wire.ReadUint64(c.r)
			if err != nil {
				return c.fail(err)
			}
			if log != nil {
				log.StopActivity(id)
			}
		case stderrResult:
			if err := c.readResult(log); err != nil {
				return c.fail(err)
			}
		case stderrRead, stderrWrite:
			// Only operations that stream data (adding to the store) use these.
			return c.fail(fmt.Errorf("unexpected data request %#x from the daemon", kind))
		default:
			return c.fail(fmt.Errorf("unknown message %#x from the daemon", kind))
		}
	}
}

func trimNewline(s string) string {
	if n := len(s); n > 0 && s[n-1] == '\n' {
		return s[:n-1]
	}
	return s
}

// readError reads an error as daemons of protocol 1.26 and later send it.
func (c *Conn) readError() (*DaemonError, error) {
	var de DaemonError
	if _, err := wire.ReadString(c.r, maxString); err != nil { // "Error"
		return nil, err
	}
	level, err := wire.ReadUint64(c.r)
	if err != nil {
		return nil, err
	}
	de.Status = level
	if _, err := wire.ReadString(c.r, maxString); err != nil { // name, unused
		return nil, err
	}
	if de.Message, err = wire.ReadString(c.r, maxString); err != nil {
		return nil, err
	}
	if _, err := wire.ReadUint64(c.r); err != nil { // position, always 0
		return nil, err
	}
	traces, err := c.count()
	if err != nil {
		return nil, err
	}
	for range traces {
		if _, err := wire.ReadUint64(c.r); err != nil {
			return nil, err
		}
		hint, err := wire.ReadString(c.r, maxString)
		if err != nil {
			return nil, err
		}
		de.Message += "\n" + hint
	}
	return &de, nil
}

func (c *Conn) readStart(log Logger) error {
	var n [3]uint64
	for i := range n {
		var err error
		if n[i], err = wire.ReadUint64(c.r); err != nil {
			return err
		}
	}
	text, err := wire.ReadString(c.r, maxString)
	if err != nil {
		return err
	}
	fields, err := c.readFields()
	if err != nil {
		return err
	}
	parent, err := wire.ReadUint64(c.r)
	if err != nil {
		return err
	}
	if log != nil {
		log.StartActivity(n[0], n[1], n[2], text, fields, parent)
	}
	return nil
}

func (c *Conn) readResult(log Logger) error {
	id, err := wire.ReadUint64(c.r)
	if err != nil {
		return err
	}
	typ, err := wire.ReadUint64(c.r)
	if err != nil {
		return err
	}
	fields, err := c.readFields()
	if err != nil {
		return err
	}
	if log != nil {
		log.Result(id, typ, fields)
	}
	return nil
}

func (c *Conn) readFields() ([]any, error) {
	n, err := c.count()
	if err != nil {
		return nil, err
	}
	fields := make([]any, 0, n)
	for range n {
		typ, err := wire.ReadUint64(c.r)
		if err != nil {
			return nil, err
		}
		switch typ {
		case 0:
			v, err := wire.ReadUint64(c.r)
			if err != nil {
				return nil, err
			}
			fields = append(fields, v)
		case 1:
			s, err := wire.ReadString(c.r, maxString)
			if err != nil {
				return nil, err
			}
			fields = append(fields, s)
		default:
			return nil, fmt.Errorf("unknown log field type %d", typ)
		}
	}
	return fields, nil
}

func (c *Conn) count() (uint64, error) {
	n, err := wire.ReadUint64(c.r)
	if err == nil && n > maxCount {
		err = fmt.Errorf("count %d out of range", n)
	}
	return n, err
}

func (c *Conn) readStrings() ([]string, error) {
	n, err := c.count()
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, n)
	for range n {
		s, err := wire.ReadString(c.r, maxString)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}
