// The Cache: configuration, construction, metrics, and the store path helpers.

package cache

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/storepath"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/fc-ci/fc/coordinator/auth"
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
	// bearer token or as the password of HTTP basic authentication (so netrc works),
	// or an agent's current cache read token (what builders substitute with).
	ReadKeys auth.Readers
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
	// Redirect answers a NAR download with a 302 to a presigned URL, valid for
	// PresignExpiry (0: an hour), when the blob store is a Presigner and holds the
	// blob; otherwise NARs stream through the coordinator.
	Redirect      bool
	PresignExpiry time.Duration
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
	rendered *expirable.LRU[string, *narinfoAnswer]
	hdr      headerValues
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
	offered                              prometheus.Counter
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
	if cfg.PresignExpiry <= 0 {
		cfg.PresignExpiry = time.Hour
	}
	if cfg.GroupPaths <= 0 {
		cfg.GroupPaths = groupPaths
	}
	if cfg.GroupBytes <= 0 {
		cfg.GroupBytes = groupBytes
	}
	c := &Cache{cfg: cfg, db: db, blobs: blobs, key: key, log: cfg.Logger,
		rendered: expirable.NewLRU[string, *narinfoAnswer](renderedEntries, nil, renderedTTL),
		hdr:      headerValues{narinfoType: []string{"text/x-nix-narinfo"}, narinfoCaching: []string{"public, max-age=3600"}}}
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
		offered:       prometheus.NewCounter(prometheus.CounterOpts{Name: "fc_cache_upload_offered_paths_total", Help: "Store paths agents offered to upload (each upload's offer, whether sent or held already)."}),
		rejections:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fc_cache_upload_rejections_total", Help: "Uploads rejected, by reason."}, []string{"reason"}),
	}
	// Every reason appears from the start, at zero, rather than on first rejection.
	for _, r := range []string{"bad_info", "not_allowed", "storage", "truncated", "corrupt", "size", "hash", "content_address", "database", "missing_reference", "signing", "incomplete_offer"} {
		c.m.rejections.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(c.m.narinfoHits, c.m.narinfoMisses, c.m.narBytes, c.m.uploads, c.m.uploadBytes, c.m.offered, c.m.rejections,
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
