package cache

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"
	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/nix-community/go-nix/pkg/storepath"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// Config configures the cache (the [cache] section).
type Config struct {
	Priority       int
	UpstreamCaches []string // base URLs, e.g. https://cache.nixos.org
	UpstreamKeys   []string // name:base64 public keys; empty: upstream narinfos are not checked
	Logger         *slog.Logger
	Registerer     prometheus.Registerer
	// HTTPClient reaches upstream caches.
	HTTPClient *http.Client
	// ReadKeys, when set, makes the cache private: reading needs an API key, as a
	// bearer token or as the password of HTTP basic authentication (so netrc works).
	ReadKeys auth.KeyStore
	// PlainNARs lets agents upload data that does not compress as plain NARs (the
	// upload plan says so): stored as nar/<narhash>.nar, Compression: none. Off,
	// agents send zstd only; plain NARs already stored are served either way.
	PlainNARs bool
	// GroupPaths and GroupBytes bound a group of uploaded paths committed together
	// (0: 1,000 paths, 64 MB).
	GroupPaths int
	GroupBytes int64
	// BuildLogs finds the logs served at log/<drv basename> (`nix log`); nil: none.
	BuildLogs LogSource
}

// Cache is the binary cache.
type Cache struct {
	cfg      Config
	db       *storage.DB
	blobs    BlobStore
	key      signature.SecretKey
	upKeys   []signature.PublicKey
	log      *slog.Logger
	m        cacheMetrics
	decoders sync.Pool
	blocks   sync.Pool // *block, for uploads (see stages.go)
	// rendered holds narinfo answers: a narinfo never changes once signed, and the
	// database round trip and rendering were most of a lookup's cost. The TTL bounds
	// how long a path deleted by another coordinator's retention can still be offered.
	rendered *expirable.LRU[string, string]
	// listening is true while ListenForDeletions receives deletions; only then are
	// narinfo answers cached.
	listening atomic.Bool
}

// Rendered narinfo cache bounds; the TTL is a second line of defence behind the
// deletion notifications.
const (
	renderedEntries = 100_000
	renderedTTL     = time.Minute
)

type cacheMetrics struct {
	narinfoHits, narinfoMisses, narBytes prometheus.Counter
	uploads                              prometheus.Counter
	uploadBytes                          prometheus.Counter
	rejections                           *prometheus.CounterVec
}

// New returns the cache over its blob store and signing key.
func New(cfg Config, db *storage.DB, blobs BlobStore, key signature.SecretKey) (*Cache, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Priority == 0 {
		cfg.Priority = 30
	}
	if cfg.GroupPaths <= 0 {
		cfg.GroupPaths = groupPaths
	}
	if cfg.GroupBytes <= 0 {
		cfg.GroupBytes = groupBytes
	}
	c := &Cache{cfg: cfg, db: db, blobs: blobs, key: key, log: cfg.Logger,
		rendered: expirable.NewLRU[string, string](renderedEntries, nil, renderedTTL)}
	c.blocks.New = func() any { return &block{data: make([]byte, blockSize), pool: &c.blocks} }
	for _, k := range cfg.UpstreamKeys {
		pk, err := signature.ParsePublicKey(k)
		if err != nil {
			return nil, fmt.Errorf("cache.upstream_keys %q: %w", k, err)
		}
		c.upKeys = append(c.upKeys, pk)
	}
	c.m = cacheMetrics{
		narinfoHits:   prometheus.NewCounter(prometheus.CounterOpts{Name: "fc_cache_narinfo_hits_total", Help: "narinfo requests answered from the cache."}),
		narinfoMisses: prometheus.NewCounter(prometheus.CounterOpts{Name: "fc_cache_narinfo_misses_total", Help: "narinfo requests for paths the cache lacks."}),
		narBytes:      prometheus.NewCounter(prometheus.CounterOpts{Name: "fc_cache_served_bytes_total", Help: "NAR file bytes served (compressed, or plain NARs as they are)."}),
		uploads:       prometheus.NewCounter(prometheus.CounterOpts{Name: "fc_cache_uploads_total", Help: "Store paths accepted into the cache."}),
		uploadBytes:   prometheus.NewCounter(prometheus.CounterOpts{Name: "fc_cache_upload_bytes_total", Help: "NAR file bytes accepted into the cache (compressed, or plain NARs as they are)."}),
		rejections:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fc_cache_upload_rejections_total", Help: "Uploads rejected, by reason."}, []string{"reason"}),
	}
	// Every reason appears from the start, at zero, rather than on first rejection.
	for _, r := range []string{"bad_info", "not_allowed", "storage", "truncated", "corrupt", "size", "hash", "content_address", "database", "missing_reference", "signing"} {
		c.m.rejections.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(c.m.narinfoHits, c.m.narinfoMisses, c.m.narBytes, c.m.uploads, c.m.uploadBytes, c.m.rejections,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "fc_cache_store_bytes", Help: "NAR file bytes held by the cache (compressed, or plain NARs as they are)."}, func() float64 {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				_, b, err := db.NarinfoCount(ctx)
				if err != nil {
					return 0
				}
				return float64(b)
			}))
	}
	return c, nil
}

// PublicKey is the key clients trust, "name:base64".
func (c *Cache) PublicKey() string { return c.key.ToPublicKey().String() }

// hashPart is the nixbase32 hash part of a full store path.
func hashPart(p string) string {
	base := strings.TrimPrefix(p, storepath.StoreDir+"/")
	if len(base) < 32 {
		return ""
	}
	return base[:32]
}

func basename(p string) string { return strings.TrimPrefix(p, storepath.StoreDir+"/") }

// maxNameLen is the longest store path name Nix allows.
const maxNameLen = 211

// validStorePath checks a full store path by Nix's rules: /nix/store/, 32 nixbase32
// characters, "-", a name of Nix's characters that does not begin with a period.
// go-nix's storepath.Validate alone lets through any byte in place of the "/" and the
// "-", an empty name, "." and "..", and names of any length: such a path would break
// the narinfo lines and file names it becomes.
func validStorePath(p string) error {
	if err := storepath.Validate(p); err != nil {
		return err
	}
	const hashEnd = len(storepath.StoreDir) + 1 + 32
	name := p[min(hashEnd+1, len(p)):]
	switch {
	case p[len(storepath.StoreDir)] != '/':
		return fmt.Errorf("%q is not in %s", p, storepath.StoreDir)
	case len(p) <= hashEnd || p[hashEnd] != '-':
		return fmt.Errorf("%q has no \"-\" after its hash", p)
	case name == "" || name[0] == '.' || len(name) > maxNameLen:
		return fmt.Errorf("%q: a store path name is 1 to %d characters and does not begin with a period", p, maxNameLen)
	}
	return nil
}

// checkInfo validates what an agent says about a path before anything is read.
func checkInfo(pi protocol.PathInfo) (*nixhash.Hash, error) {
	if err := validStorePath(pi.StorePath); err != nil {
		return nil, fmt.Errorf("store path %q: %w", pi.StorePath, err)
	}
	h, err := nixhash.ParseAny(pi.NarHash, nil)
	if err != nil || h.Algo() != nixhash.SHA256 {
		return nil, fmt.Errorf("%s: nar hash %q is not a sha256 hash", pi.StorePath, pi.NarHash)
	}
	if pi.NarSize <= 0 {
		return nil, fmt.Errorf("%s: nar size %d", pi.StorePath, pi.NarSize)
	}
	for _, r := range pi.References {
		if err := validStorePath(r); err != nil {
			return nil, fmt.Errorf("%s: reference %q: %w", pi.StorePath, r, err)
		}
	}
	if pi.Deriver != "" {
		if err := validStorePath(pi.Deriver); err != nil {
			return nil, fmt.Errorf("%s: deriver %q: %w", pi.StorePath, pi.Deriver, err)
		}
	}
	return &h.Hash, nil
}

// HandleUpload serves one upload stream from an agent (see protocol.StreamUpload).
// What the agent may send is scoped to its work (see admit); the whole request is
// refused, before any data, when one path it would have to send is not.
func (c *Cache) HandleUpload(ctx context.Context, agentID int64, st io.ReadWriter) error {
	var req protocol.UploadRequest
	if err := protocol.ReadFrame(st, &req); err != nil {
		return fmt.Errorf("read upload request: %w", err)
	}
	infos := make(map[string]protocol.PathInfo, len(req.Paths))
	hashes := make([]string, 0, len(req.Paths))
	for _, pi := range req.Paths {
		if _, err := checkInfo(pi); err != nil {
			c.m.rejections.WithLabelValues("bad_info").Inc()
			return protocol.WriteFrame(st, protocol.UploadPlan{Error: err.Error()})
		}
		infos[pi.StorePath] = pi
		hashes = append(hashes, hashPart(pi.StorePath))
	}
	present, err := c.db.PresentHashParts(ctx, hashes)
	if err != nil {
		_ = protocol.WriteFrame(st, protocol.UploadPlan{Error: "coordinator database unavailable"})
		return err
	}
	plan := protocol.UploadPlan{Missing: []string{}, Upstream: []string{}, Uncompressed: c.cfg.PlainNARs}
	upstream := map[string]bool{}
	planned := make(map[string]bool, len(req.Paths))
	for _, pi := range req.Paths {
		h := hashPart(pi.StorePath)
		switch {
		case planned[pi.StorePath] || present[h]:
		case c.inUpstream(ctx, h):
			upstream[h] = true
			plan.Upstream = append(plan.Upstream, pi.StorePath)
		default:
			plan.Missing = append(plan.Missing, pi.StorePath)
		}
		planned[pi.StorePath] = true
	}
	var admitted map[string]admission
	if !req.Query && len(plan.Missing) > 0 {
		admitted, err = c.admit(ctx, agentID, plan.Missing, infos)
		if err != nil {
			c.m.rejections.WithLabelValues("not_allowed").Inc()
			c.log.Warn("upload refused", "agent", agentID, "paths", len(plan.Missing), "err", err)
			return protocol.WriteFrame(st, protocol.UploadPlan{Error: err.Error()})
		}
	}
	if err := protocol.WriteFrame(st, plan); err != nil || req.Query {
		return err
	}
	// known holds the hash parts the cache held at the plan (pending 0) and those this
	// stream has staged since, in groups being committed (with the step whose pending
	// output each is, or 0): references found there need no query. A group that fails
	// to commit fails every later one too, so no path is recorded with a reference
	// that did not make it.
	known := make(map[string]int64, len(present))
	for h := range present {
		known[h] = 0
	}
	g := newUploadGroup()
	com := c.startCommitter(ctx, agentID, st)
	for i, p := range plan.Missing {
		res, broken := c.receive(ctx, infos[p], admitted[p], upstream, known, g, st)
		if res != nil {
			g.results = append(g.results, *res)
		}
		last := i == len(plan.Missing)-1
		if broken || last || len(g.items) >= c.cfg.GroupPaths || g.bytes >= c.cfg.GroupBytes {
			for h, step := range g.staged {
				known[h] = step
			}
			com.groups <- g // committed while the next paths arrive
			g = newUploadGroup()
		}
		if broken {
			close(com.groups)
			<-com.done
			return fmt.Errorf("upload of %s broke off", p)
		}
	}
	close(com.groups)
	return <-com.done
}

// admission is why one path of an upload may be stored, and what to check of it.
type admission struct {
	// pendingStep: an output of this step, leased to the agent: stored unsigned and
	// not served until the step's success is recorded.
	pendingStep int64
	push        bool            // accepted only because the agent has the push permission
	ca          *contentAddress // the content must have this address (nil: input-addressed)
}

// admit decides, before any data is sent, which of the paths an agent may upload. A
// builder is trusted with the work it was given, not with the cache:
//   - an output of a step leased to it, at the path the derivation declares (a
//     fixed output also with the content the derivation declares);
//   - while it holds an evaluation's lease, a content-addressed path (the .drv
//     closure: .drv files and sources), whose path the cache recomputes from its
//     content address and references, and later checks against the content;
//   - anything, when an admin granted it the push permission.
//
// A path that declares a content address must match it in every case.
func (c *Cache) admit(ctx context.Context, agentID int64, paths []string, infos map[string]protocol.PathInfo) (map[string]admission, error) {
	sc, err := c.db.UploadScope(ctx, agentID)
	if err != nil {
		return nil, fmt.Errorf("agent %d: cannot read what it may upload: %w", agentID, err)
	}
	if sc.Revoked {
		return nil, fmt.Errorf("agent %d was revoked", agentID)
	}
	out := make(map[string]admission, len(paths))
	var refused []string
	var why error
	for _, p := range paths {
		a, err := admitPath(sc, infos[p])
		if err != nil {
			refused = append(refused, p)
			why = cmp.Or(why, err)
			continue
		}
		out[p] = a
	}
	if len(refused) == 0 {
		return out, nil
	}
	more := ""
	if len(refused) > 1 {
		more = fmt.Sprintf(" (and %d more of the %d paths it would send)", len(refused)-1, len(paths))
	}
	hint := ""
	if errors.Is(why, errNotInScope) {
		hint = fmt.Sprintf("; anything else needs the push permission, which an admin grants with PUT /api/v1/agents/%d {\"push\": true}", agentID)
	}
	return nil, fmt.Errorf("agent %d may not upload %s%s: %w%s", agentID, refused[0], more, why, hint)
}

// errNotInScope is a path outside everything the agent may upload.
var errNotInScope = errors.New("it is not an output of a step leased to this agent")

func admitPath(sc storage.UploadScope, pi protocol.PathInfo) (admission, error) {
	var declared *contentAddress
	if pi.CA != "" {
		ca, err := parseCA(pi.CA)
		if err != nil {
			return admission{}, err
		}
		if err := checkCAPath(pi.StorePath, ca, pi.References); err != nil {
			return admission{}, err
		}
		declared = &ca
	}
	if o, ok := sc.Outputs[pi.StorePath]; ok {
		a := admission{pendingStep: o.StepID}
		if o.CA == "" {
			if declared != nil {
				return admission{}, fmt.Errorf("it declares content address %s, but step %d's derivation declares an input-addressed output", declared, o.StepID)
			}
			return a, nil
		}
		want, err := parseCA(o.CA)
		if err != nil {
			return admission{}, fmt.Errorf("step %d's output: %w", o.StepID, err)
		}
		if declared != nil && declared.String() != want.String() {
			return admission{}, fmt.Errorf("it declares content address %s, but step %d's derivation declares %s", declared, o.StepID, want)
		}
		if err := checkCAPath(pi.StorePath, want, pi.References); err != nil {
			return admission{}, err
		}
		a.ca = &want
		return a, nil
	}
	switch {
	case sc.Push:
		return admission{push: true, ca: declared}, nil
	case sc.Evaluating && declared != nil:
		return admission{ca: declared}, nil
	case sc.Evaluating:
		return admission{}, fmt.Errorf("%w, and an evaluation may upload only content-addressed paths (.drv files, sources)", errNotInScope)
	}
	return admission{}, errNotInScope
}

// committer commits an upload stream's groups in order, in a goroutine of its own,
// and sends their results.
type committer struct {
	groups chan *uploadGroup
	done   chan error
}

func (c *Cache) startCommitter(ctx context.Context, agentID int64, st io.Writer) *committer {
	com := &committer{groups: make(chan *uploadGroup), done: make(chan error, 1)}
	go func() {
		out := bufio.NewWriterSize(st, 64<<10)
		var failed, writeErr error
		for g := range com.groups {
			results, err := c.commitGroup(ctx, agentID, g, failed)
			if err != nil && failed == nil {
				failed = fmt.Errorf("an earlier group of this upload failed to commit: %w", err)
			}
			for _, r := range results {
				if !r.OK {
					c.log.Warn("upload rejected", "agent", agentID, "path", r.StorePath, "err", r.Error)
				}
				if writeErr == nil {
					writeErr = protocol.WriteFrame(out, r)
				}
			}
			// A group's results go out together (a frame each cost a write each).
			if writeErr == nil {
				writeErr = out.Flush()
			}
		}
		com.done <- writeErr
	}()
	return com
}

// Group commit: the verified paths of an upload stream are made durable and recorded
// together, up to groupPaths paths or groupBytes compressed bytes at a time: one
// syncfs, one directory sync and one transaction per group instead of two fsyncs and
// a transaction per path, which dominated uploads of thousands of small .drv files.
// Results therefore come a group at a time; the sender does not wait for them.
const (
	groupPaths = 1000
	groupBytes = 64 << 20
)

// uploadGroup is the paths received but not yet committed, and the results waiting
// to be sent with theirs (rejections, which come first).
type uploadGroup struct {
	items   []stagedPath
	bytes   int64
	staged  map[string]int64 // hash parts of items: the step whose pending output each is, or 0
	results []protocol.UploadResult
}

// stagedPath is a verified path whose blob is written but not yet durable: in the
// blob store, or in memory (small, to be stored with its narinfo).
type stagedPath struct {
	blob  BlobWriter
	small []byte
	name  string
	n     storage.Narinfo
	refs  []string // hash parts of the paths it refers to in the cache (not itself, not upstream)
	push  bool     // accepted only because the agent has the push permission
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

func newUploadGroup() *uploadGroup { return &uploadGroup{staged: map[string]int64{}} }

// commitGroup makes the staged blobs durable, commits them with their narinfos, and
// returns every result of the group, and the commit's error. With failed set (an
// earlier group failed), it refuses the whole group instead.
func (c *Cache) commitGroup(ctx context.Context, agentID int64, g *uploadGroup, failed error) ([]protocol.UploadResult, error) {
	if len(g.items) == 0 {
		return g.results, nil
	}
	grant := storage.UploadGrant{AgentID: agentID}
	var blobs []BlobWriter
	var names []string
	small := map[string][]byte{}
	ns := make([]storage.Narinfo, len(g.items))
	var refs []string // outside the group: checked and held in the transaction
	for i, it := range g.items {
		ns[i] = it.n
		grant.Push = grant.Push || it.push
		if it.n.PendingStep != 0 && !slices.Contains(grant.Steps, it.n.PendingStep) {
			grant.Steps = append(grant.Steps, it.n.PendingStep)
		}
		for _, r := range it.refs {
			if _, ok := g.staged[r]; !ok {
				refs = append(refs, r)
			}
		}
		if it.blob == nil {
			small[it.name] = it.small
			continue
		}
		blobs, names = append(blobs, it.blob), append(names, it.name)
	}
	err := failed
	if err == nil {
		err = c.blobs.SyncAll(blobs) // the slow part, before the transaction and the locks
	}
	if err == nil {
		err = c.db.CommitNarinfos(ctx, ns, small, refs, grant, func() error { return c.blobs.CommitAll(blobs, names) })
	}
	results := g.results
	for _, it := range g.items {
		res := protocol.UploadResult{StorePath: it.n.StorePath}
		if err != nil {
			if it.blob != nil {
				it.blob.Abort()
			}
			reason := "storage"
			if errors.Is(err, storage.ErrUploadNotAllowed) {
				reason = "not_allowed"
			}
			c.m.rejections.WithLabelValues(reason).Inc()
			res.Error = fmt.Sprintf("%s: store: %v", it.n.StorePath, err)
		} else {
			c.m.uploads.Inc()
			c.m.uploadBytes.Add(float64(it.n.FileSize))
			res.OK, res.FileSize = true, it.n.FileSize
		}
		results = append(results, res)
	}
	return results, err
}

type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// receive reads one path's compressed NAR and verifies it while writing the blob: its
// NAR hash and size, its content address when it has one (a), and that its
// references are in the cache, upstream, or staged by this stream (a pending output
// only for an output of the same step). A path that checks out is staged in g
// (committed with the group) and receive returns nil; otherwise it returns the
// rejection. broken says the stream itself failed, so nothing more can be read from
// it.
func (c *Cache) receive(ctx context.Context, pi protocol.PathInfo, a admission, upstream map[string]bool, known map[string]int64, g *uploadGroup, st io.Reader) (rejected *protocol.UploadResult, broken bool) {
	reject := func(reason string, err error) *protocol.UploadResult {
		c.m.rejections.WithLabelValues(reason).Inc()
		return &protocol.UploadResult{StorePath: pi.StorePath, Error: err.Error()}
	}
	want, _ := checkInfo(pi)
	chunkReader := protocol.NewChunkReader(st)
	chunks, plain, err := sniffNAR(chunkReader)
	if err != nil {
		return reject("truncated", fmt.Errorf("upload of %s broke off: %w", pi.StorePath, err)), true
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
	decode := func(r io.Reader) error {
		err := c.decompress(r, narSink)
		if err == nil {
			// Bytes after the zstd frames would be stored but never read by Nix.
			if n, derr := io.Copy(io.Discard, r); derr != nil || n > 0 {
				err = fmt.Errorf("%d bytes after the compressed NAR", n)
			}
		}
		return err
	}
	if plain {
		// The file is the NAR: its hash is the NAR hash, taken once.
		fileHash = nil
		decode = func(r io.Reader) error {
			_, err := io.Copy(narSink, r)
			return err
		}
	}
	readErr, decodeErr, writeErr := c.stream(chunks, fileHash, fileSize, blob, decode)
	if readErr != nil || decodeErr != nil || writeErr != nil {
		blob.Abort()
		if derr := chunkReader.Drain(); derr != nil || readErr != nil {
			if derr == nil {
				derr = readErr
			}
			return reject("truncated", fmt.Errorf("upload of %s broke off: %w", pi.StorePath, derr)), true
		}
		if blob.err != nil {
			return reject("storage", blob.err), false
		}
		err := decodeErr
		if err == nil {
			err = writeErr
		}
		return reject("corrupt", fmt.Errorf("%s: compressed NAR does not decode: %w", pi.StorePath, err)), false
	}
	got := narHash.Sum(nil)
	if narSize.n != pi.NarSize {
		blob.Abort()
		return reject("size", fmt.Errorf("%s: NAR is %d bytes, declared %d", pi.StorePath, narSize.n, pi.NarSize)), false
	}
	if string(got) != string(want.Digest()) {
		blob.Abort()
		return reject("hash", fmt.Errorf("%s: NAR hash is sha256:%s, declared %s", pi.StorePath, nixbase32.EncodeToString(got), pi.NarHash)), false
	}
	if check != nil {
		if err := check.Finish(got); err != nil {
			blob.Abort()
			return reject("content_address", fmt.Errorf("%s: %w", pi.StorePath, err)), false
		}
	}
	// staged says whether this stream staged h, and whether that may be referred to
	// from here: a pending output only from an output of the same step.
	staged := func(h string) (found, ok bool) {
		step, found := g.staged[h]
		if !found {
			step, found = known[h]
		}
		return found, step == 0 || step == a.pendingStep
	}
	var fileDigest []byte
	if !plain {
		fileDigest = fileHash.Sum(nil)
	}
	n := newNarinfo(pi, a, got, fileDigest, fileSize.n)
	refs := n.References
	var lookup, inCache []string
	for _, r := range pi.References {
		h := hashPart(r)
		if r == pi.StorePath || upstream[h] {
			continue
		}
		inCache = append(inCache, h)
		found, ok := staged(h)
		if found && !ok {
			blob.Abort()
			return reject("missing_reference", fmt.Errorf("%s: reference %s is an output of another step, not yet built", pi.StorePath, r)), false
		}
		if !found {
			lookup = append(lookup, h)
		}
	}
	if len(lookup) > 0 {
		present, err := c.db.PresentHashParts(ctx, lookup)
		if err != nil {
			blob.Abort()
			return reject("database", err), false
		}
		for _, h := range lookup {
			if !present[h] {
				blob.Abort()
				return reject("missing_reference", fmt.Errorf("%s: reference %s is neither in the cache nor upstream; send it first", pi.StorePath, storepath.StoreDir+"/"+refByHash(refs, h))), false
			}
		}
	}
	// A step's output is signed only once the step's success is recorded.
	if a.pendingStep == 0 {
		sig, err := c.sign(n)
		if err != nil {
			blob.Abort()
			return reject("signing", err), false
		}
		n.Sigs = []string{sig}
	}
	g.items = append(g.items, stagedPath{blob: blob.blob, small: blob.buf, name: strings.TrimPrefix(n.URL, "nar/"), n: n, refs: inCache, push: a.push})
	g.bytes += fileSize.n
	g.staged[n.HashPart] = a.pendingStep
	return nil, false
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

// sign is the cache's signature (name:base64) of the path n describes: what Nix
// checks against the key clients trust.
func (c *Cache) sign(n storage.Narinfo) (string, error) {
	sig, err := c.key.Sign(nil, Fingerprint(n.StorePath, n.NarHash, n.NarSize, n.References))
	if err != nil {
		return "", fmt.Errorf("sign %s: %w", n.StorePath, err)
	}
	return sig.String(), nil
}

// Signer signs a step's outputs when its success is recorded (storage.FinishStep).
func (c *Cache) Signer() storage.Signer { return c.sign }

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

// Present returns the output paths the cache or an upstream holds (the evaluating
// agent's question: the coordinator's cache decides what is already built).
func (c *Cache) Present(ctx context.Context, paths []string) ([]string, error) {
	hashes := make([]string, 0, len(paths))
	for _, p := range paths {
		if h := hashPart(p); h != "" {
			hashes = append(hashes, h)
		}
	}
	present, err := c.db.PresentHashParts(ctx, hashes)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(present))
	for _, p := range paths {
		h := hashPart(p)
		if present[h] || (len(c.cfg.UpstreamCaches) > 0 && c.inUpstream(ctx, h)) {
			out = append(out, p)
		}
	}
	return out, nil
}

// HandlePresent serves a protocol.StreamPresent stream.
func (c *Cache) HandlePresent(ctx context.Context, _ int64, st io.ReadWriter) error {
	var req protocol.PresentRequest
	if err := protocol.ReadFrame(st, &req); err != nil {
		return err
	}
	present, err := c.Present(ctx, req.Paths)
	if err != nil {
		return protocol.WriteFrame(st, protocol.PresentAnswer{Error: "coordinator database unavailable"})
	}
	return protocol.WriteFrame(st, protocol.PresentAnswer{Present: present})
}

// inUpstream reports whether a configured upstream cache serves the path (and, with
// upstream_keys, signs it with one of them).
func (c *Cache) inUpstream(ctx context.Context, hashPart string) bool {
	for _, base := range c.cfg.UpstreamCaches {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+"/"+hashPart+".narinfo", nil)
		if err != nil {
			continue
		}
		resp, err := c.cfg.HTTPClient.Do(req)
		if err != nil {
			continue
		}
		ok := resp.StatusCode == http.StatusOK && upstreamServes(resp.Body, hashPart, c.upKeys)
		resp.Body.Close()
		if ok {
			return true
		}
	}
	return false
}

// upstreamServes reads an upstream cache's narinfo answer for the hash part want:
// whether it is a well-formed narinfo of that path (an answer for another path, or
// without a NAR hash, is not), signed with one of keys when there are any.
func upstreamServes(body io.Reader, want string, keys []signature.PublicKey) bool {
	ni, err := narinfo.Parse(io.LimitReader(body, 1<<20))
	if err != nil || ni.Check() != nil || validStorePath(ni.StorePath) != nil || hashPart(ni.StorePath) != want ||
		ni.NarHash == nil || ni.NarHash.Algo() != nixhash.SHA256 || ni.NarSize == 0 || ni.NarSize > math.MaxInt64 {
		return false
	}
	if len(keys) == 0 {
		return true
	}
	refs := append([]string(nil), ni.References...)
	fp := Fingerprint(ni.StorePath, ni.NarHash.Format(nixhash.NixBase32, true), int64(ni.NarSize), refs)
	return signature.VerifyFirst(fp, ni.Signatures, keys)
}
