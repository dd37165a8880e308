package evalqueue_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	agentcli "github.com/fc-ci/fc/agent/cli"
	agentconfig "github.com/fc-ci/fc/agent/config"
	"github.com/fc-ci/fc/agent/session"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/protocol"
)

// An agent streams its report while it evaluates: what it sent is staged out of
// sight (no build, step or error of the evaluation is visible); the agent dies
// mid-stream and the staged part is discarded, leaving nothing; the evaluation is
// retried and stored whole by another agent. Then a report the old way (all at the
// end, on StreamEvalReport, as older agents send it) is still stored.
func TestEvaluation_StreamedReportIsInvisibleUntilDoneAndADeadAgentLeavesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) {
		cfg.Queue.LeaseTTL, cfg.Queue.LeaseGrace = 3, 1
		cfg.Eval.RestrictEval = false // the gate below is outside the checkout
	}})
	// slow waits for a writer on a named pipe: the evaluation stops there, its
	// earlier jobs streamed, until the test opens the gate.
	gate := filepath.Join(t.TempDir(), "gate")
	if err := syscall.Mkfifo(gate, 0o600); err != nil {
		t.Fatal(err)
	}
	release := strings.Replace(releaseNix(coordtest.Salt(t), false), "broken-throw =",
		fmt.Sprintf("slow = builtins.seq (builtins.readFile %s) (mk \"slow\" { });\n  broken-throw =", gate), 1)
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": release})
	_, js := c.Project("stream", repo.Dir, nil)
	dirA := t.TempDir()
	a := startEvalAgent(t, c, "doomed", dirA)
	c.Trigger(js, false)
	ev := waitEvaluation(t, c, js, "running")

	count := func(q string, args ...any) int {
		t.Helper()
		var n int
		if err := c.DB.Pool().QueryRow(ctx, q, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	staged := func() int {
		return count(`SELECT count(*) FROM eval_ingest_jobs j JOIN eval_ingests i ON i.id = j.ingest_id WHERE i.evaluation_id = $1`, ev.ID)
	}
	coordtest.Eventually(t, 120*time.Second, "jobs evaluated before the gate are staged", func() bool { return staged() >= 5 })
	if n := count(`SELECT (SELECT count(*) FROM builds) + (SELECT count(*) FROM steps) +
		(SELECT count(*) FROM evaluation_errors) + (SELECT count(*) FROM evaluations WHERE status <> 'running')`); n != 0 {
		t.Fatalf("a partly streamed evaluation is visible: %d rows", n)
	}

	a.stop() // dies mid-stream: its nix process waits at the gate
	coordtest.Eventually(t, 60*time.Second, "the broken stream's staged rows are gone", func() bool {
		return count(`SELECT count(*) FROM eval_ingests WHERE evaluation_id = $1`, ev.ID) == 0
	})
	if n := count(`SELECT (SELECT count(*) FROM builds) + (SELECT count(*) FROM steps)`); n != 0 {
		t.Fatalf("a dead agent's stream left %d builds and steps", n)
	}
	startEvalAgent(t, c, "rescuer", t.TempDir())
	go func() {
		// Opening blocks until the rescuer's evaluation reads it.
		if f, err := os.OpenFile(gate, os.O_WRONLY, 0); err == nil {
			_, _ = f.WriteString("open")
			_ = f.Close()
		}
	}()
	done := waitEvaluation(t, c, js, "succeeded")
	var attempts int
	if err := c.DB.Pool().QueryRow(ctx, `SELECT attempts FROM evaluations WHERE id = $1`, ev.ID).Scan(&attempts); err != nil ||
		done.ID != ev.ID || attempts != 2 {
		t.Fatalf("retry: evaluation %d (want %d), %d attempts (want 2), %v", done.ID, ev.ID, attempts, err)
	}
	builds := coordtest.BuildsOf(t, c, ev.ID)
	for _, job := range []string{"slow", "success", "chain", "diamond.top", "all", "multi"} {
		if builds[job].DrvPath == "" {
			t.Errorf("the retried evaluation lacks %s: %+v", job, builds)
		}
	}
	if done.NrJobs != len(builds) || len(done.Errors) != 4 {
		t.Errorf("stored %d jobs for %d builds and errors %+v", done.NrJobs, len(builds), done.Errors)
	}
	if n := count(`SELECT count(*) FROM eval_ingests`); n != 0 {
		t.Errorf("%d staged reports left after finishing", n)
	}

	// An older agent reports at the end on StreamEvalReport: still stored.
	var agentID int64
	if err := c.DB.Pool().QueryRow(ctx, `SELECT id FROM agents WHERE name = 'doomed'`).Scan(&agentID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DB.Pool().Exec(ctx, `INSERT INTO evaluations (jobset_id, commit, inputs_hash, trigger, status, agent_id,
		lease_epoch, lease_expires_at, started_at, attempts) VALUES ($1, 'old', 'old', 'api', 'running', $2, 1, now() + interval '1 hour', now(), 1)`,
		js, agentID); err != nil {
		t.Fatal(err)
	}
	var oldID int64
	if err := c.DB.Pool().QueryRow(ctx, `SELECT max(id) FROM evaluations`).Scan(&oldID); err != nil {
		t.Fatal(err)
	}
	cfg := agentconfig.Defaults()
	cfg.Coordinator.URL, cfg.Agent.StateDir, cfg.Agent.Name = c.URL, dirA, "doomed"
	sc, err := agentcli.SessionConfig(cfg, slog.New(slog.DiscardHandler), 0)
	if err != nil {
		t.Fatal(err)
	}
	sc.Purpose = protocol.PurposePush
	conn, err := session.Dial(ctx, sc, session.State{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := conn.OpenStream(protocol.StreamEvalReport)
	if err != nil {
		t.Fatal(err)
	}
	drv := "/nix/store/" + strings.Repeat("a", 32) + "-old.drv"
	outs := map[string]string{"out": "/nix/store/" + strings.Repeat("b", 32) + "-old"}
	for _, f := range []any{
		protocol.EvalReport{Work: protocol.WorkRef{Kind: protocol.WorkEval, ID: oldID, Epoch: 1}, EvalSeconds: 1},
		protocol.EvalBatch{Jobs: []protocol.EvalJob{{Attr: "old", Name: "old", DrvPath: drv, System: "x86_64-linux", Outputs: outs}}},
		protocol.EvalBatch{Nodes: []protocol.EvalNode{{DrvPath: drv, System: "x86_64-linux", Outputs: outs}}},
		protocol.EvalBatch{Done: true},
	} {
		if err := protocol.WriteFrame(st, f); err != nil {
			t.Fatal(err)
		}
	}
	var v protocol.EvalVerdict
	if err := protocol.ReadFrame(st, &v); err != nil || !v.Accepted {
		t.Fatalf("an old agent's report: %+v %v", v, err)
	}
	if b := coordtest.BuildsOf(t, c, oldID)["old"]; b.DrvPath != drv || b.Status != "queued" {
		t.Errorf("an old agent's job: %+v", b)
	}
}
