// Receiving one path: its NAR read, decoded, hashed and checked while its blob is written.

package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/storepath"

	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// receive reads one path's compressed NAR and verifies it while writing the blob: its
// NAR hash and size, its content address when it has one (a), and that its
// references are in the cache, upstream, or staged by this stream (a pending output
// only for an output of the same step). A path that checks out is staged in g
// (committed with the group) and receive returns nil; otherwise it returns the
// rejection. broken says the stream itself failed, so nothing more can be read from
// it.
func (c *Cache) receive(ctx context.Context, pi protocol.PathInfo, a admission, upstream map[string]bool, known map[string]int64, g *uploadGroup, st io.Reader) (rejected *protocol.UploadResult, broken bool) {
	nar, rejected, broken := c.readNAR(pi, a, st)
	if rejected != nil {
		return rejected, broken
	}
	n := newNarinfo(pi, a, nar.narDigest, nar.fileDigest, nar.fileSize)
	inCache, rejected := c.checkReferences(ctx, pi, a, n.References, upstream, known, g)
	// A step's output is signed only once the step's success is recorded.
	if rejected == nil && a.pendingStep == 0 {
		sig, err := c.sign(n)
		if err != nil {
			rejected = c.reject(pi, "signing", err)
		} else {
			n.Sigs = []string{sig}
		}
	}
	if rejected != nil {
		nar.blob.Abort()
		return rejected, false
	}
	g.items = append(g.items, stagedPath{blob: nar.blob.blob, small: nar.blob.buf, name: strings.TrimPrefix(n.URL, "nar/"), n: n, refs: inCache, push: a.push})
	g.bytes += nar.fileSize
	g.staged[n.HashPart] = a.pendingStep
	return nil, false
}

// reject counts a rejection of pi, for reason, and is its result.
func (c *Cache) reject(pi protocol.PathInfo, reason string, err error) *protocol.UploadResult {
	c.m.rejections.WithLabelValues(reason).Inc()
	return &protocol.UploadResult{StorePath: pi.StorePath, Error: err.Error(), Retry: reason == "storage" || reason == "database"}
}

// receivedNAR is one path's upload, read, verified and written to its blob (not yet
// durable).
type receivedNAR struct {
	blob       *spillWriter
	narDigest  []byte // the NAR's sha256
	fileDigest []byte // the compressed file's sha256; nil for a plain NAR
	fileSize   int64
}

// readNAR reads one path's upload from st into a blob, checking its NAR hash and size
// and, when a has one, its content address on the way. On a rejection the blob is
// aborted; broken says the stream itself failed.
func (c *Cache) readNAR(pi protocol.PathInfo, a admission, st io.Reader) (_ receivedNAR, rejected *protocol.UploadResult, broken bool) {
	chunkReader := protocol.NewChunkReader(st)
	chunks, plain, err := sniffNAR(chunkReader)
	if err != nil {
		return receivedNAR{}, c.reject(pi, "truncated", fmt.Errorf("upload of %s broke off: %w", pi.StorePath, err)), true
	}
	blob := &spillWriter{store: c.blobs, buf: make([]byte, 0, 4096)}
	fileHash, fileSize := sha256.New(), &counter{}
	narHash, narSize := sha256.New(), &counter{}
	narSink := io.MultiWriter(narHash, narSize)
	var check *caCheck
	if a.ca != nil {
		check = newCACheck(*a.ca)
		defer check.Abort()
		narSink = io.MultiWriter(narHash, narSize, check)
	}
	if plain {
		// The file is the NAR: its hash is the NAR hash, taken once.
		fileHash = nil
	}
	readErr, decodeErr, writeErr := c.stream(chunks, fileHash, fileSize, blob, c.narDecoder(narSink, plain))
	if readErr != nil || decodeErr != nil || writeErr != nil {
		blob.Abort()
		if derr := chunkReader.Drain(); derr != nil || readErr != nil {
			if derr == nil {
				derr = readErr
			}
			return receivedNAR{}, c.reject(pi, "truncated", fmt.Errorf("upload of %s broke off: %w", pi.StorePath, derr)), true
		}
		if blob.err != nil {
			return receivedNAR{}, c.reject(pi, "storage", blob.err), false
		}
		err := decodeErr
		if err == nil {
			err = writeErr
		}
		return receivedNAR{}, c.reject(pi, "corrupt", fmt.Errorf("%s: compressed NAR does not decode: %w", pi.StorePath, err)), false
	}
	got := narHash.Sum(nil)
	if rejected := c.verifyNAR(pi, got, narSize.n, check); rejected != nil {
		blob.Abort()
		return receivedNAR{}, rejected, false
	}
	nar := receivedNAR{blob: blob, narDigest: got, fileSize: fileSize.n}
	if !plain {
		nar.fileDigest = fileHash.Sum(nil)
	}
	return nar, nil, false
}

// narDecoder passes an upload's bytes on to narSink as a NAR: decompressed, or as
// they are when the upload is a plain NAR.
func (c *Cache) narDecoder(narSink io.Writer, plain bool) func(io.Reader) error {
	if plain {
		return func(r io.Reader) error {
			_, err := io.Copy(narSink, r)
			return err
		}
	}
	return func(r io.Reader) error {
		err := c.decompress(r, narSink)
		if err == nil {
			// Bytes after the zstd frames would be stored but never read by Nix.
			if n, derr := io.Copy(io.Discard, r); derr != nil || n > 0 {
				err = fmt.Errorf("%d bytes after the compressed NAR", n)
			}
		}
		return err
	}
}

// verifyNAR checks the NAR received for pi, hashing to got (sha256) and size bytes
// long, against what the agent declared and, with check, against its content
// address.
func (c *Cache) verifyNAR(pi protocol.PathInfo, got []byte, size int64, check *caCheck) (rejected *protocol.UploadResult) {
	want, _ := checkInfo(pi)
	if size != pi.NarSize {
		return c.reject(pi, "size", fmt.Errorf("%s: NAR is %d bytes, declared %d", pi.StorePath, size, pi.NarSize))
	}
	if string(got) != string(want.Digest()) {
		return c.reject(pi, "hash", fmt.Errorf("%s: NAR hash is sha256:%s, declared %s", pi.StorePath, nixbase32.EncodeToString(got), pi.NarHash))
	}
	if check != nil {
		if err := check.Finish(got); err != nil {
			return c.reject(pi, "content_address", fmt.Errorf("%s: %w", pi.StorePath, err))
		}
	}
	return nil
}

// checkReferences checks that pi's references (refs: their basenames) are in the
// cache, upstream, or staged by this stream (known, g), a pending output only for an
// output of the same step. inCache is the hash parts of those not upstream and not
// pi itself.
func (c *Cache) checkReferences(ctx context.Context, pi protocol.PathInfo, a admission, refs []string, upstream map[string]bool, known map[string]int64, g *uploadGroup) (inCache []string, rejected *protocol.UploadResult) {
	// staged says whether this stream staged h, and whether that may be referred to
	// from here: a pending output only from an output of the same step.
	staged := func(h string) (found, ok bool) {
		step, found := g.staged[h]
		if !found {
			step, found = known[h]
		}
		return found, step == 0 || step == a.pendingStep
	}
	var lookup []string
	for _, r := range pi.References {
		h := hashPart(r)
		if r == pi.StorePath || upstream[h] {
			continue
		}
		inCache = append(inCache, h)
		found, ok := staged(h)
		if found && !ok {
			return nil, c.reject(pi, "missing_reference", fmt.Errorf("%s: reference %s is an output of another step, not yet built", pi.StorePath, r))
		}
		if !found {
			lookup = append(lookup, h)
		}
	}
	if len(lookup) > 0 {
		present, err := c.db.PresentHashParts(ctx, lookup)
		if err != nil {
			return nil, c.reject(pi, "database", err)
		}
		for _, h := range lookup {
			if !present[h] {
				return nil, c.reject(pi, "missing_reference", fmt.Errorf("%s: reference %s is neither in the cache nor upstream; send it first", pi.StorePath, storepath.StoreDir+"/"+refByHash(refs, h)))
			}
		}
	}
	return inCache, nil
}

// newNarinfo is the narinfo of a received path whose NAR hashes to narDigest (its
// sha256), stored compressed as a file hashing to fileDigest, or plain when
// fileDigest is nil. Blobs are named by their content's hash: the same bytes, the
// same name. It carries no signature yet.
func newNarinfo(pi protocol.PathInfo, a admission, narDigest, fileDigest []byte, fileSize int64) storage.Narinfo {
	fh, name, compression := nixbase32.EncodeToString(narDigest), "", "none"
	if fileDigest == nil {
		name = fh + ".nar"
	} else {
		fh = nixbase32.EncodeToString(fileDigest)
		name, compression = fh+".nar.zst", "zstd"
	}
	refs := make([]string, 0, len(pi.References))
	for _, r := range pi.References {
		refs = append(refs, basename(r))
	}
	n := storage.Narinfo{HashPart: hashPart(pi.StorePath), StorePath: pi.StorePath, URL: "nar/" + name,
		Compression: compression, FileHash: "sha256:" + fh, FileSize: fileSize, NarHash: "sha256:" + nixbase32.EncodeToString(narDigest),
		NarSize: pi.NarSize, References: refs, Deriver: basename(pi.Deriver), Sigs: []string{}, PendingStep: a.pendingStep}
	if a.ca != nil {
		n.CA = a.ca.String()
	}
	return n
}

// refByHash finds the basename with hash part h among refs.
func refByHash(refs []string, h string) string {
	for _, r := range refs {
		if strings.HasPrefix(r, h) {
			return r
		}
	}
	return h
}

// smallBlob is the compressed size up to which a NAR is kept in PostgreSQL, with its
// narinfo, rather than as a file: see migrations/00003_small_blobs.sql.
const smallBlob = 64 << 10

// spillWriter keeps a blob in memory while it is small and moves it into the blob
// store once it outgrows smallBlob.
type spillWriter struct {
	store BlobStore
	buf   []byte
	blob  BlobWriter
	err   error // the blob store's, as opposed to the stream's
}

func (w *spillWriter) Write(p []byte) (int, error) {
	if w.blob == nil {
		if len(w.buf)+len(p) <= smallBlob {
			w.buf = append(w.buf, p...)
			return len(p), nil
		}
		b, err := w.store.Create()
		if err == nil {
			_, err = b.Write(w.buf)
		}
		if err != nil {
			if b != nil {
				b.Abort()
			}
			w.err = err
			return 0, err
		}
		w.blob, w.buf = b, nil
	}
	n, err := w.blob.Write(p)
	if err != nil {
		w.err = fmt.Errorf("write blob: %w", err)
	}
	return n, err
}

func (w *spillWriter) Abort() {
	if w.blob != nil {
		w.blob.Abort()
	}
}

type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// narMagic is how every NAR begins (the length-prefixed, padded string
// "nix-archive-1"); a zstd frame begins with 28 b5 2f fd, so one is never taken for
// the other.
var narMagic = []byte("\x0d\x00\x00\x00\x00\x00\x00\x00nix-archive-1\x00\x00\x00")

// sniffNAR reads the start of an upload: plain says it is an uncompressed NAR
// rather than zstd. r reads the whole upload, that start included.
func sniffNAR(chunks io.Reader) (r io.Reader, plain bool, err error) {
	head := make([]byte, len(narMagic))
	n, err := io.ReadFull(chunks, head)
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		return nil, false, err
	}
	head = head[:n]
	return io.MultiReader(bytes.NewReader(head), chunks), bytes.Equal(head, narMagic), nil
}

// stream reads one upload's bytes from chunks: it hashes (when fileHash is not nil)
// and counts them, writes them to w and passes them to decode. A small upload is
// handled inline; a large one in stages side by side (see stages.go). readErr is the
// stream's.
func (c *Cache) stream(chunks io.Reader, fileHash hash.Hash, size *counter, w io.Writer, decode func(io.Reader) error) (readErr, decodeErr, writeErr error) {
	first := c.blocks.Get().(*block)
	n, err := io.ReadFull(chunks, first.data)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		// All of it fits in one block.
		data := first.data[:n]
		if fileHash != nil {
			fileHash.Write(data)
		}
		size.n += int64(n)
		_, writeErr = w.Write(data)
		decodeErr = decode(bytes.NewReader(data))
		first.refs.Store(1)
		first.release()
		return nil, decodeErr, writeErr
	}
	if err != nil {
		first.refs.Store(1)
		first.release()
		return err, nil, nil
	}
	// The file hash is taken beside the write, off this goroutine, which only reads.
	sink := io.MultiWriter(size, w)
	if fileHash != nil {
		sink = io.MultiWriter(fileHash, size, w)
	}
	wc := startWriter(sink)
	dc := startReader(func(r *chanReader) error { return decode(r) })
	send := func(b *block, n int) {
		b.data = b.data[:n]
		b.refs.Store(2)
		wc.ch <- b
		dc.ch <- b
	}
	send(first, n)
	for {
		b := c.blocks.Get().(*block)
		n, err := io.ReadFull(chunks, b.data)
		if n > 0 {
			send(b, n)
		} else {
			b.refs.Store(1)
			b.release()
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			readErr = err
			break
		}
	}
	close(wc.ch)
	close(dc.ch)
	decodeErr, writeErr = <-dc.done, <-wc.done
	if readErr != nil && decodeErr == nil {
		decodeErr = errStageFailed
	}
	return readErr, decodeErr, writeErr
}

func (c *Cache) decompress(r io.Reader, w io.Writer) error {
	dec, _ := c.decoders.Get().(*zstd.Decoder)
	if dec == nil {
		var err error
		dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(false))
		if err != nil {
			return err
		}
	}
	if err := dec.Reset(r); err != nil {
		return err
	}
	_, err := io.Copy(w, dec)
	_ = dec.Reset(nil)
	c.decoders.Put(dec)
	return err
}
