package ranges

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// The cases of RFC 9110 §14.1 and §15.5.17 against ten bytes of content, through a
// real server: a satisfiable set is 206 with exactly the bytes it names, an
// unsatisfiable one 416 with "bytes */10".
func TestServeContent_AnswersRangesAsRFC9110Says(t *testing.T) {
	const content = "0123456789"
	etag := `"v1"`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", etag)
		ServeContent(w, r, time.Time{}, strings.NewReader(content))
	}))
	t.Cleanup(srv.Close)
	cases := []struct {
		rng, ifRange string
		status       int
		contentRange string
		body         string
	}{
		// A suffix of length zero selects nothing: unsatisfiable (golang/go#81262).
		{rng: "bytes=-0", status: 416, contentRange: "bytes */10"},
		{rng: "bytes=-000", status: 416, contentRange: "bytes */10"},
		{rng: "bytes= -0 , -0", status: 416, contentRange: "bytes */10"},
		// With a satisfiable range beside it, that range alone is served (not multipart).
		{rng: "bytes=-0,0-1", status: 206, contentRange: "bytes 0-1/10", body: "01"},
		{rng: "bytes=2-3, -0", status: 206, contentRange: "bytes 2-3/10", body: "23"},
		// The neighbours, as before.
		{rng: "bytes=0-", status: 206, contentRange: "bytes 0-9/10", body: content},
		{rng: "bytes=-5", status: 206, contentRange: "bytes 5-9/10", body: "56789"},
		{rng: "bytes=-1", status: 206, contentRange: "bytes 9-9/10", body: "9"},
		{rng: "bytes=-100", status: 206, contentRange: "bytes 0-9/10", body: content},  // longer than the content: all of it
		{rng: "bytes=5-100", status: 206, contentRange: "bytes 5-9/10", body: "56789"}, // last-pos past the end: up to the end
		{rng: "bytes=9-9", status: 206, contentRange: "bytes 9-9/10", body: "9"},
		{rng: "bytes=10-", status: 416, contentRange: "bytes */10"}, // first-pos at the length: unsatisfiable
		{rng: "bytes=20-30", status: 416, contentRange: "bytes */10"},
		{rng: "bytes=10-5", status: 416, contentRange: "bytes */10"},
		// last-pos before first-pos is an invalid range; a server may ignore or reject it.
		{rng: "bytes=3-1", status: 416},
		// If-Range that does not match: the whole content, Range ignored (§13.1.5).
		{rng: "bytes=-0", ifRange: `"v0"`, status: 200, body: content},
		{rng: "bytes=-0", ifRange: etag, status: 416, contentRange: "bytes */10"},
		// Not a byte range at all: net/http's judgement.
		{rng: "lines=-0", status: 416},
	}
	for _, tc := range cases {
		req, err := http.NewRequest("GET", srv.URL, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Range", tc.rng)
		if tc.ifRange != "" {
			req.Header.Set("If-Range", tc.ifRange)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		name := tc.rng
		if tc.ifRange != "" {
			name += " If-Range " + tc.ifRange
		}
		if resp.StatusCode != tc.status || resp.Header.Get("Content-Range") != tc.contentRange {
			t.Errorf("%s: %d Content-Range %q, want %d %q", name, resp.StatusCode, resp.Header.Get("Content-Range"), tc.status, tc.contentRange)
			continue
		}
		if tc.status != 416 && string(body) != tc.body {
			t.Errorf("%s: body %q, want %q", name, body, tc.body)
		}
	}
}

// Empty content has no byte a range could name and no valid Content-Range to say so:
// Range is ignored (RFC 9110 §14.1.1 allows it) and the empty content is the answer.
func TestServeContent_EmptyContentIgnoresRange(t *testing.T) {
	for _, rng := range []string{"bytes=-0", "bytes=0-", "bytes=-5", "bytes=0-0"} {
		w := httptest.NewRecorder()
		r := httptest.NewRequest("GET", "/", nil)
		r.Header.Set("Range", rng)
		ServeContent(w, r, time.Time{}, strings.NewReader(""))
		if w.Code != 200 || w.Body.Len() != 0 || w.Header().Get("Content-Range") != "" {
			t.Errorf("%s on empty content: %d with %d bytes, Content-Range %q; want 200 and nothing", rng, w.Code, w.Body.Len(), w.Header().Get("Content-Range"))
		}
	}
}

func TestServeContent_LeavesTheCallersRequestAlone(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Range", "bytes=-0,0-1")
	ServeContent(httptest.NewRecorder(), r, time.Time{}, strings.NewReader("0123456789"))
	if got := r.Header.Get("Range"); got != "bytes=-0,0-1" {
		t.Errorf("the caller's Range became %q", got)
	}
}
