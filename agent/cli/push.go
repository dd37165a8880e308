package cli

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/fc-ci/fc/agent/config"
	"github.com/fc-ci/fc/agent/push"
	"github.com/fc-ci/fc/agent/session"
	"github.com/fc-ci/fc/protocol"
)

// pushPaths is fc-agent push: connect with the agent's own identity (enrolling first
// if it has a token and no pinned key yet) and upload the closures of paths.
func pushPaths(ctx context.Context, cfg config.Config, env Env, paths []string) error {
	if len(paths) == 0 {
		return errors.New("push needs at least one store path")
	}
	for i, p := range paths {
		abs, err := filepath.EvalSymlinks(p) // ./result links work like in nix copy
		if err == nil {
			paths[i] = abs
		}
	}
	log := newLogger(env.Stderr, cfg.LogLevel)
	sc, err := SessionConfig(cfg, log, env.ProtocolVersion)
	if err != nil {
		return err
	}
	sc.Purpose = protocol.PurposePush
	// Nix works out the closure while the session is set up.
	type closure struct {
		infos []protocol.PathInfo
		err   error
	}
	start := time.Now()
	closed := make(chan closure, 1)
	go func() {
		infos, err := push.ClosureInfos(ctx, paths)
		closed <- closure{infos, err}
	}()
	conn, err := dialAny(ctx, sc, cfg.URLs())
	cl := <-closed
	ready := time.Since(start)
	if cl.err != nil {
		if conn != nil {
			conn.Close()
		}
		return cl.err
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	infos := cl.infos
	st, err := push.Upload(ctx, conn, infos, push.Options{
		Level: zstd.EncoderLevelFromZstd(cfg.Agent.CompressionLevel),
		Progress: func(p string, size int64) {
			fmt.Fprintf(env.Stdout, "sent %s (%s)\n", p, mb(size))
		},
	})
	secs := st.Elapsed.Seconds()
	rate := 0.0
	if secs > 0 {
		rate = float64(st.NarBytes) / 1e6 / secs
	}
	fmt.Fprintf(env.Stdout, "%d paths in the closure: sent %d, %d already cached, %d on an upstream cache; %s of NAR (%s stored; %d paths uncompressed, as they do not compress) in %.2f s, %.1f MB/s (after %.2f s to find the closure and connect)\n",
		st.Offered, st.Sent, st.Offered-st.Sent-st.Upstream-len(st.Rejections), st.Upstream, mb(st.NarBytes), mb(st.FileBytes), st.Plain,
		secs, rate, ready.Seconds())
	return err
}

func mb(n int64) string { return fmt.Sprintf("%.2f MB", float64(n)/1e6) }

// dialAny connects to the first of urls that answers: a coordinator that is down
// (or refuses for now) leaves the others; a refusal for good ends the tries, as
// coordinators sharing one database would all say the same.
func dialAny(ctx context.Context, sc session.Config, urls []string) (*session.Conn, error) {
	var errs []error
	for _, u := range urls {
		sc.URL = u
		conn, err := session.Dial(ctx, sc, session.State{Capabilities: protocol.Capabilities{Roles: []string{}}})
		if err == nil {
			return conn, nil
		}
		var refused *protocol.Refused
		if errors.As(err, &refused) && refused.Permanent() || ctx.Err() != nil {
			return nil, err
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}
