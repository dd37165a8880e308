// The side connection: a daemon path's batch asks Nix what it has built while the
// batch's own connection is busy building.

package realise

import (
	"context"
	"fmt"
	"sync"

	"github.com/fc-ci/fc/agent/nixworker"
	"github.com/fc-ci/fc/protocol"
)

// sideConn is one nix-daemon connection of a Batcher for queries only (which outputs
// are valid, their path infos), shared by its batches' early finishers: a batch's
// connection answers nothing until its BuildPaths ends, and a Nix process per
// query costs more than the trivial builds it would report. It starts on first use
// and again after it broke.
type sideConn struct {
	command  []string
	cacheDir string

	mu      sync.Mutex
	proc    *nixworker.Process
	started int
	closed  bool
}

// sideOptions: nothing is substituted or built on the side connection, and every
// answer is Nix's own (a path found invalid a moment ago may be valid now).
func sideOptions() nixworker.Options {
	return nixworker.Options{MaxJobs: 1, Overrides: freshLookups("")}
}

// with runs f on the connection, starting it if needed; a connection f broke is
// stopped, and the next call starts another.
func (s *sideConn) with(ctx context.Context, f func(*nixworker.Conn) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("%w: the batcher is closed", ErrInfrastructure)
	}
	if s.proc == nil {
		sctx, cancel := context.WithTimeout(ctx, daemonStartTimeout)
		proc, err := nixworker.Start(sctx, s.command, s.cacheDir)
		cancel()
		if err != nil {
			return fmt.Errorf("start a nix daemon for queries: %w", err)
		}
		s.started++
		if err := proc.Conn.SetOptions(sideOptions(), nil); err != nil {
			proc.Stop(stopGrace)
			return fmt.Errorf("set the query connection's options: %w", err)
		}
		s.proc = proc
	}
	err := f(s.proc.Conn)
	if s.proc.Conn.Err() != nil {
		s.proc.Stop(stopGrace)
		s.proc = nil
	}
	return err
}

// invalidPaths is the process path's invalidPaths, asked on the connection.
func (s *sideConn) invalidPaths(ctx context.Context, paths []string) (map[string]bool, error) {
	invalid := map[string]bool{}
	err := s.with(ctx, func(c *nixworker.Conn) error {
		valid, err := c.QueryValidPaths(paths)
		if err != nil {
			return fmt.Errorf("query valid paths: %w", err)
		}
		for _, p := range paths {
			if !valid[p] {
				invalid[p] = true
			}
		}
		return nil
	})
	return invalid, err
}

// pathInfos is connPathInfos on the connection.
func (s *sideConn) pathInfos(ctx context.Context, paths []string, skip func(string) bool) ([]protocol.PathInfo, error) {
	var infos []protocol.PathInfo
	err := s.with(ctx, func(c *nixworker.Conn) error {
		var err error
		infos, err = connPathInfos(c)(ctx, paths, skip)
		return err
	})
	return infos, err
}

// Started is how many daemons the connection has started.
func (s *sideConn) Started() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.started
}

// close stops the daemon, once no query runs.
func (s *sideConn) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.proc != nil {
		s.proc.Stop(stopGrace)
		s.proc = nil
	}
}
