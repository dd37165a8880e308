package cache

import (
	"bufio"
	"bytes"
	"cmp"
	_ "crypto/md5" // hashes fixed outputs may declare (nixhash names them)
	_ "crypto/sha1"
	"crypto/sha256"
	_ "crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"slices"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/nix-community/go-nix/pkg/storepath"
)

// A content-addressed store path's name follows from its content: the coordinator
// recomputes it rather than trusting the uploader. These are Nix's rules (its
// makeStorePath, makeTextPath and makeFixedOutputPath), which go-nix does not offer
// for anything but .drv files.

// Content address methods, as narinfos and `nix path-info` write them.
const (
	caText      = "text"    // text:sha256:<h>, a file added as text (.drv files, builtins.toFile)
	caFlat      = "fixed"   // fixed:<algo>:<h>, the hash of one regular file's contents
	caRecursive = "fixed:r" // fixed:r:<algo>:<h>, the hash of the NAR
)

// contentAddress is a parsed content address.
type contentAddress struct {
	method string
	hash   *nixhash.Hash
}

// parseCA reads "text:sha256:<h>", "fixed:<algo>:<h>" or "fixed:r:<algo>:<h>", the
// hash in nixbase32, base16 or SRI form.
func parseCA(s string) (contentAddress, error) {
	var method, rest string
	switch {
	case strings.HasPrefix(s, "text:"):
		method, rest = caText, strings.TrimPrefix(s, "text:")
	case strings.HasPrefix(s, "fixed:r:"):
		method, rest = caRecursive, strings.TrimPrefix(s, "fixed:r:")
	case strings.HasPrefix(s, "fixed:"):
		method, rest = caFlat, strings.TrimPrefix(s, "fixed:")
	default:
		return contentAddress{}, fmt.Errorf("content address %q: unknown method", s)
	}
	h, err := parseHash(rest)
	if err != nil {
		return contentAddress{}, fmt.Errorf("content address %q: %w", s, err)
	}
	if method == caText && h.Algo() != nixhash.SHA256 {
		return contentAddress{}, fmt.Errorf("content address %q: text hashes are sha256", s)
	}
	return contentAddress{method: method, hash: &h.Hash}, nil
}

// parseHash reads "<algo>:<h>" (h in nixbase32, base16 or base64) or SRI "<algo>-<h>".
// go-nix tells the encodings apart by length and decodes base64 without requiring
// its padding, so 44 characters of unpadded base64 make a 33-byte "sha256" digest:
// a digest of the wrong size is refused here.
func parseHash(s string) (*nixhash.HashWithEncoding, error) {
	h, err := nixhash.ParseAny(s, nil)
	if err != nil {
		return nil, err
	}
	if got, want := len(h.Digest()), h.Algo().Func().Size(); got != want {
		return nil, fmt.Errorf("hash %q: %d bytes, a %s digest has %d", s, got, h.Algo(), want)
	}
	return h, nil
}

// String is the address as Nix writes it in a narinfo (nixbase32).
func (ca contentAddress) String() string {
	return ca.method + ":" + ca.hash.Format(nixhash.NixBase32, true)
}

// storePath is the path Nix gives content with this address, named name, with
// references refs (full store paths; the path itself among them marks a
// self-reference, which only recursive sha256 paths may have).
func (ca contentAddress) storePath(name string, refs []string, self string) (string, error) {
	others := make([]string, 0, len(refs))
	hasSelf := false
	for _, r := range refs {
		if r == self {
			hasSelf = true
			continue
		}
		others = append(others, r)
	}
	slices.Sort(others)
	others = slices.Compact(others)
	withRefs := func(typ string) string {
		for _, r := range others {
			typ += ":" + r
		}
		if hasSelf {
			typ += ":self"
		}
		return typ
	}
	switch {
	case ca.method == caText:
		if hasSelf {
			return "", errors.New("a text path cannot refer to itself")
		}
		return makeStorePath(withRefs("text"), ca.hash, name), nil
	case ca.method == caRecursive && ca.hash.Algo() == nixhash.SHA256:
		return makeStorePath(withRefs("source"), ca.hash, name), nil
	default:
		if len(others) > 0 || hasSelf {
			return "", errors.New("a fixed-output path hashed other than recursively with sha256 cannot have references")
		}
		prefix := ""
		if ca.method == caRecursive {
			prefix = "r:"
		}
		inner := sha256.Sum256([]byte("fixed:out:" + prefix + base16(ca.hash) + ":"))
		return makeStorePath("output:out", nixhash.MustNewHash(nixhash.SHA256, inner[:]), name), nil
	}
}

func base16(h *nixhash.Hash) string { return h.Algo().String() + ":" + hex.EncodeToString(h.Digest()) }

// makeStorePath is Nix's: the sha256 of "<type>:<algo>:<base16 hash>:<store dir>:<name>",
// compressed to 20 bytes, in nixbase32.
func makeStorePath(typ string, h *nixhash.Hash, name string) string {
	sum := sha256.Sum256([]byte(typ + ":" + base16(h) + ":" + storepath.StoreDir + ":" + name))
	return storepath.StoreDir + "/" + nixbase32.EncodeToString(nixhash.CompressHash(sum[:], 20)) + "-" + name
}

// pathName is the name part of a store path (after "<hash>-").
func pathName(p string) string {
	base := basename(p)
	if len(base) < 34 {
		return ""
	}
	return base[33:]
}

// checkCAPath says whether the content address ca, with the path's references, makes
// exactly the store path p.
func checkCAPath(p string, ca contentAddress, refs []string) error {
	want, err := ca.storePath(pathName(p), refs, p)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	if want != p {
		return fmt.Errorf("%s: content address %s with its references makes %s, not this path", p, ca, want)
	}
	return nil
}

// caCheck verifies a NAR against a content address while it streams by: the NAR's
// own hash for recursive sha256 (taken anyway), a hash of the NAR for other recursive
// algorithms, the hash of the one regular file's contents for text and flat
// addresses. Up to caBuffer bytes are kept and checked at the end; a larger NAR is
// parsed as it comes, in a goroutine. Finish or Abort ends it.
type caCheck struct {
	ca     contentAddress
	narSum hash.Hash // recursive, not sha256: the NAR's hash
	buf    bytes.Buffer
	pw     *io.PipeWriter // file contents of a large NAR, being parsed
	done   chan fileSum
	ended  bool
	// buffer is the NAR size up to which the check parses after the fact (caBuffer;
	// tests make it smaller to reach the streaming parser with small NARs).
	buffer int
}

type fileSum struct {
	digest []byte
	err    error
}

// caBuffer is the NAR size up to which a text or flat check parses after the fact.
const caBuffer = 1 << 20

func newCACheck(ca contentAddress) *caCheck {
	c := &caCheck{ca: ca, buffer: caBuffer}
	if ca.method == caRecursive && ca.hash.Algo() != nixhash.SHA256 {
		c.narSum = ca.hash.Algo().Func().New()
	}
	return c
}

func (c *caCheck) Write(p []byte) (int, error) {
	switch {
	case c.ca.method == caRecursive:
		if c.narSum != nil {
			c.narSum.Write(p)
		}
		return len(p), nil
	case c.pw != nil:
		return c.pw.Write(p)
	case c.buf.Len()+len(p) <= c.buffer:
		return c.buf.Write(p)
	}
	pr, pw := io.Pipe()
	c.pw, c.done = pw, make(chan fileSum, 1)
	algo := c.ca.hash.Algo()
	go func() {
		d, err := regularFileHash(pr, algo)
		_, _ = io.Copy(io.Discard, pr) // the writer never blocks on a parser that gave up
		c.done <- fileSum{d, err}
	}()
	if _, err := pw.Write(c.buf.Bytes()); err != nil {
		return 0, err
	}
	c.buf = bytes.Buffer{}
	return pw.Write(p)
}

// Finish says whether the NAR matched; narDigest is its sha256.
func (c *caCheck) Finish(narDigest []byte) error {
	c.ended = true
	var got []byte
	switch {
	case c.ca.method == caRecursive && c.narSum == nil:
		got = narDigest
	case c.ca.method == caRecursive:
		got = c.narSum.Sum(nil)
	case c.pw != nil:
		c.pw.Close()
		r := <-c.done
		if r.err != nil {
			return r.err
		}
		got = r.digest
	default:
		d, err := regularFileHash(&c.buf, c.ca.hash.Algo())
		if err != nil {
			return err
		}
		got = d
	}
	if !bytes.Equal(got, c.ca.hash.Digest()) {
		h := nixhash.MustNewHash(c.ca.hash.Algo(), got)
		return fmt.Errorf("content hashes to %s, but its content address says %s", h.Format(nixhash.NixBase32, true), c.ca.hash.Format(nixhash.NixBase32, true))
	}
	return nil
}

// Abort ends a check that will not finish (the upload failed), so its parser exits.
func (c *caCheck) Abort() {
	if c.ended {
		return
	}
	c.ended = true
	if c.pw != nil {
		c.pw.CloseWithError(errors.New("upload aborted"))
		<-c.done
	}
}

// regularFileHash is the hash of the contents of the one regular file a NAR holds
// (executable or not), read by the format: the NAR must be exactly what Nix writes
// for such a file, nothing missing and nothing after it. (go-nix's nar.Reader took a
// NAR cut short for a whole one, and leaves its parser goroutine behind when the
// reader is abandoned.)
func regularFileHash(r io.Reader, algo nixhash.Algorithm) ([]byte, error) {
	errFormat := errors.New("a text or flat content address needs a NAR of one regular file")
	br := bufio.NewReaderSize(r, 4096)
	for _, want := range []string{"nix-archive-1", "(", "type"} {
		if err := expectNARString(br, want); err != nil {
			return nil, err
		}
	}
	if typ, err := readNARString(br, 16); err != nil || typ != "regular" {
		return nil, cmp.Or(err, errFormat)
	}
	tok, err := readNARString(br, 16)
	if err != nil {
		return nil, err
	}
	if tok == "executable" {
		if err := expectNARString(br, ""); err != nil {
			return nil, err
		}
		if tok, err = readNARString(br, 16); err != nil {
			return nil, err
		}
	}
	if tok != "contents" {
		return nil, errFormat
	}
	var size [8]byte
	if _, err := io.ReadFull(br, size[:]); err != nil {
		return nil, fmt.Errorf("read the NAR: %w", noEOF(err))
	}
	n := binary.LittleEndian.Uint64(size[:])
	h := algo.Func().New()
	if n > math.MaxInt64 {
		return nil, fmt.Errorf("read the NAR: a file of %d bytes", n)
	}
	if _, err := io.CopyN(h, br, int64(n)); err != nil {
		return nil, fmt.Errorf("read the NAR: %w", noEOF(err))
	}
	if err := narPadding(br, n); err != nil {
		return nil, err
	}
	if err := expectNARString(br, ")"); err != nil {
		return nil, errFormat
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return nil, errFormat
	}
	return h.Sum(nil), nil
}

// readNARString reads one NAR string of at most max bytes (a little-endian length,
// the bytes, zero padding to a multiple of 8).
func readNARString(r *bufio.Reader, max uint64) (string, error) {
	var size [8]byte
	if _, err := io.ReadFull(r, size[:]); err != nil {
		return "", fmt.Errorf("read the NAR: %w", noEOF(err))
	}
	n := binary.LittleEndian.Uint64(size[:])
	if n > max {
		return "", fmt.Errorf("read the NAR: a string of %d bytes where at most %d belong", n, max)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", fmt.Errorf("read the NAR: %w", noEOF(err))
	}
	return string(b), narPadding(r, n)
}

func expectNARString(r *bufio.Reader, want string) error {
	got, err := readNARString(r, uint64(len(want)))
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("read the NAR: %q where %q belongs", got, want)
	}
	return nil
}

// narPadding reads the zero bytes that pad n bytes to a multiple of 8.
func narPadding(r *bufio.Reader, n uint64) error {
	var pad [8]byte
	k := (8 - n%8) % 8
	if _, err := io.ReadFull(r, pad[:k]); err != nil {
		return fmt.Errorf("read the NAR: %w", noEOF(err))
	}
	if pad != [8]byte{} {
		return errors.New("read the NAR: padding that is not zero")
	}
	return nil
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
