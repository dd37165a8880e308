package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// StreamUpload is opened by the agent to put store paths into the coordinator's
// cache: an UploadRequest frame, the coordinator's UploadPlan (which paths it lacks),
// then for each lacking path, in the plan's order, its NAR compressed with zstd as
// chunks (see ChunkWriter). The coordinator answers every sent path with an
// UploadResult frame once it is committed or rejected; it commits paths in groups, so
// results lag behind the data and come in bursts, in no particular order: the agent
// sends on without waiting for them. Paths go in dependency order, so a path is
// accepted only once every reference is in the cache or committed with it: a
// half-finished batch never leaves a narinfo whose references are missing.
const StreamUpload = "upload"

// PathInfo describes one store path, as `nix path-info --json` does.
type PathInfo struct {
	StorePath  string   `json:"store_path"`   // full path, /nix/store/<hash>-<name>
	NarHash    string   `json:"nar_hash"`     // sha256:<nixbase32>
	NarSize    int64    `json:"nar_size"`     // bytes of the uncompressed NAR
	References []string `json:"references"`   // full store paths
	Deriver    string   `json:"deriver"`      // full path of the .drv, or ""
	CA         string   `json:"ca,omitempty"` // content address, if any
}

// UploadRequest offers paths; Query alone asks which are missing without sending.
//
// The offer need not be a whole closure: an agent leaves out paths it has learnt the
// cache holds (UploadPlan.ReferencesChecked), and with them what only they refer to.
// The coordinator looks up the references that point outside the offer; any it
// neither holds nor finds upstream it lists in UploadPlan.Unknown, and the agent
// offers the whole closure instead.
type UploadRequest struct {
	Paths []PathInfo `json:"paths"`
	Query bool       `json:"query"`
}

// UploadPlan says which of the offered paths the agent must send, in order.
type UploadPlan struct {
	Missing []string `json:"missing"` // store paths
	// Upstream are offered paths a configured upstream cache already serves.
	Upstream []string `json:"upstream"`
	// Uncompressed says the coordinator also takes a path as its plain NAR rather than
	// a zstd stream (it tells them apart by their first bytes): worth it for data that
	// does not compress, which then costs neither side a compressor, nor the
	// coordinator a second hash.
	Uncompressed bool `json:"uncompressed,omitempty"`
	// ReferencesChecked says the coordinator looked up the references outside the
	// offer: an offer may then leave out what the cache holds. An older coordinator
	// does not set it, and needs whole closures.
	ReferencesChecked bool `json:"references_checked,omitempty"`
	// Unknown are references outside the offer that the cache neither holds nor finds
	// upstream: the offer was built on a stale belief, nothing may be sent, and the
	// whole closure must be offered again. Error says so too, for an agent that does
	// not read Unknown (one that never leaves paths out).
	Unknown []string `json:"unknown,omitempty"`
	Error   string   `json:"error,omitempty"`
}

// UploadResult is the coordinator's verdict on one sent path.
type UploadResult struct {
	StorePath string `json:"store_path"`
	OK        bool   `json:"ok"`
	Error     string `json:"error,omitempty"`
	// Retry says the coordinator could not store the path (its blob store or its
	// database failed), nothing was wrong with it: the same upload may succeed later.
	Retry    bool  `json:"retry,omitempty"`
	FileSize int64 `json:"file_size"` // compressed bytes stored
}

// MaxChunk bounds one data chunk.
const MaxChunk = 1 << 20

// ChunkWriter frames a byte stream as length-prefixed chunks ending with an empty one,
// so the reader knows where one NAR ends without knowing its compressed size.
type ChunkWriter struct {
	w   io.Writer
	hdr [4]byte
}

// NewChunkWriter writes chunks to w.
func NewChunkWriter(w io.Writer) *ChunkWriter { return &ChunkWriter{w: w} }

func (c *ChunkWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), MaxChunk)
		binary.BigEndian.PutUint32(c.hdr[:], uint32(k))
		if _, err := c.w.Write(c.hdr[:]); err != nil {
			return n, err
		}
		if _, err := c.w.Write(p[:k]); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

// Close writes the terminating empty chunk (it does not close the stream).
func (c *ChunkWriter) Close() error {
	binary.BigEndian.PutUint32(c.hdr[:], 0)
	_, err := c.w.Write(c.hdr[:])
	return err
}

// ErrChunkTooLarge is a chunk over MaxChunk.
var ErrChunkTooLarge = errors.New("chunk exceeds the maximum chunk size")

// ChunkReader reads what a ChunkWriter wrote, returning io.EOF at the empty chunk.
type ChunkReader struct {
	r    io.Reader
	left uint32
	done bool
}

// NewChunkReader reads chunks from r.
func NewChunkReader(r io.Reader) *ChunkReader { return &ChunkReader{r: r} }

func (c *ChunkReader) Read(p []byte) (int, error) {
	if c.done {
		return 0, io.EOF
	}
	if c.left == 0 {
		var hdr [4]byte
		if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
			return 0, fmt.Errorf("read chunk header: %w", noEOF(err))
		}
		c.left = binary.BigEndian.Uint32(hdr[:])
		if c.left == 0 {
			c.done = true
			return 0, io.EOF
		}
		if c.left > MaxChunk {
			return 0, ErrChunkTooLarge
		}
	}
	if uint32(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= uint32(n)
	if err != nil && !(err == io.EOF && c.left == 0) {
		return n, fmt.Errorf("read chunk: %w", noEOF(err))
	}
	return n, nil
}

// Drain consumes the rest of the chunked stream, so the next frame can be read.
func (c *ChunkReader) Drain() error {
	_, err := io.Copy(io.Discard, c)
	return err
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
