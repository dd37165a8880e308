package channels

import (
	"bytes"
	"fmt"
	"html"
	"net/http"
	"os"
	"os/exec"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

// Handler serves the channels as nix-channel reads them, mounted at /channel.
// nix-channel first fetches the channel URL itself (no trailing slash), then
// <url>/binary-cache-url and <url>/nixexprs.tar.xz: the bare URL answers 200, never a
// redirect (a redirect would make it fetch <url>//nixexprs.tar.xz).
func (c *Channels) Handler() http.Handler {
	r := chi.NewRouter()
	if c.cfg.ReadKeys != nil {
		r.Use(auth.RequireKey(c.cfg.ReadKeys, func(w http.ResponseWriter, r *http.Request, err error) {
			if err != nil {
				c.fail(w, r, err)
				return
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="fc"`)
			httpkit.WriteError(w, r, http.StatusUnauthorized, "this coordinator's channels need an API key (cache.private)")
		}))
	}
	r.Get("/{name}", c.index)
	r.Get("/{name}/", c.index)
	r.Get("/{name}/binary-cache-url", c.binaryCacheURL)
	r.Get("/{name}/store-paths.xz", c.storePaths)
	r.Get("/{name}/nixexprs.tar.xz", c.nixexprs)
	return r
}

// served is the channel named in the URL, answering 404 itself when it has no
// evaluation yet.
func (c *Channels) served(w http.ResponseWriter, r *http.Request) (storage.NixChannel, bool) {
	ch, err := c.db.GetChannel(r.Context(), chi.URLParam(r, "name"))
	if err != nil {
		c.fail(w, r, err)
		return ch, false
	}
	if ch.EvaluationID == nil {
		httpkit.WriteError(w, r, http.StatusNotFound, fmt.Sprintf("channel %q has no evaluation yet", ch.Name))
		return ch, false
	}
	return ch, true
}

func (c *Channels) index(w http.ResponseWriter, r *http.Request) {
	ch, ok := c.served(w, r)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	n := html.EscapeString(ch.Name)
	fmt.Fprintf(w, `<!doctype html><title>Channel %s</title><h1>Channel %s</h1>
<p>Follows %s/%s, at evaluation %d (commit %s).</p>
<p><code>nix-channel --add URL-OF-THIS-PAGE %s</code></p>
<ul><li><a href="/channel/%s/nixexprs.tar.xz">nixexprs.tar.xz</a></li>
<li><a href="/channel/%s/store-paths.xz">store-paths.xz</a></li>
<li><a href="/channel/%s/binary-cache-url">binary-cache-url</a></li></ul>
`, n, n, html.EscapeString(ch.ProjectName), html.EscapeString(ch.JobsetName), *ch.EvaluationID,
		html.EscapeString(ch.Commit), n, n, n, n)
}

func (c *Channels) binaryCacheURL(w http.ResponseWriter, r *http.Request) {
	if _, ok := c.served(w, r); !ok {
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprint(w, c.cfg.CacheURL)
}

// storePaths is the channel's evaluation's output paths, one per line, xz-compressed.
func (c *Channels) storePaths(w http.ResponseWriter, r *http.Request) {
	ch, ok := c.served(w, r)
	if !ok {
		return
	}
	paths, err := c.db.EvaluationOutputPaths(r.Context(), *ch.EvaluationID)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	var text string
	if len(paths) > 0 {
		text = strings.Join(paths, "\n") + "\n"
	}
	cmd := exec.CommandContext(r.Context(), "xz", "-c", "-q")
	cmd.Stdin = strings.NewReader(text)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		c.fail(w, r, fmt.Errorf("xz store paths of channel %q: %w: %s", ch.Name, err, stderr.String()))
		return
	}
	w.Header().Set("Content-Type", "application/x-xz")
	_, _ = w.Write(out.Bytes())
}

// nixexprs is the evaluated source (the evaluation's commit of the project's
// repository) as a tarball with one top-level directory, xz-compressed.
func (c *Channels) nixexprs(w http.ResponseWriter, r *http.Request) {
	ch, ok := c.served(w, r)
	if !ok {
		return
	}
	file, err := c.archive(r.Context(), ch)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	f, err := os.Open(file)
	if err != nil {
		c.fail(w, r, fmt.Errorf("open the tarball of channel %q: %w", ch.Name, err))
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/x-xz")
	w.Header().Set("Content-Disposition", `attachment; filename="nixexprs.tar.xz"`)
	http.ServeContent(w, r, "nixexprs.tar.xz", ch.UpdatedAt, f)
}
