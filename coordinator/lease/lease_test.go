package lease_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/lease"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

var settings = storage.LeaseConfig{TTL: time.Minute, Grace: 10 * time.Second, MaxAttempts: 2, Backoff: time.Hour}

// held is an agent holding one evaluation and one step on a real database.
type held struct {
	db         *storage.DB
	keeper     *lease.Keeper
	agent      int64
	eval, step storage.Lease
	buildID    int64 // the step's build
}

func (h *held) lease(kind storage.LeaseKind) storage.Lease {
	if kind == storage.LeaseStep {
		return h.step
	}
	return h.eval
}

func ref(l storage.Lease) protocol.WorkRef {
	kind := protocol.WorkEval
	if l.Kind == storage.LeaseStep {
		kind = protocol.WorkStep
	}
	return protocol.WorkRef{Kind: kind, ID: l.ID, Epoch: l.Epoch}
}

func hold(t *testing.T) *held {
	t.Helper()
	ctx := context.Background()
	db := storagetest.New(t)
	h := &held{db: db, keeper: lease.New(lease.Config{Store: db, Settings: settings})}
	p, err := db.CreateProject(ctx, storage.ProjectFields{Name: "p", RepositoryURL: "/r", Enabled: true})
	if err != nil {
		t.Fatal(err)
	}
	j, err := db.CreateJobset(ctx, p.ID, storage.JobsetFields{Name: "main", NixExpression: "release.nix",
		SchedulingShares: 100, State: storage.JobsetEnabled, KeepNr: 3})
	if err != nil {
		t.Fatal(err)
	}
	a, err := db.RegisterAgent(ctx, "builder", "ssh-ed25519 AAAA", "SHA256:builder")
	if err != nil {
		t.Fatal(err)
	}
	h.agent = a.ID
	claimEval := func() storage.Lease {
		if _, err := db.CreateEvaluation(ctx, storage.NewEvaluation{JobsetID: j.ID, Commit: "c", InputsHash: "h", Trigger: "api"}); err != nil {
			t.Fatal(err)
		}
		l, ok, err := db.ClaimEvaluation(ctx, h.agent, settings.TTL)
		if err != nil || !ok {
			t.Fatalf("claim an evaluation: %v %v", ok, err)
		}
		return l
	}
	// The first evaluation makes a step; the second stays running.
	const drv, out = "/nix/store/00000000000000000000000000000000-x.drv", "/nix/store/11111111111111111111111111111111-x"
	first := claimEval()
	if err := db.FinishEvaluation(ctx, first, storage.EvalOutcome{
		Jobs:  []storage.EvalJob{{Attr: "x", DrvPath: drv, System: "x86_64-linux", Outputs: map[string]string{"out": out}}},
		Nodes: []storage.EvalNode{{DrvPath: drv, System: "x86_64-linux", Outputs: map[string]string{"out": out}}},
	}); err != nil {
		t.Fatal(err)
	}
	h.step = claimStep(t, db, h.agent)
	h.eval = claimEval()
	if err := db.Pool().QueryRow(ctx, `SELECT id FROM builds WHERE step_id = $1`, h.step.ID).Scan(&h.buildID); err != nil {
		t.Fatal(err)
	}
	return h
}

// claimAgain claims the queued work of kind again.
func (h *held) claimAgain(t *testing.T, kind storage.LeaseKind) {
	t.Helper()
	if kind == storage.LeaseStep {
		h.step = claimStep(t, h.db, h.agent)
		return
	}
	l, ok, err := h.db.ClaimEvaluation(context.Background(), h.agent, settings.TTL)
	if err != nil || !ok {
		t.Fatalf("claim the evaluation again: %v %v", ok, err)
	}
	h.eval = l
}

func claimStep(t *testing.T, db *storage.DB, agent int64) storage.Lease {
	t.Helper()
	got, err := db.ClaimSteps(context.Background(), storage.AgentSlots{AgentID: agent, Systems: []string{"x86_64-linux"}, N: 1, TTL: settings.TTL})
	if err != nil || len(got) != 1 {
		t.Fatalf("claim a step: %v %v", got, err)
	}
	return got[0].Lease
}

// row is the lease's work as stored.
type row struct {
	status    string
	attempts  int
	agent     *int64
	expiresIn *float64 // seconds from now
	notBefore *float64 // seconds from now
	error     string
}

func (r row) String() string {
	f := func(p *float64) string {
		if p == nil {
			return "NULL"
		}
		return fmt.Sprintf("%.1fs", *p)
	}
	agent := "NULL"
	if r.agent != nil {
		agent = fmt.Sprint(*r.agent)
	}
	return fmt.Sprintf("{status %s, attempts %d, agent %s, expires in %s, not before %s, error %q}",
		r.status, r.attempts, agent, f(r.expiresIn), f(r.notBefore), r.error)
}

func (h *held) row(t *testing.T, kind storage.LeaseKind) row {
	t.Helper()
	q := `SELECT status, attempts, agent_id, extract(epoch FROM lease_expires_at - now())::float8,
		extract(epoch FROM not_before - now())::float8, coalesce(error, '') FROM evaluations WHERE id = $1`
	if kind == storage.LeaseStep {
		q = `SELECT status, attempts, agent_id, extract(epoch FROM lease_expires_at - now())::float8,
			extract(epoch FROM not_before - now())::float8, coalesce(error, '') FROM steps WHERE id = $1`
	}
	var r row
	if err := h.db.Pool().QueryRow(context.Background(), q, h.lease(kind).ID).Scan(&r.status, &r.attempts, &r.agent,
		&r.expiresIn, &r.notBefore, &r.error); err != nil {
		t.Fatal(err)
	}
	return r
}

// failures is the agent's count of consecutive infrastructure failures.
func (h *held) failures(t *testing.T) int {
	t.Helper()
	a, err := h.db.GetAgent(context.Background(), h.agent)
	if err != nil {
		t.Fatal(err)
	}
	return a.ConsecutiveFailures
}

func (h *held) exec(t *testing.T, q string, args ...any) {
	t.Helper()
	if _, err := h.db.Pool().Exec(context.Background(), q, args...); err != nil {
		t.Fatal(err)
	}
}

// expireSoon leaves every lease one second to live.
func (h *held) expireSoon(t *testing.T) {
	h.exec(t, `UPDATE evaluations SET lease_expires_at = now() + interval '1 second' WHERE status = 'running'`)
	h.exec(t, `UPDATE steps SET lease_expires_at = now() + interval '1 second' WHERE status = 'running'`)
}

// expire ends every lease.
func (h *held) expire(t *testing.T) {
	h.exec(t, `UPDATE evaluations SET lease_expires_at = now() - interval '1 second' WHERE status = 'running'`)
	h.exec(t, `UPDATE steps SET lease_expires_at = now() - interval '1 second' WHERE status = 'running'`)
}

var kinds = []storage.LeaseKind{storage.LeaseEval, storage.LeaseStep}

func other(kind storage.LeaseKind) storage.LeaseKind {
	if kind == storage.LeaseStep {
		return storage.LeaseEval
	}
	return storage.LeaseStep
}

func TestKeeper_HeartbeatExtendsTheLeasesOfItsKindAndNamesTheLostOnes(t *testing.T) {
	t.Parallel()
	for _, kind := range kinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			h := hold(t)
			h.expireSoon(t)
			stale := ref(h.lease(kind))
			stale.ID += 1000 // work the agent holds no lease on
			hb := &protocol.Heartbeat{Running: []protocol.WorkRef{ref(h.eval), ref(h.step), stale}}
			beat := h.keeper.Heartbeat(context.Background(), h.agent, kind, hb)
			if beat.Running != 2 || beat.Requeued != 0 || len(beat.Lost) != 1 || beat.Lost[0] != stale {
				t.Fatalf("heartbeat: %+v; want 2 running, the unheld %+v lost", beat, stale)
			}
			if r := h.row(t, kind); r.status != "running" || r.expiresIn == nil || *r.expiresIn < 50 {
				t.Errorf("%s lease after a heartbeat: %v; want extended to the TTL (60 s)", kind, r)
			}
			if r := h.row(t, other(kind)); r.expiresIn == nil || *r.expiresIn > 1 {
				t.Errorf("%s lease after a heartbeat for %s: %v; want it left alone", other(kind), kind, r)
			}
		})
	}
}

// ended is how work released once too often ends.
var ended = map[storage.LeaseKind]struct{ status, error string }{
	storage.LeaseEval: {"failed", "the agent stopped before the evaluation finished (after 2 attempts)"},
	storage.LeaseStep: {"aborted", "the agent stopped before the step finished (after 2 attempts)"},
}

func TestKeeper_ReleasedWorkIsRequeuedWithBackoffAndEndsAfterMaxAttempts(t *testing.T) {
	t.Parallel()
	for _, kind := range kinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			h := hold(t)
			released := &protocol.Heartbeat{Released: []protocol.WorkRef{ref(h.lease(kind))}}
			if beat := h.keeper.Heartbeat(ctx, h.agent, kind, released); beat.Requeued != 1 {
				t.Fatalf("heartbeat releasing the %s: %+v, want it requeued", kind, beat)
			}
			if n := h.failures(t); n != 0 {
				t.Errorf("released work counted %d failures against the agent shutting down, want none", n)
			}
			r := h.row(t, kind)
			if r.status != "queued" || r.agent != nil || r.attempts != 1 || r.notBefore == nil || *r.notBefore < 3500 {
				t.Fatalf("released %s: %v; want queued, no agent, attempt 1 counted, held back by the backoff (1 h)", kind, r)
			}
			if r := h.row(t, other(kind)); r.status != "running" {
				t.Errorf("the %s was released, the %s is %s", kind, other(kind), r.status)
			}
			if beat := h.keeper.Heartbeat(ctx, h.agent, kind, released); beat.Requeued != 0 {
				t.Errorf("releasing it again: %v; want nothing requeued (the lease is gone)", beat)
			}

			// Claimed again (attempt 2 of 2), released again: it ends.
			h.exec(t, `UPDATE evaluations SET not_before = NULL`)
			h.exec(t, `UPDATE steps SET not_before = NULL`)
			h.claimAgain(t, kind)
			released = &protocol.Heartbeat{Released: []protocol.WorkRef{ref(h.lease(kind))}}
			if beat := h.keeper.Heartbeat(ctx, h.agent, kind, released); beat.Requeued != 1 {
				t.Fatalf("second release: %+v", beat)
			}
			want := ended[kind]
			if r := h.row(t, kind); r.status != want.status || r.attempts != 2 || r.error != want.error {
				t.Errorf("after max_attempts: %v; want %+v", r, want)
			}
		})
	}
}

func TestKeeper_ADisconnectedAgentKeepsItsLeasesForTheGraceThenTheyAreRescued(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := hold(t)
	h.keeper.Hooks().Disconnected(h.agent)
	for _, kind := range kinds {
		if r := h.row(t, kind); r.status != "running" || r.expiresIn == nil || *r.expiresIn > 10 || *r.expiresIn < 5 {
			t.Errorf("%s lease of a disconnected agent: %v; want it to expire within the grace (10 s)", kind, r)
		}
		if requeued, aborted := h.keeper.Rescue(ctx, kind); requeued+aborted != 0 {
			t.Errorf("rescue before the grace ends: %d requeued, %d aborted; want nothing", requeued, aborted)
		}
	}

	h.expire(t)
	for _, kind := range kinds {
		if requeued, aborted := h.keeper.Rescue(ctx, kind); requeued != 1 || aborted != 0 {
			t.Errorf("rescue of the expired %s: %d requeued, %d aborted; want 1 requeued", kind, requeued, aborted)
		}
		if r := h.row(t, kind); r.status != "queued" || r.agent != nil || r.notBefore == nil || *r.notBefore < 3500 {
			t.Errorf("rescued %s: %v; want queued, held back by the backoff", kind, r)
		}
	}
	if b, err := h.db.GetBuild(ctx, h.buildID); err != nil || b.Status != "queued" {
		t.Errorf("the rescued step's build: %+v %v; want queued again", b, err)
	}

	// Claimed again and lost again: max_attempts (2) is used up, the step ends aborted
	// with its build.
	h.exec(t, `UPDATE steps SET not_before = NULL`)
	h.claimAgain(t, storage.LeaseStep)
	h.expire(t)
	if requeued, aborted := h.keeper.Rescue(ctx, storage.LeaseStep); requeued != 0 || aborted != 1 {
		t.Errorf("rescue after max_attempts: %d requeued, %d aborted; want 1 aborted", requeued, aborted)
	}
	if b, err := h.db.GetBuild(ctx, h.buildID); err != nil || b.Status != "aborted" {
		t.Errorf("the aborted step's build: %+v %v; want aborted", b, err)
	}
}

func TestKeeper_RetryCountsTheAttemptReleaseDoesNotAndAStaleLeaseIsRefused(t *testing.T) {
	t.Parallel()
	for _, kind := range kinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			h := hold(t)
			l := h.lease(kind)
			if err := h.keeper.Check(ctx, l); err != nil {
				t.Fatalf("check of a held lease: %v", err)
			}
			stale := l
			stale.Epoch++
			if err := h.keeper.Check(ctx, stale); !errors.Is(err, storage.ErrStaleLease) {
				t.Errorf("check of another epoch: %v, want ErrStaleLease", err)
			}
			if err := h.keeper.Retry(ctx, stale, "boom"); !errors.Is(err, storage.ErrStaleLease) {
				t.Errorf("retry of another epoch: %v, want ErrStaleLease", err)
			}
			if r := h.row(t, kind); r.status != "running" {
				t.Fatalf("a refused retry changed the %s: %v", kind, r)
			}

			if err := h.keeper.Release(ctx, l); err != nil {
				t.Fatal(err)
			}
			if r := h.row(t, kind); r.status != "queued" || r.attempts != 0 || r.notBefore != nil {
				t.Errorf("released %s: %v; want queued at once, the attempt not counted", kind, r)
			}
			if err := h.keeper.Check(ctx, l); !errors.Is(err, storage.ErrStaleLease) {
				t.Errorf("check after the release: %v, want ErrStaleLease", err)
			}
			if kind == storage.LeaseStep {
				if b, err := h.db.GetBuild(ctx, h.buildID); err != nil || b.Status != "queued" {
					t.Errorf("the released step's build: %+v %v; want queued", b, err)
				}
			}

			h.claimAgain(t, kind)
			if err := h.keeper.Retry(ctx, h.lease(kind), "connection refused"); err != nil {
				t.Fatal(err)
			}
			if r := h.row(t, kind); r.status != "queued" || r.attempts != 1 || r.error != "connection refused" || r.notBefore == nil {
				t.Errorf("retried %s: %v; want queued after 1 attempt, with its error, backing off", kind, r)
			}
			// A step's infrastructure failure counts against its agent's health.
			if want := map[storage.LeaseKind]int{storage.LeaseStep: 1, storage.LeaseEval: 0}[kind]; h.failures(t) != want {
				t.Errorf("agent failures after a retried %s: %d, want %d", kind, h.failures(t), want)
			}
		})
	}
}
