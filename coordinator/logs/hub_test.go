package logs

import (
	"sync"
	"testing"
)

func TestHub_GrewWakesWithoutAChangeAndWakeSaysChanged(t *testing.T) {
	h := NewHub()
	a, b := h.Subscribe(1), h.Subscribe(1)
	other := h.Subscribe(2)
	h.Grew(1)
	h.Grew(1) // folded into the pending wake-up
	for _, s := range []*Sub{a, b} {
		select {
		case <-s.C:
		default:
			t.Fatal("a viewer was not woken")
		}
		if s.Changed() {
			t.Error("Grew said the step changed")
		}
		select {
		case <-s.C:
			t.Error("two wake-ups for two Grew calls before the viewer looked")
		default:
		}
	}
	h.Wake(1)
	<-a.C
	if !a.Changed() || a.Changed() {
		t.Error("Wake: Changed should be true once")
	}
	select {
	case <-other.C:
		t.Error("another step's viewer was woken")
	default:
	}
	if h.Viewers(1) != 2 {
		t.Errorf("viewers %d", h.Viewers(1))
	}
	a.Close()
	b.Close()
	other.Close()
	if h.Viewers(1) != 0 || len(h.steps) != 0 {
		t.Errorf("left behind: %v", h.steps)
	}
}

// Viewers at one offset share one chunk: it is made once, whoever asks first.
func TestHub_ChunkMadeOnceForEveryViewerAndBounded(t *testing.T) {
	h := NewHub()
	subs := make([]*Sub, 100)
	for i := range subs {
		subs[i] = h.Subscribe(7)
	}
	var mu sync.Mutex
	made := map[int64]int{}
	produce := func(offset int64) func() (Chunk, bool, error) {
		return func() (Chunk, bool, error) {
			mu.Lock()
			made[offset]++
			mu.Unlock()
			return Chunk{Epoch: 1, Offset: offset, Next: offset + 10, Line: offset / 10, NextLine: offset/10 + 1, Msg: offset, Size: 1 << 10}, true, nil
		}
	}
	var wg sync.WaitGroup
	for _, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := int64(0); off < 200; off += 10 {
				c, ok, err := s.Chunk(1, off, produce(off))
				if !ok || err != nil || c.Msg != off || c.Next != off+10 {
					t.Errorf("chunk at %d: %+v %v %v", off, c, ok, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for off := int64(0); off < 200; off += 10 {
		if made[off] != 1 {
			t.Errorf("chunk at %d made %d times", off, made[off])
		}
	}
	// A viewer that reconnects at a kept chunk's start or end learns its line there.
	if n := subs[0].LinesAt(1, 50); n != 5 {
		t.Errorf("lines at a chunk's start: %d, want 5", n)
	}
	if n := subs[0].LinesAt(1, 200); n != 20 {
		t.Errorf("lines at the last chunk's end: %d, want 20", n)
	}
	if n := subs[0].LinesAt(1, 55); n != -1 {
		t.Errorf("lines inside a chunk: %d, want -1 (to be counted)", n)
	}
	if n := subs[0].LinesAt(3, 50); n != -1 {
		t.Errorf("lines in an attempt with no chunk: %d, want -1", n)
	}
	// Another attempt's chunk at the same offset is another chunk.
	if c, _, _ := subs[0].Chunk(2, 0, func() (Chunk, bool, error) { return Chunk{Epoch: 2, Msg: "two"}, true, nil }); c.Msg != "two" {
		t.Errorf("epoch 2 got %v", c.Msg)
	}
	// Nothing there yet: not kept, asked again next time.
	if _, ok, _ := subs[0].Chunk(1, 500, func() (Chunk, bool, error) { return Chunk{}, false, nil }); ok {
		t.Error("an empty chunk was returned")
	}
	// Bounded: a long log keeps only the last chunks.
	for off := int64(1000); off < 1000+10*(sharedChunks+50); off += 10 {
		subs[0].Chunk(1, off, produce(off))
	}
	sv := subs[0].sv
	if len(sv.chunks) > sharedChunks || len(sv.order) != len(sv.chunks) || sv.bytes > sharedBytes {
		t.Errorf("%d chunks of %d bytes kept", len(sv.chunks), sv.bytes)
	}
	subs[1].Chunk(1, 0, produce(0))
	if made[0] != 2 {
		t.Errorf("an evicted chunk was not made again (%d)", made[0])
	}
	for _, s := range subs {
		s.Close()
	}
	if len(h.steps) != 0 {
		t.Error("the step's chunks outlived its viewers")
	}
}
