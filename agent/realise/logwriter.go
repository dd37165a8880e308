// The limit writer: a job's log, cut exactly at the step's log limit.

package realise

import "io"

// limitWriter passes bytes on until the limit, cuts the log exactly there, and closes
// stop when the limit is passed or the writer fails. One goroutine writes to it;
// its fields are read after that goroutine has ended.
type limitWriter struct {
	w        io.Writer
	max      int64 // 0: no limit
	n        int64
	exceeded bool
	err      error
	stop     chan struct{}
	onStop   func() // called once with stop closed, if set
}

func newLimitWriter(w io.Writer, max int64) *limitWriter {
	return &limitWriter{w: w, max: max, stop: make(chan struct{})}
}

func (l *limitWriter) write(p []byte) {
	if l.exceeded || l.err != nil {
		return
	}
	if l.max > 0 && l.n+int64(len(p)) > l.max {
		p = p[:l.max-l.n]
		l.exceeded = true
	}
	if len(p) > 0 {
		n, err := l.w.Write(p)
		l.n += int64(n)
		if err == nil && n < len(p) {
			err = io.ErrShortWrite
		}
		l.err = err
	}
	if l.exceeded || l.err != nil {
		close(l.stop)
		if l.onStop != nil {
			l.onStop()
		}
	}
}
