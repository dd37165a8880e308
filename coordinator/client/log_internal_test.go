package client

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// TestFollowerWrite: a message that starts before what was printed prints only the
// rest (its JSON adjusted to match); one past it is a gap, never printed.
func TestFollowerWrite(t *testing.T) {
	msg := func(off int64, data string) (streamMsg, []byte) {
		line := int64(strings.Count("line 1\nline 2\n"[:min(off, 14)], "\n"))
		m := streamMsg{Type: "log", Step: 7, Offset: &off, Line: &line, Next: off + int64(len(data)), Data: data}
		raw, _ := json.Marshal(m)
		return m, raw
	}
	for _, asJSON := range []bool{false, true} {
		var out bytes.Buffer
		f := &follower{out: &out, json: asJSON}
		for _, c := range []struct {
			off  int64
			data string
		}{{0, "line 1\n"}, {0, "line 1\n"}, {3, "e 1\nline 2\n"}} {
			m, raw := msg(c.off, c.data)
			if err := f.write(m, raw); err != nil {
				t.Fatal(err)
			}
		}
		if f.next != 14 {
			t.Errorf("json=%v: next %d, want 14", asJSON, f.next)
		}
		want := "line 1\nline 2\n"
		if asJSON {
			want = `{"type":"log","step":7,"offset":0,"line":0,"next":7,"data":"line 1\n"}` + "\n" +
				`{"type":"log","step":7,"offset":7,"line":1,"next":14,"data":"line 2\n"}` + "\n"
		}
		if out.String() != want {
			t.Errorf("json=%v: printed %q, want %q", asJSON, out.String(), want)
		}
		m, raw := msg(20, "x")
		if err := f.write(m, raw); err == nil || !strings.Contains(err.Error(), "skipped from byte 14 to 20") {
			t.Errorf("a gap: %v", err)
		}
		m.Offset = nil
		if err := f.write(m, raw); err == nil {
			t.Errorf("a message without its offset was taken")
		}
	}
}

type brokenPipe struct{}

func (brokenPipe) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

// TestFollowerWrite_OutputGone: a write that fails is an outputError, which ends
// following rather than reconnecting.
func TestFollowerWrite_OutputGone(t *testing.T) {
	f := &follower{out: brokenPipe{}}
	off := int64(0)
	err := f.write(streamMsg{Type: "log", Offset: &off, Next: 2, Data: "x\n"}, nil)
	var oe outputError
	if !errors.As(err, &oe) || f.next != 0 {
		t.Errorf("write to a broken pipe: %v, next %d", err, f.next)
	}
}
