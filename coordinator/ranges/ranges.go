// Package ranges serves seekable content with HTTP Range requests (NARs, build logs):
// net/http's ServeContent, with the one case it gets wrong answered as RFC 9110 says.
package ranges

import (
	"io"
	"net/http"
	"strings"
	"time"
)

// ServeContent is http.ServeContent (no name: the caller sets Content-Type), except
// for suffix ranges of length zero. "bytes=-0" selects no bytes, which RFC 9110
// §14.1.1 calls unsatisfiable, but net/http answers it 206 with the invalid
// Content-Range "bytes 10-9/10" (golang/go#81262). Such ranges are dropped from the
// set before net/http sees it; a set left empty asks net/http for a range that starts
// past any end, so it answers as for every unsatisfiable set: 416 with
// "Content-Range: bytes */<size>".
// Empty content has no byte any range could name, and a 206 could not say so (net/http
// sends "bytes 0--1/0" for "bytes=-5"): Range is ignored for it, as RFC 9110 §14.1.1
// allows, and the answer is 200. Everything else (If-Range, preconditions, multipart
// ranges, sendfile for an *os.File) stays net/http's.
func ServeContent(w http.ResponseWriter, r *http.Request, modtime time.Time, content io.ReadSeeker) {
	if h := r.Header.Get("Range"); h != "" {
		kept, changed := dropEmptySuffixes(h)
		if size, err := content.Seek(0, io.SeekEnd); err == nil && size == 0 {
			kept, changed = "", true
		}
		if _, err := content.Seek(0, io.SeekStart); err != nil {
			http.Error(w, "seek: "+err.Error(), http.StatusInternalServerError)
			return
		}
		if changed {
			r = r.Clone(r.Context())
			if kept == "" {
				r.Header.Del("Range")
			} else {
				r.Header.Set("Range", kept)
			}
		}
	}
	http.ServeContent(w, r, "", modtime, content)
}

// unsatisfiable is a byte range no content reaches (its first position is the largest
// int64), so net/http answers it 416 with the content's size.
const unsatisfiable = "bytes=9223372036854775807-"

// dropEmptySuffixes removes the suffix ranges of length zero from a Range value and
// says whether there were any. Values net/http does not take as byte ranges are left
// for it to judge.
func dropEmptySuffixes(h string) (string, bool) {
	set, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return h, false
	}
	var kept []string
	dropped := false
	for spec := range strings.SplitSeq(set, ",") {
		spec = strings.TrimSpace(spec)
		if spec == "" {
			continue
		}
		start, end, _ := strings.Cut(spec, "-")
		end = strings.TrimSpace(end)
		if strings.TrimSpace(start) == "" && end != "" && strings.Trim(end, "0") == "" {
			dropped = true
			continue
		}
		kept = append(kept, spec)
	}
	switch {
	case !dropped:
		return h, false
	case len(kept) == 0:
		return unsatisfiable, true
	}
	return "bytes=" + strings.Join(kept, ","), true
}
