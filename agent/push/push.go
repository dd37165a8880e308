// Package push puts store paths and their closures into the coordinator's cache over
// the agent's session: ask which paths the cache (or an upstream) lacks, then stream
// those NARs zstd-compressed in dependency order. Evaluation, builds and
// `fc-agent push` all use it; the receiving end is coordinator/cache.
package push

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/fc-ci/fc/protocol"
)

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return ": " + strings.TrimSpace(string(ee.Stderr))
	}
	return ""
}

// ClosureInfos is the path infos of paths and everything they reference, from one
// `nix path-info --recursive` per kind of path (rather than a closure query and then
// a path-info: each Nix process costs tens of milliseconds).
func ClosureInfos(ctx context.Context, paths []string) ([]protocol.PathInfo, error) {
	return closureInfos(ctx, "", paths)
}

// closureInfos is ClosureInfos in the local store whose root directory is root (""
// for Nix's own store).
func closureInfos(ctx context.Context, root string, paths []string) ([]protocol.PathInfo, error) {
	infos, err := pathInfos(ctx, root, paths, true)
	if err != nil {
		return nil, err
	}
	// Batches of paths share parts of their closures: each path once.
	seen := make(map[string]bool, len(infos))
	out := infos[:0]
	for _, i := range infos {
		if !seen[i.StorePath] {
			seen[i.StorePath] = true
			out = append(out, i)
		}
	}
	return out, nil
}

type nixPathInfo struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    int64    `json:"narSize"`
	References []string `json:"references"`
	Deriver    string   `json:"deriver"`
	CA         string   `json:"ca"`
}

// PathInfos asks Nix for the NAR hash, size, references and deriver of each path.
func PathInfos(ctx context.Context, paths []string) ([]protocol.PathInfo, error) {
	return pathInfos(ctx, "", paths, false)
}

// pathInfos is PathInfos in the store whose root directory is root ("" for Nix's
// own store), of the paths' closures too when recursive.
func pathInfos(ctx context.Context, root string, paths []string, recursive bool) ([]protocol.PathInfo, error) {
	// The new CLI reads a .drv path as "its outputs" unless told --derivation, and
	// --derivation reads an output path as "its .drv": ask for each kind separately.
	var drvs, others []string
	for _, p := range paths {
		if strings.HasSuffix(p, ".drv") {
			drvs = append(drvs, p)
		} else {
			others = append(others, p)
		}
	}
	var out []protocol.PathInfo
	for _, group := range []struct {
		paths []string
		flags []string
	}{{others, nil}, {drvs, []string{"--derivation"}}} {
		for start := 0; start < len(group.paths); start += 500 {
			batch := group.paths[start:min(start+500, len(group.paths))]
			args := append([]string{"--extra-experimental-features", "nix-command", "path-info", "--json"}, group.flags...)
			if recursive {
				args = append(args, "--recursive")
			}
			if root != "" {
				args = append(args, "--store", root)
			}
			args = append(args, batch...)
			raw, err := exec.CommandContext(ctx, "nix", args...).Output()
			if err != nil {
				return nil, fmt.Errorf("nix path-info: %w%s", err, stderrOf(err))
			}
			infos, err := ParsePathInfo(raw)
			if err != nil {
				return nil, err
			}
			out = append(out, infos...)
		}
	}
	return out, nil
}

// ParsePathInfo reads `nix path-info --json`: a list of objects (Nix 2.8 to 2.18) or
// an object keyed by path (newer Nix); hashes as SRI or sha256:base32.
func ParsePathInfo(raw []byte) ([]protocol.PathInfo, error) {
	var list []nixPathInfo
	if err := json.Unmarshal(raw, &list); err != nil {
		var byPath map[string]*nixPathInfo
		if err2 := json.Unmarshal(raw, &byPath); err2 != nil {
			return nil, fmt.Errorf("parse nix path-info output: %w", err)
		}
		for p, info := range byPath {
			if info == nil {
				return nil, fmt.Errorf("path %s is not valid in the local store", p)
			}
			info.Path = p
			list = append(list, *info)
		}
	}
	out := make([]protocol.PathInfo, 0, len(list))
	for _, i := range list {
		if i.NarHash == "" {
			return nil, fmt.Errorf("path %s is not valid in the local store", i.Path)
		}
		h, err := nixhash.ParseAny(i.NarHash, nil)
		if err != nil {
			return nil, fmt.Errorf("%s: nar hash %q: %w", i.Path, i.NarHash, err)
		}
		refs := make([]string, len(i.References))
		for k, r := range i.References {
			if !strings.HasPrefix(r, "/") {
				r = "/nix/store/" + r
			}
			refs[k] = r
		}
		out = append(out, protocol.PathInfo{StorePath: i.Path, NarHash: h.Format(nixhash.NixBase32, true),
			NarSize: i.NarSize, References: refs, Deriver: i.Deriver, CA: i.CA})
	}
	return out, nil
}

// SortByDependencies orders infos so every path comes after the paths it references.
func SortByDependencies(infos []protocol.PathInfo) []protocol.PathInfo {
	byPath := make(map[string]protocol.PathInfo, len(infos))
	for _, i := range infos {
		byPath[i.StorePath] = i
	}
	sort.Slice(infos, func(a, b int) bool { return infos[a].StorePath < infos[b].StorePath })
	out := make([]protocol.PathInfo, 0, len(infos))
	state := make(map[string]int, len(infos)) // 1 visiting, 2 done
	var visit func(p string)
	visit = func(p string) {
		if state[p] != 0 {
			return
		}
		state[p] = 1
		info := byPath[p]
		for _, r := range info.References {
			if _, ok := byPath[r]; ok && r != p {
				visit(r)
			}
		}
		state[p] = 2
		out = append(out, info)
	}
	for _, i := range infos {
		visit(i.StorePath)
	}
	return out
}

// StreamOpener opens streams to the coordinator (session.Conn).
type StreamOpener interface {
	OpenStream(kind string) (io.ReadWriteCloser, error)
}

// Stats says what a push did.
type Stats struct {
	Offered    int           // paths in the closure
	Sent       int           // paths uploaded
	Upstream   int           // paths skipped because an upstream cache has them
	NarBytes   int64         // uncompressed bytes sent
	FileBytes  int64         // bytes stored (compressed, or the NAR's when sent plain)
	Plain      int           // paths sent uncompressed, as they do not compress
	Elapsed    time.Duration // wall time of the upload
	SentPaths  []string
	Rejections []string
	// Unstored are the rejections the coordinator marked as its own storage's
	// failure (protocol.UploadResult.Retry).
	Unstored int
}

// Options tune a push.
type Options struct {
	Level    zstd.EncoderLevel // zero: SpeedFastest
	Progress func(path string, narSize int64)
	// Dump writes a path's NAR; nil: in-process (see dump).
	Dump func(ctx context.Context, path string, w io.Writer) error
	// Cached, if set, learns from the plan which offered paths the cache holds, and
	// is forgotten when an offer it shaped turns out incomplete (ErrIncompleteOffer).
	// The caller leaves out of infos what it holds.
	Cached *Cached
	// Streams bounds the streams large paths that depend on nothing missing are sent
	// over side by side (at most maxStreams); 0 or 1: one stream. Not for outputs of
	// a build (see uploadParallel).
	Streams int
}

// dump writes path's NAR in-process (go-nix): a nix-store --dump per path cost a
// process start, and for large paths a pipe that every byte crossed twice. go-nix
// refuses entry names that begin with ".." (such as Kubernetes' "..data"), which Nix
// allows: a path with one is dumped by nix-store.
func dump(ctx context.Context, path string, w io.Writer) error {
	if dotDotName(path) {
		return DumpWithNix(ctx, path, w)
	}
	if err := nar.DumpPath(w, path); err != nil {
		return fmt.Errorf("write the NAR of %s: %w", path, err)
	}
	return nil
}

// dotDotName says whether a directory under path has an entry whose name begins
// with "..".
func dotDotName(path string) bool {
	found := false
	_ = filepath.WalkDir(path, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), "..") {
			found = true
			return filepath.SkipAll
		}
		return nil
	})
	return found
}

// DumpWithNix writes the NAR of path with nix-store --dump: Nix's own NAR, the
// reference the in-process dump is tested against.
func DumpWithNix(ctx context.Context, path string, w io.Writer) error {
	cmd := exec.CommandContext(ctx, "nix-store", "--dump", path)
	cmd.Stdout = w
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nix-store --dump %s: %w: %s", path, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// sampleSize is how much of a NAR decides whether it is sent compressed.
const sampleSize = 1 << 20

// segmentSize is how much of a NAR one zstd frame holds beyond the sample: frames
// are compressed side by side, one per core (zstd's fastest level does some 500
// MB/s on one), and sent in order. A NAR of several frames is still one zstd stream
// to the coordinator and to Nix.
const segmentSize = 4 << 20

// maxFramesInFlight bounds the frames compressed at once however many cores there
// are: each holds a segment and its frame (some 64 MiB in all at most).
const maxFramesInFlight = 8

// pathWriter takes one path's NAR and sends it on as zstd or, when the coordinator
// takes plain NARs and the start of this one does not compress (already compressed
// or random data), as it is: zstd would cost both sides CPU and save nothing. It
// holds back the first sampleSize bytes and compresses them once to decide; that
// frame is the stream's first.
type pathWriter struct {
	enc     *zstd.Encoder // EncodeAll only: safe from several goroutines
	plainOK bool          // the coordinator takes plain NARs

	out     io.Writer     // where the path's bytes go
	buf     *bufio.Writer // plain: gathers the NAR's many small writes into chunks
	seg     []byte        // the sample until decided, then the segment being filled
	plain   bool          // decided: sent as it is
	decided bool
	frames  int // zstd frames sent or on their way

	pending []chan segmentFrame // frames being compressed, in the order they go out
	spare   [][]byte            // buffers to reuse
}

type segmentFrame struct{ in, frame []byte }

func (p *pathWriter) reset(out io.Writer) {
	p.out, p.plain, p.decided, p.frames = out, false, !p.plainOK, 0 // !plainOK: nothing to decide, zstd
	p.pending = p.pending[:0]
	if p.buf == nil {
		p.buf = bufio.NewWriterSize(out, 64<<10)
	}
	p.buf.Reset(out)
	if p.seg == nil {
		p.seg = p.take()
	}
	p.seg = p.seg[:0] // the last path's buffer, grown as that path needed
}

// take is an empty buffer: a spare one, else a small one that appends grow. (Most
// paths are a few KiB: a new segmentSize buffer for each upload cost more CPU,
// zeroing it, than the rest of a trivial step's upload.)
func (p *pathWriter) take() []byte {
	if n := len(p.spare); n > 0 {
		b := p.spare[n-1]
		p.spare = p.spare[:n-1]
		return b[:0]
	}
	return make([]byte, 0, 64<<10)
}

func (p *pathWriter) Write(b []byte) (int, error) {
	n := len(b)
	if p.plain {
		return p.buf.Write(b)
	}
	for len(b) > 0 {
		limit := segmentSize
		if !p.decided {
			limit = sampleSize
		}
		room := min(limit-len(p.seg), len(b))
		p.seg = append(p.seg, b[:room]...)
		b = b[room:]
		if len(p.seg) < limit {
			break
		}
		if !p.decided {
			if err := p.decide(); err != nil {
				return 0, err
			}
			if p.plain {
				if _, err := p.buf.Write(b); err != nil {
					return 0, err
				}
				return n, nil
			}
			continue
		}
		if err := p.submit(); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// decide picks compressed or plain from the sample (p.seg) and sends it.
func (p *pathWriter) decide() error {
	p.decided = true
	frame := p.enc.EncodeAll(p.seg, p.take())
	defer func() { p.spare = append(p.spare, frame) }()
	if len(frame) >= len(p.seg)-len(p.seg)/16 { // saves under 1/16: not worth it
		p.plain = true
		_, err := p.buf.Write(p.seg)
		p.seg = p.seg[:0]
		return err
	}
	p.seg = p.seg[:0]
	p.frames++
	_, err := p.out.Write(frame)
	return err
}

// submit compresses the filled segment beside the others and sends the oldest
// frames once more are in flight than there are cores to compress them.
func (p *pathWriter) submit() error {
	ch := make(chan segmentFrame, 1)
	in, dst := p.seg, p.take()
	go func() { ch <- segmentFrame{in, p.enc.EncodeAll(in, dst)} }()
	p.pending = append(p.pending, ch)
	p.frames++
	p.seg = p.take()
	for len(p.pending) > min(runtime.GOMAXPROCS(0), maxFramesInFlight) {
		if err := p.sendOldest(); err != nil {
			return err
		}
	}
	return nil
}

func (p *pathWriter) sendOldest() error {
	f := <-p.pending[0]
	p.pending = p.pending[1:]
	_, err := p.out.Write(f.frame)
	p.spare = append(p.spare, f.in, f.frame)
	return err
}

// Close sends what is left of the path.
func (p *pathWriter) Close() error {
	if !p.decided {
		if err := p.decide(); err != nil {
			return err
		}
	}
	if p.plain {
		return p.buf.Flush()
	}
	if len(p.seg) > 0 || p.frames == 0 { // an empty NAR is still one (empty) frame
		if err := p.submit(); err != nil {
			return err
		}
	}
	for len(p.pending) > 0 {
		if err := p.sendOldest(); err != nil {
			return err
		}
	}
	return nil
}

// ErrRefused is an upload the coordinator refused as a whole, before any data: the
// agent may not upload a path it would have to send (or the coordinator could not
// answer). Sending again does not help.
var ErrRefused = errors.New("coordinator refused the upload")

// ErrRejected is returned when the coordinator refused one or more paths.
var ErrRejected = errors.New("the coordinator rejected some paths")

// ErrNotStored is returned when every path the coordinator did not take failed in
// its own storage (an S3 server or PostgreSQL down): sending them again later may
// work, unlike after ErrRejected.
var ErrNotStored = errors.New("the coordinator could not store some paths")

// Upload offers infos (any order) and sends what the cache lacks: large paths that
// depend on nothing missing over several streams side by side (see uploadParallel),
// everything else over one stream in dependency order.
func Upload(ctx context.Context, conn StreamOpener, infos []protocol.PathInfo, opts Options) (Stats, error) {
	start := time.Now()
	if opts.Level == 0 {
		opts.Level = zstd.SpeedFastest
	}
	infos = SortByDependencies(infos)
	if opts.Streams = min(opts.Streams, maxStreams); opts.Streams > 1 {
		if st, err, done := uploadParallel(ctx, conn, infos, opts); done {
			st.Elapsed = time.Since(start)
			return st, err
		}
	}
	st, err := uploadOne(ctx, conn, infos, opts)
	st.Elapsed = time.Since(start)
	return st, err
}

// uploadOne offers infos, sorted by dependencies, on one stream and sends what the
// cache lacks.
func uploadOne(ctx context.Context, conn StreamOpener, infos []protocol.PathInfo, opts Options) (Stats, error) {
	st, err := conn.OpenStream(protocol.StreamUpload)
	if err != nil {
		return Stats{}, err
	}
	defer st.Close()
	// Reads and writes on the stream do not watch ctx: closing it ends them.
	defer context.AfterFunc(ctx, func() { st.Close() })()
	u := &upload{stats: Stats{Offered: len(infos)}, progress: opts.Progress}
	plan, err := request(st, protocol.UploadRequest{Paths: infos}, opts.Cached)
	if err != nil {
		return u.stats, err
	}
	u.stats.Upstream = len(plan.Upstream)
	u.sizes = make(map[string]int64, len(infos))
	for _, i := range infos {
		u.sizes[i.StorePath] = i.NarSize
	}
	// Results are read as they come while the next paths are sent: the coordinator
	// verifies and commits one path while the following one is on its way.
	u.results = readResults(st, len(plan.Missing))
	if err := u.send(ctx, st, plan, opts); err != nil {
		return u.stats, err
	}
	for ; u.received < len(plan.Missing); u.received++ {
		if err := u.record(<-u.results); err != nil {
			return u.stats, err
		}
	}
	return u.stats, u.stats.rejectionErr()
}

// rejectionErr is the error of the paths the coordinator did not take, if any:
// ErrNotStored when every one of them failed in storage (worth sending again), else
// ErrRejected.
func (s Stats) rejectionErr() error {
	switch n := len(s.Rejections); {
	case n == 0:
		return nil
	case n == s.Unstored:
		return fmt.Errorf("%w: %s", ErrNotStored, strings.Join(s.Rejections, "; "))
	default:
		return fmt.Errorf("%w: %s", ErrRejected, strings.Join(s.Rejections, "; "))
	}
}

// request sends req and reads the coordinator's plan, which cached (if set) learns
// from.
func request(st io.ReadWriter, req protocol.UploadRequest, cached *Cached) (protocol.UploadPlan, error) {
	var plan protocol.UploadPlan
	if err := protocol.WriteFrame(st, req); err != nil {
		return plan, err
	}
	if err := protocol.ReadFrame(st, &plan); err != nil {
		return plan, fmt.Errorf("read upload plan: %w", err)
	}
	if len(plan.Unknown) > 0 {
		cached.Forget()
		return plan, fmt.Errorf("%w: %s", ErrIncompleteOffer, plan.Error)
	}
	if plan.Error != "" {
		return plan, fmt.Errorf("%w: %s", ErrRefused, plan.Error)
	}
	cached.learn(req.Paths, plan)
	return plan, nil
}

// verdict is one path's result as read from the stream.
type verdict struct {
	res protocol.UploadResult
	err error
}

// readResults reads n results from st in the background, stopping at the first
// error.
func readResults(st io.Reader, n int) <-chan verdict {
	results := make(chan verdict, n)
	go func() {
		for range n {
			var res protocol.UploadResult
			err := protocol.ReadFrame(st, &res)
			results <- verdict{res, err}
			if err != nil {
				return // the stream broke; Upload has failed already or will see this
			}
		}
	}()
	return results
}

// upload is one Upload under way: what it has sent and learnt so far.
type upload struct {
	stats    Stats
	sizes    map[string]int64 // NAR size by store path
	progress func(path string, narSize int64)
	results  <-chan verdict
	received int // results taken from results
}

// record counts a result in the stats.
func (u *upload) record(v verdict) error {
	if v.err != nil {
		return fmt.Errorf("read upload result: %w", v.err)
	}
	if !v.res.OK {
		u.stats.Rejections = append(u.stats.Rejections, v.res.Error)
		if v.res.Retry {
			u.stats.Unstored++
		}
		return nil
	}
	u.stats.Sent++
	u.stats.SentPaths = append(u.stats.SentPaths, v.res.StorePath)
	u.stats.NarBytes += u.sizes[v.res.StorePath]
	u.stats.FileBytes += v.res.FileSize
	if u.progress != nil {
		u.progress(v.res.StorePath, u.sizes[v.res.StorePath])
	}
	return nil
}

// send sends the NARs of the paths the plan says are missing, in its order, and
// records the results already in after each.
func (u *upload) send(ctx context.Context, st io.Writer, plan protocol.UploadPlan, opts Options) error {
	bw := bufio.NewWriterSize(st, 256<<10)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(opts.Level), zstd.WithEncoderCRC(true))
	if err != nil {
		return err
	}
	defer enc.Close()
	pw := &pathWriter{enc: enc, plainOK: plan.Uncompressed}
	for i, p := range plan.Missing {
		cw := protocol.NewChunkWriter(bw)
		pw.reset(cw)
		if opts.Dump != nil {
			err = opts.Dump(ctx, p, pw)
		} else {
			err = dump(ctx, p, pw)
		}
		if err != nil {
			return err
		}
		if err := pw.Close(); err != nil {
			return err
		}
		if pw.plain {
			u.stats.Plain++
		}
		if err := cw.Close(); err != nil {
			return err
		}
		// Small paths share frames: the buffer goes out when it is full and after the
		// last path (a flush per path cost a frame and two system calls each).
		if i == len(plan.Missing)-1 {
			if err := bw.Flush(); err != nil {
				return fmt.Errorf("send %s: %w", p, err)
			}
		}
		for drained := false; !drained; { // take the results that are already in
			select {
			case v := <-u.results:
				u.received++
				if err := u.record(v); err != nil {
					return err
				}
			default:
				drained = true
			}
		}
	}
	return nil
}
