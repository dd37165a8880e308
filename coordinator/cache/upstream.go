// Presence: which paths the cache or an upstream cache holds.

package cache

import (
	"context"
	"io"
	"math"
	"net/http"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/fc-ci/fc/protocol"
)

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
