package client_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/client"
	"github.com/fc-ci/fc/coordinator/coordtest"
)

// TestLogFollow_AcrossDroppedConnections: fc log -f follows a build that prints a line
// every 100 ms to its end; the connection between fc and the coordinator is cut twice
// while the build runs, and every line is printed exactly once, in order.
func TestLogFollow_AcrossDroppedConnections(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	const n = 60
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf(`let
  %s
in {
  ticker = mk "ticker" { args = sh "sleep 1; i=1; while [ $i -le %d ]; do echo line $i; i=$((i+1)); sleep 0.1; done; echo > $out"; };
}
`, coordtest.MkLet(coordtest.Salt(t)), n)})
	_, js := c.Project("demo", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	c.Trigger(js, false)
	id := coordtest.BuildsOf(t, c, coordtest.Evaluated(t, c, js, 0))["ticker"].ID
	// The builder starts after fc connects: fc waits for the build to start.
	p := startProxy(t, c.Addr)
	stdout, stderr := newLines(), newLines()
	done := make(chan int, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	go func() {
		env := map[string]string{"FC_URL": p.URL()}
		done <- client.Main(ctx, client.Env{Args: []string{"log", "-f", strconv.FormatInt(id, 10)},
			Getenv: func(k string) string { return env[k] }, Stdout: stdout, Stderr: stderr})
	}()
	coordtest.Eventually(t, 30*time.Second, "fc connects", func() bool { return p.connections() == 1 })
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "builder"})

	drops := 0
	var printedAtDrop []int // bytes printed when each drop happened
	code := -1
	for code < 0 {
		select {
		case code = <-done:
		case <-stdout.changed:
			printed := strings.Count(stdout.String(), "\n")
			if (drops == 0 && printed >= 10) || (drops == 1 && printed >= 30) {
				if b := coordtest.GetBuild(t, c, id); b.Status != "running" {
					t.Fatalf("the build is %s before drop %d", b.Status, drops+1)
				}
				printedAtDrop = append(printedAtDrop, len(stdout.String()))
				p.drop()
				drops++
			}
		case <-ctx.Done():
			t.Fatalf("fc log -f did not end; printed:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		}
	}
	if code != 0 {
		t.Errorf("fc log -f: exit %d, stderr:\n%s", code, stderr.String())
	}
	var want strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&want, "line %d\n", i)
	}
	if stdout.String() != want.String() {
		t.Errorf("fc log -f printed:\n%s\nwant every line once:\n%s", stdout.String(), want.String())
	}
	if drops != 2 || p.connections() != 3 {
		t.Errorf("%d drops, %d connections; want 2 and 3", drops, p.connections())
	}
	// Each reconnect asked for the log from where fc had printed up to: at least
	// what it had printed when its connection dropped.
	reqs := p.requestLines()
	for i, r := range reqs {
		var gotID, offset int64
		if _, err := fmt.Sscanf(r, "GET /api/v1/builds/%d/log/stream?offset=%d HTTP/1.1", &gotID, &offset); err != nil || gotID != id {
			t.Errorf("request %d: %q", i, r)
			continue
		}
		if i == 0 && offset != 0 || i > 0 && i <= len(printedAtDrop) && (offset < int64(printedAtDrop[i-1]) || offset > int64(len(want.String()))) {
			t.Errorf("connection %d asked for offset %d; fc had printed %v bytes at the drops", i+1, offset, printedAtDrop)
		}
	}
	if got := strings.Count(stderr.String(), "reconnecting"); got != 2 {
		t.Errorf("stderr says reconnecting %d times:\n%s", got, stderr.String())
	}
	if !strings.Contains(stderr.String(), fmt.Sprintf("build %d has not started yet; waiting", id)) {
		t.Errorf("stderr does not say fc waits for the build:\n%s", stderr.String())
	}
}
