package protocol

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"strconv"
	"testing"
)

func TestFrame_RoundTrip(t *testing.T) {
	var buf bytes.Buffer
	in := Message{Type: TypeHello, Hello: &Hello{ProtocolVersion: Version, Name: "a1",
		Capabilities: Capabilities{Systems: []string{"x86_64-linux"}, MaxJobs: 2}}}
	if err := WriteFrame(&buf, in); err != nil {
		t.Fatal(err)
	}
	if err := WriteFrame(&buf, StreamHeader{Kind: StreamControl}); err != nil {
		t.Fatal(err)
	}
	var out Message
	if err := ReadFrame(&buf, &out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, out) {
		t.Errorf("round trip: got %+v, want %+v", out, in)
	}
	var h StreamHeader
	if err := ReadFrame(&buf, &h); err != nil || h.Kind != StreamControl {
		t.Errorf("second frame: %+v %v", h, err)
	}
	if err := ReadFrame(&buf, &h); err != io.EOF {
		t.Errorf("after the last frame: %v, want io.EOF", err)
	}
}

func TestFrame_OversizedLengthIsRefusedBeforeAllocating(t *testing.T) {
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], MaxFrameSize+1)
	_, err := ReadFramePayload(bytes.NewReader(hdr[:]), MaxFrameSize)
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("err = %v, want ErrFrameTooLarge", err)
	}
	big := Message{Type: TypeRefused, Refused: &Refused{Message: string(make([]byte, MaxFrameSize))}}
	if err := WriteFrame(io.Discard, big); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("writing an oversized frame: %v", err)
	}
}

func TestFrame_TruncatedPayloadIsAnError(t *testing.T) {
	var buf bytes.Buffer
	_ = WriteFrame(&buf, Message{Type: TypeAck})
	b := buf.Bytes()[:buf.Len()-2]
	if _, err := ReadFramePayload(bytes.NewReader(b), MaxFrameSize); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err = %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestCheckVersion(t *testing.T) {
	if err := CheckVersion(Version); err != nil {
		t.Errorf("own version refused: %v", err)
	}
	err := CheckVersion(Version + 1)
	if err == nil {
		t.Fatal("a newer version was accepted")
	}
	for _, want := range []string{strconv.Itoa(Version + 1), strconv.Itoa(Version)} {
		if !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Errorf("%q does not name version %s", err, want)
		}
	}
}
