package protocol

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// MaxFrameSize bounds one frame's payload; a peer announcing more is cut off before
// anything is allocated. Bulk data (logs, NARs) flows as raw bytes after a header
// frame, not inside frames.
const MaxFrameSize = 4 << 20

// ErrFrameTooLarge is returned for a frame whose announced length exceeds the limit.
var ErrFrameTooLarge = errors.New("frame exceeds the maximum frame size")

// WriteFrame writes v as one frame: a 4-byte big-endian length, then v as JSON.
func WriteFrame(w io.Writer, v any) error {
	payload, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode frame: %w", err)
	}
	if len(payload) > MaxFrameSize {
		return fmt.Errorf("encode frame of %d bytes: %w", len(payload), ErrFrameTooLarge)
	}
	buf := make([]byte, 4+len(payload))
	binary.BigEndian.PutUint32(buf, uint32(len(payload)))
	copy(buf[4:], payload)
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write frame: %w", err)
	}
	return nil
}

// ReadFramePayload reads one frame's payload, refusing lengths over max.
func ReadFramePayload(r io.Reader, max int) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if uint64(n) > uint64(max) {
		return nil, fmt.Errorf("frame of %d bytes (limit %d): %w", n, max, ErrFrameTooLarge)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(r, payload); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read frame payload: %w", err)
	}
	return payload, nil
}

// ReadFrame reads one frame into v.
func ReadFrame(r io.Reader, v any) error {
	payload, err := ReadFramePayload(r, MaxFrameSize)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(payload, v); err != nil {
		return fmt.Errorf("decode frame: %w", err)
	}
	return nil
}
