package protocol

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"testing"
	"time"
)

// Fuzz targets for what a peer can send: frames, the messages inside them, and the
// chunked streams that carry NARs. Run one longer with
// go test -run '^$' -fuzz '^FuzzFrameMessages$' -fuzztime 60s ./protocol/

// seedFrames are frames as agents and coordinators really send them.
func seedFrames() [][]byte {
	at := time.Date(2026, 11, 27, 10, 46, 1, 0, time.UTC)
	msgs := []any{
		StreamHeader{Kind: StreamControl},
		Message{Type: TypeHello, Hello: &Hello{ProtocolVersion: Version, AgentVersion: "0.1.0", Name: "builder-1",
			PublicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDf0J8mN1z2sZ0k4mQ2bJ0m0b8m7Yd3Tn9m3A0X6c5yV fc-agent",
			Capabilities: Capabilities{Systems: []string{"x86_64-linux", "i686-linux"}, Features: []string{"kvm", "big-parallel"},
				MaxJobs: 4, Slots: 64, SpeedFactor: 1, Roles: []string{RoleBuild, RoleEval}, NixVersion: "2.18.1"},
			Running: []WorkRef{{Kind: WorkStep, ID: 12, Epoch: 3}}}},
		Message{Type: TypeSignature, Signature: &Signature{Format: "ssh-ed25519", Blob: []byte{1, 2, 3, 4}}},
		Message{Type: TypeHeartbeat, Heartbeat: &Heartbeat{Running: []WorkRef{{Kind: WorkEval, ID: 7, Epoch: 1}},
			Load1: 0.5, FreeDiskBytes: 10 << 30, SentAt: at}},
		Message{Type: TypeReject, Reject: &Reject{Reason: "draining"}},
		UploadRequest{Paths: []PathInfo{{StorePath: "/nix/store/0c1jm7g8q4ib3j5wy8y1hblg1r3lzzm4-hello-2.12.1",
			NarHash: "sha256:1q0yqk4n0l5ydjbzj6yjb0ga2qmj4yqyfyq8xqyq2lw4f2r8dxqp", NarSize: 226560,
			References: []string{"/nix/store/0c1jm7g8q4ib3j5wy8y1hblg1r3lzzm4-hello-2.12.1", "/nix/store/qn3ggz5sf3hkjs2c797xf7nan3amdxmp-glibc-2.38-27"},
			Deriver:    "/nix/store/a0j9kh3hqk2v4r3i8qv5p3gyb3i7m9j8-hello-2.12.1.drv"}}},
		UploadResult{StorePath: "/nix/store/0c1jm7g8q4ib3j5wy8y1hblg1r3lzzm4-hello-2.12.1", OK: true, FileSize: 50211},
		StepReport{Work: WorkRef{Kind: WorkStep, ID: 12, Epoch: 3}, Status: StepSucceeded, LogSize: 4096,
			Products:  []BuildProduct{{Type: "file", Subtype: "doc", Path: "/nix/store/0c1jm7g8q4ib3j5wy8y1hblg1r3lzzm4-hello-2.12.1/share/doc/index.html", Name: "index.html", FileSize: 12, SHA256: "00ff"}},
			Metrics:   []BuildMetric{{Name: "tests", Value: 42, Unit: "s"}},
			StartedAt: at, FinishedAt: at.Add(time.Minute)},
		LogOpen{Work: WorkRef{Kind: WorkStep, ID: 12, Epoch: 3}},
		LogChunk{Offset: 4096, Data: []byte("building '/nix/store/a0j9kh3hqk2v4r3i8qv5p3gyb3i7m9j8-hello-2.12.1.drv'...\n"), Done: true},
		EvalReport{Work: WorkRef{Kind: WorkEval, ID: 7, Epoch: 1}, CheckoutSeconds: 0.25, EvalSeconds: 3.5},
		EvalBatch{Jobs: []EvalJob{{Attr: "hello", Name: "hello-2.12.1", DrvPath: "/nix/store/a0j9kh3hqk2v4r3i8qv5p3gyb3i7m9j8-hello-2.12.1.drv",
			Outputs: map[string]string{"out": "/nix/store/0c1jm7g8q4ib3j5wy8y1hblg1r3lzzm4-hello-2.12.1"}, System: "x86_64-linux",
			Meta: EvalMeta{Description: "A program that produces a familiar, friendly greeting", License: "GPL-3.0-or-later"}}},
			Nodes: []EvalNode{{DrvPath: "/nix/store/a0j9kh3hqk2v4r3i8qv5p3gyb3i7m9j8-hello-2.12.1.drv", System: "x86_64-linux",
				Outputs:  map[string]string{"out": "/nix/store/0c1jm7g8q4ib3j5wy8y1hblg1r3lzzm4-hello-2.12.1"},
				OutputCA: map[string]string{"out": "fixed:r:sha256:1q0yqk4n0l5ydjbzj6yjb0ga2qmj4yqyfyq8xqyq2lw4f2r8dxqp"}}},
			Errors: []EvalAttrError{{Attr: "broken", Message: "error: attribute 'x' missing"}}, Done: true},
		PresentRequest{Paths: []string{"/nix/store/0c1jm7g8q4ib3j5wy8y1hblg1r3lzzm4-hello-2.12.1"}},
	}
	var out [][]byte
	for _, m := range msgs {
		var buf bytes.Buffer
		if err := WriteFrame(&buf, m); err != nil {
			panic(err)
		}
		out = append(out, buf.Bytes())
	}
	return out
}

// FuzzReadFramePayload reads a stream of frames from arbitrary bytes: every frame
// consumes exactly its header and payload (so the next one is read from the right
// place), a length over the limit is refused after the header alone (nothing
// allocated, nothing more read), and the errors say what happened.
func FuzzReadFramePayload(f *testing.F) {
	var stream []byte
	for _, fr := range seedFrames() {
		f.Add(fr)
		stream = append(stream, fr...)
	}
	f.Add(stream)
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 2, 3})
	f.Add([]byte{0, 0, 0, 5, '{', '}'})
	f.Fuzz(func(t *testing.T, data []byte) {
		const limit = 1 << 16
		r := bytes.NewReader(data)
		for off := 0; ; {
			if r.Len() != len(data)-off {
				t.Fatalf("at offset %d the reader is at %d", off, len(data)-r.Len())
			}
			left := data[off:]
			p, err := ReadFramePayload(r, limit)
			switch {
			case len(left) == 0:
				if err != io.EOF {
					t.Fatalf("at the end of the stream: %v, want io.EOF", err)
				}
				return
			case len(left) < 4:
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("a %d-byte header: %v, want io.ErrUnexpectedEOF", len(left), err)
				}
				return
			}
			n := binary.BigEndian.Uint32(left)
			switch {
			case n > limit:
				if !errors.Is(err, ErrFrameTooLarge) || p != nil {
					t.Fatalf("a frame of %d bytes over the limit: %v", n, err)
				}
				if r.Len() != len(left)-4 {
					t.Fatalf("an oversized frame read %d bytes past its header", len(left)-4-r.Len())
				}
				return
			case uint64(len(left)-4) < uint64(n):
				if !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("a truncated payload (%d of %d bytes): %v, want io.ErrUnexpectedEOF", len(left)-4, n, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("a whole frame of %d bytes: %v", n, err)
			}
			if !bytes.Equal(p, left[4:4+n]) {
				t.Fatal("payload differs from the input bytes")
			}
			// ReadFrame consumes the same bytes whether the JSON decodes or not.
			var m Message
			rr := bytes.NewReader(left)
			if err := ReadFrame(rr, &m); err == nil && !json.Valid(p) {
				t.Fatal("ReadFrame accepted a payload that is not JSON")
			}
			if rr.Len() != len(left)-4-int(n) {
				t.Fatalf("ReadFrame consumed %d bytes of a %d-byte frame", len(left)-rr.Len(), 4+n)
			}
			off += 4 + int(n)
		}
	})
}

// frameKinds are the values a peer decodes from frames: a fuzz input picks one.
var frameKinds = []func() any{
	func() any { return new(StreamHeader) },
	func() any { return new(Message) },
	func() any { return new(UploadRequest) },
	func() any { return new(UploadPlan) },
	func() any { return new(UploadResult) },
	func() any { return new(StepReport) },
	func() any { return new(StepVerdict) },
	func() any { return new(LogOpen) },
	func() any { return new(LogAck) },
	func() any { return new(LogChunk) },
	func() any { return new(EvalReport) },
	func() any { return new(EvalBatch) },
	func() any { return new(EvalVerdict) },
	func() any { return new(PresentRequest) },
	func() any { return new(PresentAnswer) },
}

// FuzzFrameMessages decodes arbitrary payloads as each message a peer reads. A
// payload that decodes must survive the trip back: written with WriteFrame it reads
// back with ReadFrame, and writing what was read gives the same bytes again (JSON
// omits empty lists, so bytes are compared, not values), so nothing a peer accepted
// is lost or changed when it is passed on.
func FuzzFrameMessages(f *testing.F) {
	for _, fr := range seedFrames() {
		for k := range frameKinds {
			f.Add(uint8(k), fr[4:])
		}
	}
	f.Add(uint8(5), []byte(`{"started_at":"2026-11-27T10:46:01+01:00","outputs":[{"store_path":"\u0000"}]}`))
	f.Add(uint8(1), []byte(`{"type":"hello","hello":{"name":"a\ud800b","capabilities":{"max_jobs":-1,"speed_factor":1e308}}}`))
	f.Fuzz(func(t *testing.T, kind uint8, payload []byte) {
		newV := frameKinds[int(kind)%len(frameKinds)]
		v1 := newV()
		if err := ReadFrame(bytes.NewReader(frameOf(payload)), v1); err != nil {
			return
		}
		var frame bytes.Buffer
		if err := WriteFrame(&frame, v1); err != nil {
			t.Fatalf("a decoded %T does not encode: %v", v1, err)
		}
		v2 := newV()
		if err := ReadFrame(bytes.NewReader(frame.Bytes()), v2); err != nil {
			t.Fatalf("a frame WriteFrame wrote does not read back: %v", err)
		}
		var again bytes.Buffer
		if err := WriteFrame(&again, v2); err != nil || !bytes.Equal(again.Bytes(), frame.Bytes()) {
			t.Fatalf("writing the value read back gives other bytes (%v):\n%s\n%s", err, frame.Bytes()[4:], again.Bytes()[4:])
		}
	})
}

func frameOf(payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(payload)))
	return append(b, payload...)
}

// FuzzChunkReader reads arbitrary bytes as a chunked stream and compares it with the
// format: the bytes are the chunks' payloads in order, up to the empty chunk; a chunk
// over MaxChunk or a stream that ends early is an error, never io.EOF (a short NAR
// must not pass for a whole one); Drain leaves the reader just after the empty chunk.
// The same bytes written with ChunkWriter, in pieces the input chooses, read back the same.
func FuzzChunkReader(f *testing.F) {
	var real bytes.Buffer
	cw := NewChunkWriter(&real)
	_, _ = cw.Write(bytes.Repeat([]byte("nix-archive-1\x00"), 10))
	_, _ = cw.Write([]byte{0x28, 0xb5, 0x2f, 0xfd})
	_ = cw.Close()
	f.Add(real.Bytes(), uint16(7))
	f.Add([]byte{0, 0, 0, 0}, uint16(1))
	f.Add([]byte{0, 0, 0, 3, 'a', 'b', 'c', 0, 0, 0, 0, 'x'}, uint16(2))
	f.Add([]byte{0, 0x10, 0, 1}, uint16(100))
	f.Add([]byte{0, 0, 0, 5, 'a'}, uint16(0))
	f.Fuzz(func(t *testing.T, data []byte, step uint16) {
		// The format, read plainly.
		var want []byte
		wantErr, consumed := false, 0
		for {
			if len(data)-consumed < 4 {
				wantErr = true
				break
			}
			n := binary.BigEndian.Uint32(data[consumed:])
			consumed += 4
			if n == 0 {
				break
			}
			if n > MaxChunk {
				wantErr = true
				break
			}
			if uint64(len(data)-consumed) < uint64(n) {
				want = append(want, data[consumed:]...) // read, then the error
				wantErr = true
				break
			}
			want = append(want, data[consumed:consumed+int(n)]...)
			consumed += int(n)
		}
		src := bytes.NewReader(data)
		cr := NewChunkReader(src)
		buf := make([]byte, int(step)%4096+1)
		var got []byte
		var err error
		for {
			var n int
			n, err = cr.Read(buf)
			if n < 0 || n > len(buf) {
				t.Fatalf("Read returned %d for a %d-byte buffer", n, len(buf))
			}
			got = append(got, buf[:n]...)
			if err != nil {
				break
			}
			if len(got) > len(data) {
				t.Fatal("read more bytes than the stream holds")
			}
		}
		switch {
		case wantErr && err == io.EOF:
			t.Fatalf("a malformed stream ended with io.EOF after %d bytes", len(got))
		case !wantErr && err != io.EOF:
			t.Fatalf("a well-formed stream: %v", err)
		case !wantErr && src.Len() != len(data)-consumed:
			t.Fatalf("the reader stopped at %d, the empty chunk ends at %d", len(data)-src.Len(), consumed)
		}
		if !bytes.HasPrefix(want, got) || (!wantErr && !bytes.Equal(got, want)) {
			t.Fatalf("read %q, the chunks hold %q", got, want)
		}
		if !wantErr {
			if err := cr.Drain(); err != nil {
				t.Fatalf("Drain after the end: %v", err)
			}
			if n, err := cr.Read(buf); n != 0 || err != io.EOF {
				t.Fatalf("Read after the end: %d, %v", n, err)
			}
		} else if err := NewChunkReader(bytes.NewReader(data)).Drain(); err == nil {
			t.Fatal("Drain of a malformed stream succeeded")
		}

		// Writing: data in pieces of step bytes, read back whole.
		var w bytes.Buffer
		cw := NewChunkWriter(&w)
		for rest := data; len(rest) > 0; {
			k := min(len(rest), int(step)+1)
			if n, err := cw.Write(rest[:k]); n != k || err != nil {
				t.Fatalf("ChunkWriter.Write: %d, %v", n, err)
			}
			rest = rest[k:]
		}
		if err := cw.Close(); err != nil {
			t.Fatal(err)
		}
		back, err := io.ReadAll(NewChunkReader(&w))
		if err != nil || !bytes.Equal(back, data) {
			t.Fatalf("round trip: %v, %d bytes back of %d", err, len(back), len(data))
		}
		if w.Len() != 0 {
			t.Fatalf("%d bytes left after the empty chunk", w.Len())
		}
	})
}
