package realise

import (
	"context"
	"strings"
	"testing"
)

// TestSideConn_AnswersValidityAndInfosAndOutlivesItsDaemon: the early finishers'
// query connection tells valid from invalid paths and reads path infos; when its
// daemon dies, the query in flight fails and the next one starts another daemon.
func TestSideConn_AnswersValidityAndInfosAndOutlivesItsDaemon(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	drv := instantiate(t, "echo > $out", "") // a .drv is valid once instantiated
	missing := "/nix/store/" + strings.Repeat("0", 32) + "-fc-side-missing"
	s := &sideConn{cacheDir: t.TempDir()}
	t.Cleanup(s.close)

	check := func(round string) {
		t.Helper()
		invalid, err := s.invalidPaths(ctx, []string{drv, missing})
		if err != nil {
			t.Fatalf("%s: %v", round, err)
		}
		if invalid[drv] || !invalid[missing] || len(invalid) != 1 {
			t.Fatalf("%s: invalid %v, want only %s", round, invalid, missing)
		}
		infos, err := s.pathInfos(ctx, []string{drv}, nil)
		if err != nil {
			t.Fatalf("%s: %v", round, err)
		}
		if len(infos) != 1 || infos[0].StorePath != drv || !strings.HasPrefix(infos[0].NarHash, "sha256:") || infos[0].NarSize == 0 {
			t.Fatalf("%s: infos %+v", round, infos)
		}
	}
	check("first")
	check("again")
	if n := s.Started(); n != 1 {
		t.Fatalf("%d daemons for two rounds of queries, want one", n)
	}

	s.mu.Lock()
	s.proc.Stop(0) // the daemon dies between queries
	s.mu.Unlock()
	if _, err := s.invalidPaths(ctx, []string{drv}); err == nil {
		t.Fatal("a query on a dead daemon succeeded")
	}
	check("after the daemon died")
	if n := s.Started(); n != 2 {
		t.Fatalf("%d daemons started, want a second one after the first died", n)
	}

	s.close()
	if _, err := s.invalidPaths(ctx, []string{drv}); err == nil {
		t.Fatal("a query after close succeeded")
	}
}
