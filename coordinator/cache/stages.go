package cache

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
)

// The receiving side of an upload does three things with every compressed byte: hash
// it (the file hash), store it (the blob), and decompress it to hash and size the NAR.
// Storing and decompressing each run in a goroutine of their own, fed through
// buffered channels, so that on a machine with spare cores a large upload costs the
// slowest of them rather than their sum (with io.Pipe, every write waited for the
// decoder). Small uploads, which fit in one block, are done inline instead.

// blockSize is how much one block carries; blocksAhead bounds the blocks in flight
// per consumer (memory: 2 x blocksAhead x blockSize per large upload at most).
const (
	blockSize   = 256 << 10
	blocksAhead = 8
)

// block is a buffer shared by the consumers; the last to release it recycles it.
type block struct {
	data []byte
	refs atomic.Int32
	pool *sync.Pool
}

func (b *block) release() {
	if b.refs.Add(-1) == 0 {
		b.data = b.data[:cap(b.data)]
		b.pool.Put(b)
	}
}

// consumer runs a function over a stream of blocks in its own goroutine.
type consumer struct {
	ch   chan *block
	done chan error
}

// startWriter writes every block to w; after an error it only releases them.
func startWriter(w io.Writer) *consumer {
	c := &consumer{ch: make(chan *block, blocksAhead), done: make(chan error, 1)}
	go func() {
		var err error
		for b := range c.ch {
			if err == nil {
				_, err = w.Write(b.data)
			}
			b.release()
		}
		c.done <- err
	}()
	return c
}

// startReader gives the blocks to fn as an io.Reader; whatever fn leaves unread is
// released, and reading it on counts as bytes after the end (see chanReader.rest).
func startReader(fn func(r *chanReader) error) *consumer {
	c := &consumer{ch: make(chan *block, blocksAhead), done: make(chan error, 1)}
	go func() {
		r := &chanReader{ch: c.ch}
		err := fn(r)
		r.drain()
		c.done <- err
	}()
	return c
}

// chanReader reads the blocks of a channel as one stream.
type chanReader struct {
	ch  chan *block
	cur *block
	off int
}

func (r *chanReader) Read(p []byte) (int, error) {
	for r.cur == nil || r.off == len(r.cur.data) {
		if r.cur != nil {
			r.cur.release()
			r.cur = nil
		}
		b, ok := <-r.ch
		if !ok {
			return 0, io.EOF
		}
		r.cur, r.off = b, 0
	}
	n := copy(p, r.cur.data[r.off:])
	r.off += n
	return n, nil
}

// drain releases every block left, current and to come.
func (r *chanReader) drain() {
	if r.cur != nil {
		r.cur.release()
		r.cur = nil
	}
	for b := range r.ch {
		b.release()
	}
}

// errStageFailed stands for the error of a consumer that gave up first.
var errStageFailed = errors.New("upload stage failed")
