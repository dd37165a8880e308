package buildapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"

	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/coordinator/logs"
	"github.com/fc-ci/fc/storage"
)

// logMessage is one WebSocket message of a live log. Offsets are bytes of the stored
// log: a client that reconnects with ?offset=<next> continues with no gap and no
// duplicate.
type logMessage struct {
	Type string `json:"type"` // "log", "wait" (not started), "attempt" (a new attempt restarts the log), "end"
	Step int64  `json:"step"`
	// Offset and Line are on every "log" message, the first (at 0) too.
	Offset *int64 `json:"offset,omitempty"`
	Line   *int64 `json:"line,omitempty"` // lines before Offset: the first line of Data is Line+1
	Next   int64  `json:"next,omitempty"`
	Data   string `json:"data,omitempty"`
	Status string `json:"status,omitempty"`
	Code   *int   `json:"status_code,omitempty"`
}

// Live-log tuning.
const (
	streamChunk   = 64 << 10
	pingEvery     = 20 * time.Second // a viewer that does not answer a ping within writeTimeout is dropped
	writeTimeout  = 10 * time.Second // a viewer that cannot take a message this long is dropped
	statusRecheck = 10 * time.Second // safety net for changes no wake-up announces
	// clusterRecheck is statusRecheck where another coordinator may run the step.
	clusterRecheck = time.Second
)

// Write buffers are pooled: an idle viewer holds none (1,000 idle viewers cost ~175 KB
// each with a buffer per connection).
var upgrader = websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: streamChunk + 1024, WriteBufferPool: &sync.Pool{}}

// streamLog serves GET /builds/{id}/log/stream: a WebSocket that sends the log of
// the build's step (or ?step=) from ?offset=N or the last ?tail=N lines, follows it
// while the step runs, and ends with a final message when the step ends.
func (b *Builds) streamLog(w http.ResponseWriter, r *http.Request) {
	_, step, err := b.logStep(r)
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	if b.forward(w, r, step) {
		return
	}
	offset, err := offsetQuery(r)
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	tail, err := httpkit.PositiveQuery(r, "tail")
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	conn, err := upgrader.Upgrade(w, r, http.Header{"X-Accel-Buffering": {"no"}})
	if err != nil {
		return // the upgrader answered the client
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // control frames need a reader; a closed connection ends the stream
		defer cancel()
		conn.SetReadLimit(1024)
		// A viewer must answer each ping in time (browsers do by themselves): one that
		// stops answering is gone, though its connection may look open for minutes.
		alive := func(string) error { return conn.SetReadDeadline(time.Now().Add(pingEvery + writeTimeout)) }
		_ = alive("")
		conn.SetPongHandler(alive)
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				return
			}
		}
	}()
	f := follower{b: b, conn: conn, step: step.ID, epoch: step.LeaseEpoch, offset: offset, lines: -1, relay: b.relay(r)}
	if tail > 0 && offset == 0 {
		f.offset = f.tailOffset(int(tail))
	}
	if err := f.run(ctx); err != nil && ctx.Err() == nil {
		b.log.Debug("log stream ended", "step", step.ID, "err", err)
	}
}

// follower sends one step's log to one viewer.
type follower struct {
	b      *Builds
	conn   *websocket.Conn
	step   int64
	epoch  int64
	offset int64
	lines  int64 // newlines before offset; -1 until counted
	waited bool
	ended  bool // the step's attempt has ended: its log is read as finished
	// relay follows the rest of a step that started running on another member's
	// agent through that member (see Builds.relay); nil: never.
	relay func(ctx context.Context, st storage.StepInfo, offset int64) *websocket.Conn
}

// readBufs are the followers' read buffers, taken only while there is something to send.
var readBufs = sync.Pool{New: func() any { b := make([]byte, streamChunk+streamChunk/4); return &b }}

// chunkLimit is where the chunk at offset may end at the latest: the first multiple of
// streamChunk at least a quarter chunk past offset. Chunks end on the last newline
// before it, a place that depends on the log alone: viewers that started at different
// offsets, or were woken at different moments, meet on the same chunk boundaries
// after one chunk and share what follows (logs.Hub).
func chunkLimit(offset int64) int64 {
	return (offset + streamChunk/4 + streamChunk - 1) / streamChunk * streamChunk
}

func (f *follower) send(m logMessage) error {
	_ = f.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	return f.conn.WriteJSON(m)
}

func (f *follower) run(ctx context.Context) error {
	sub := f.b.cfg.Hub.Subscribe(f.step)
	defer sub.Close()
	ping := time.NewTicker(pingEvery)
	defer ping.Stop()
	every := statusRecheck
	if f.relay != nil {
		// In a cluster a step may start on another member's agent, which wakes no
		// viewer here: look more often, to take its stream up while it is young.
		every = clusterRecheck
	}
	recheck := time.NewTicker(every)
	defer recheck.Stop()
	// The step is looked up first, then only when the hub says it changed (or on the
	// recheck): a wake-up that only says the log grew costs no query, so 100 viewers
	// of a chatty build do not ask PostgreSQL 100 times per chunk.
	lookup := true
	var st storage.StepInfo
	for {
		if lookup {
			var err error
			if st, err = f.b.db.GetStep(ctx, f.step); err != nil {
				return err
			}
			f.ended = st.Status != "queued" && st.Status != "running"
			if st.LeaseEpoch != f.epoch && st.Status != "queued" {
				// Another attempt (a rescue or a restart) writes a new log from byte 0.
				if f.epoch != 0 || f.offset > 0 {
					if err := f.send(logMessage{Type: "attempt", Step: f.step}); err != nil {
						return err
					}
				}
				f.epoch, f.offset, f.lines = st.LeaseEpoch, 0, 0
			}
			if st.Status == "running" && f.relay != nil {
				if up := f.relay(ctx, st, f.offset); up != nil {
					return f.pipe(ctx, up)
				}
			}
		}
		if err := f.sendAvailable(sub); err != nil {
			return err
		}
		if lookup {
			switch st.Status {
			case "queued":
				if !f.waited {
					f.waited = true
					if err := f.send(logMessage{Type: "wait", Step: f.step, Status: st.Status}); err != nil {
						return err
					}
				}
			case "running":
			default:
				// The report arrives after the whole log: what is stored is all there is.
				if err := f.sendAvailable(sub); err != nil {
					return err
				}
				err := f.send(logMessage{Type: "end", Step: f.step, Status: st.Status, Code: st.StatusCode, Next: f.offset})
				_ = f.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "step ended"),
					time.Now().Add(time.Second))
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-sub.C:
			lookup = sub.Changed()
		case <-recheck.C:
			lookup = true
		case <-ping.C:
			lookup = false
			if err := f.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(writeTimeout)); err != nil {
				return err
			}
		}
	}
}

// sendAvailable sends what is stored past the viewer's offset, in chunks shared with
// the step's other viewers (see logs.Hub): each is read and encoded once.
func (f *follower) sendAvailable(sub *logs.Sub) error {
	if f.epoch == 0 {
		return nil
	}
	// The stored log, opened when a chunk is to be made (or lines counted) here.
	var r io.ReadSeekCloser
	defer func() {
		if r != nil {
			r.Close()
		}
	}()
	open := func() (bool, error) {
		if r != nil {
			return true, nil
		}
		var err error
		r, err = f.openLog()
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return err == nil, err
	}
	if f.lines < 0 {
		// A viewer that comes back where it left off is usually on a shared chunk's
		// boundary; otherwise the lines before its offset are counted once.
		f.lines = sub.LinesAt(f.epoch, f.offset)
	}
	if f.lines < 0 {
		if ok, err := open(); !ok {
			return err
		}
		n, err := countLines(r, f.offset)
		if err != nil {
			return err
		}
		f.lines = n
	}
	for {
		c, ok, err := sub.Chunk(f.epoch, f.offset, func() (logs.Chunk, bool, error) {
			if ok, err := open(); !ok {
				return logs.Chunk{}, false, err
			}
			return f.readChunk(r)
		})
		if err != nil || !ok {
			return err
		}
		_ = f.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		if err := f.conn.WritePreparedMessage(c.Msg.(*websocket.PreparedMessage)); err != nil {
			return err
		}
		f.offset, f.lines = c.Next, c.NextLine
	}
}

// readChunk reads the chunk at the viewer's offset from r and encodes its message; ok
// is false when nothing is there yet.
func (f *follower) readChunk(r io.ReadSeeker) (logs.Chunk, bool, error) {
	if _, err := r.Seek(f.offset, io.SeekStart); err != nil {
		return logs.Chunk{}, false, err
	}
	pb := readBufs.Get().(*[]byte)
	defer readBufs.Put(pb)
	buf := (*pb)[:chunkLimit(f.offset)-f.offset]
	n, err := io.ReadFull(r, buf)
	var end int
	switch {
	case err == nil:
		// More follows: end this message on a whole line, or at least a whole
		// character, so no UTF-8 sequence is split across two JSON strings.
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			end = i + 1
		} else {
			end = wholeRunes(buf[:n])
		}
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		end = wholeRunes(buf[:n]) // a writer may be mid-character: wait for the rest
	default:
		return logs.Chunk{}, false, err
	}
	if end == 0 {
		return logs.Chunk{}, false, nil
	}
	offset, line := f.offset, f.lines
	next := offset + int64(end)
	raw, err := json.Marshal(logMessage{Type: "log", Step: f.step, Offset: &offset, Line: &line, Next: next, Data: string(buf[:end])})
	if err != nil {
		return logs.Chunk{}, false, err
	}
	pm, err := websocket.NewPreparedMessage(websocket.TextMessage, raw)
	if err != nil {
		return logs.Chunk{}, false, err
	}
	return logs.Chunk{Epoch: f.epoch, Offset: offset, Next: next, Line: line,
		NextLine: line + int64(bytes.Count(buf[:end], []byte{'\n'})), Msg: pm, Size: 2 * int64(len(raw))}, true, nil
}

// countLines is the number of newlines in the first n bytes of r.
func countLines(r io.ReadSeeker, n int64) (int64, error) {
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	var lines int64
	br := bufio.NewReaderSize(io.LimitReader(r, n), 64<<10)
	for {
		chunk, err := br.ReadSlice('\n')
		if len(chunk) > 0 && chunk[len(chunk)-1] == '\n' {
			lines++
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return lines, nil
		}
	}
}

// wholeRunes is the length of b without a trailing incomplete UTF-8 sequence (bytes
// that are not UTF-8 at all are sent as they are).
func wholeRunes(b []byte) int {
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				return i
			}
			break
		}
	}
	return len(b)
}

// openLog opens the stored log of the attempt followed.
func (f *follower) openLog() (io.ReadSeekCloser, error) {
	if f.ended {
		return f.b.cfg.Logs.OpenEnded(f.step, f.epoch)
	}
	return f.b.cfg.Logs.Open(f.step, f.epoch)
}

// tailOffset is the offset where the last n lines of the stored log begin.
func (f *follower) tailOffset(n int) int64 {
	if f.epoch == 0 {
		return 0
	}
	r, err := f.openLog()
	if err != nil {
		return 0
	}
	defer r.Close()
	starts := make([]int64, 0, n+1) // offsets of the last n+1 line starts
	br := bufio.NewReaderSize(r, 64<<10)
	var pos int64
	lineStart := true
	for {
		c, err := br.ReadByte()
		if err != nil {
			break
		}
		if lineStart {
			if len(starts) == n {
				starts = starts[1:]
			}
			starts = append(starts, pos)
			lineStart = false
		}
		pos++
		if c == '\n' {
			lineStart = true
		}
	}
	if len(starts) == 0 {
		return 0
	}
	return starts[0]
}

// offsetQuery reads ?offset=, a byte offset (0 allowed).
func offsetQuery(r *http.Request) (int64, error) {
	s := r.URL.Query().Get("offset")
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, httpkit.Unprocessable("offset", "offset must be a byte offset (an integer >= 0)")
	}
	return n, nil
}
