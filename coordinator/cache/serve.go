package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/ranges"
	"github.com/fc-ci/fc/storage"
)

// isNixBase32 says whether s is all nixbase32 digits (0-9 and a-z without e, o, t,
// u). A loop rather than a regexp: it runs on every narinfo request.
func isNixBase32(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'z' || c == 'e' || c == 'o' || c == 't' || c == 'u') {
			return false
		}
	}
	return true
}

// narinfoHash is the hash part of a narinfo file name, <32 nixbase32>.narinfo.
func narinfoHash(file string) (string, bool) {
	h, ok := strings.CutSuffix(file, ".narinfo")
	return h, ok && len(h) == 32 && isNixBase32(h)
}

// validNARName says whether file is <52 nixbase32>.nar or .nar.zst.
func validNARName(file string) bool {
	h, ok := strings.CutSuffix(file, ".nar.zst")
	if !ok {
		h, ok = strings.CutSuffix(file, ".nar")
	}
	return ok && len(h) == 52 && isNixBase32(h)
}

// Handler serves /nix-cache/. Nix's rules win here: anything the cache does not have
// or cannot parse is a 404 (Nix treats other 4xx as errors that disable the cache),
// and only an unreachable database gives 503 (Nix retries 5xx).
func (c *Cache) Handler() http.Handler {
	r := chi.NewRouter()
	if c.cfg.ReadKeys != nil {
		r.Use(auth.RequireReader(c.cfg.ReadKeys, c.refuseRead))
	}
	r.NotFound(notFound)
	r.MethodNotAllowed(notFound)
	for _, m := range []string{http.MethodGet, http.MethodHead} {
		r.MethodFunc(m, "/nix-cache-info", c.cacheInfo)
		r.MethodFunc(m, "/{file}", c.narinfo)
		r.MethodFunc(m, "/nar/{file}", c.nar)
		r.MethodFunc(m, "/log/{drv}", c.buildLog)
	}
	return r
}

// refuseRead answers a reader of a private cache without a valid key or agent token
// (auth.RequireReader).
// Nix treats 401 on GET and HEAD as a miss, so a client without credentials sees an
// empty cache rather than an error.
func (c *Cache) refuseRead(w http.ResponseWriter, r *http.Request, err error) {
	if err != nil {
		c.unavailable(w, r, err)
		return
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="fc-nix-cache"`)
	http.Error(w, "this cache needs an API key (bearer token, or HTTP basic password)", http.StatusUnauthorized)
}

func notFound(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusNotFound)
	_, _ = io.WriteString(w, "404 not found\n")
}

func (c *Cache) cacheInfo(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/x-nix-cache-info")
	fmt.Fprintf(w, "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: %d\n", c.cfg.Priority)
}

// Render is the narinfo text Nix reads for n.
func Render(n storage.Narinfo) (string, error) {
	fh, err := nixhash.ParseAny(n.FileHash, nil)
	if err != nil {
		return "", err
	}
	nh, err := nixhash.ParseAny(n.NarHash, nil)
	if err != nil {
		return "", err
	}
	ni := narinfo.NarInfo{StorePath: n.StorePath, URL: n.URL, Compression: n.Compression,
		FileHash: fh, FileSize: uint64(n.FileSize), NarHash: nh, NarSize: uint64(n.NarSize),
		References: n.References, Deriver: n.Deriver, CA: n.CA}
	for _, s := range n.Sigs {
		sig, err := signature.ParseSignature(s)
		if err != nil {
			return "", err
		}
		ni.Signatures = append(ni.Signatures, sig)
	}
	return ni.String(), nil
}

func (c *Cache) narinfo(w http.ResponseWriter, r *http.Request) {
	hash, ok := narinfoHash(chi.URLParam(r, "file"))
	if !ok {
		notFound(w, r)
		return
	}
	ans, ok := c.rendered.Get(hash)
	if !ok {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		n, err := c.db.GetNarinfo(ctx, hash)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			// Misses are not remembered: an upload must be visible at once.
			c.m.narinfoMisses.Inc()
			notFound(w, r)
			return
		case err != nil:
			c.unavailable(w, r, err)
			return
		}
		text, err := Render(n)
		if err != nil {
			c.log.Error("render narinfo", "path", n.StorePath, "err", err)
			notFound(w, r)
			return
		}
		ans = &narinfoAnswer{text: text, length: []string{strconv.Itoa(len(text))}}
		if c.listening.Load() {
			c.rendered.Add(hash, ans)
		}
	}
	c.m.narinfoHits.Inc()
	// The header values are the cache's own slices, not copies: a hit allocates
	// nothing here. net/http only reads them; a Set elsewhere replaces, never edits.
	h := w.Header()
	h["Content-Type"] = c.hdr.narinfoType
	h["Content-Length"] = ans.length
	h["Cache-Control"] = c.hdr.narinfoCaching
	if r.Method == http.MethodHead {
		return
	}
	_, _ = io.WriteString(w, ans.text)
}

// narinfoAnswer is a rendered narinfo, as served.
type narinfoAnswer struct {
	text   string
	length []string // Content-Length
}

// headerValues are the values of the headers every narinfo answer carries.
type headerValues struct {
	narinfoType, narinfoCaching []string
}

func (c *Cache) unavailable(w http.ResponseWriter, r *http.Request, err error) {
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) || pgconn.SafeToRetry(err) || errors.Is(err, context.DeadlineExceeded) {
		w.Header().Set("Retry-After", "5")
		http.Error(w, "database unavailable", http.StatusServiceUnavailable)
		return
	}
	c.log.Error("cache lookup", "path", r.URL.Path, "err", err)
	http.Error(w, "database unavailable", http.StatusServiceUnavailable)
}

// nar serves a blob: Range requests (Nix resumes downloads), a strong ETag (the name
// is the content's hash) and immutable caching.
func (c *Cache) nar(w http.ResponseWriter, r *http.Request) {
	file := chi.URLParam(r, "file")
	if !validNARName(file) {
		notFound(w, r)
		return
	}
	if c.redirect(w, r, file) {
		return
	}
	b, err := c.openBlob(r.Context(), file)
	if errors.Is(err, storage.ErrNotFound) {
		notFound(w, r)
		return
	}
	if err != nil {
		c.unavailable(w, r, err)
		return
	}
	defer b.Close()
	h := w.Header()
	hash, zst := strings.CutSuffix(file, ".nar.zst")
	if zst {
		h.Set("Content-Type", "application/zstd")
	} else {
		hash = strings.TrimSuffix(file, ".nar")
		h.Set("Content-Type", "application/x-nix-nar")
	}
	h.Set("ETag", `"`+hash+`"`)
	h.Set("Cache-Control", "public, max-age=31536000, immutable")
	// Hand ServeContent the *os.File itself when there is one: net/http then uses
	// sendfile, which a wrapping reader (or writer) would prevent.
	var content io.ReadSeeker = b
	if f, ok := b.(interface{ OSFile() *os.File }); ok {
		content = f.OSFile()
	}
	ranges.ServeContent(w, r, time.Time{}, content)
	if r.Method == http.MethodGet && r.Header.Get("Range") == "" {
		c.m.narBytes.Add(float64(b.Size()))
	}
}

// redirect answers a NAR request with a 302 to a presigned URL of its blob, when
// the cache is configured to and the blob store holds it (a small blob lives in
// PostgreSQL and is served as usual). It reports whether it answered.
func (c *Cache) redirect(w http.ResponseWriter, r *http.Request, file string) bool {
	p, ok := c.blobs.(Presigner)
	if !c.cfg.Redirect || !ok {
		return false
	}
	u, err := p.Presign(r.Context(), file, c.cfg.PresignExpiry)
	if isNotExist(err) {
		return false
	}
	if err != nil {
		c.log.Warn("presign NAR", "file", file, "err", err)
		w.Header().Set("Retry-After", "5")
		http.Error(w, "blob store unavailable", http.StatusServiceUnavailable)
		return true
	}
	w.Header().Set("Cache-Control", "no-store") // the URL expires
	http.Redirect(w, r, u.String(), http.StatusFound)
	return true
}

// PublicKeyHandler serves the signing key's public half as plain text.
func (c *Cache) PublicKeyHandler(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, c.PublicKey()+"\n")
}

// Routes adds the cache's API routes under /api/v1.
func (c *Cache) Routes(r chi.Router) {
	r.Get("/cache/public-key", c.PublicKeyHandler)
}
