package storage_test

import (
	"context"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage/storagetest"
)

// TestJobLock_LeadJobRunsOnOneAtATimeAndMovesOn: two coordinators' leaders of one
// job (each on its own connection): only one runs it; when the runner stops, or its
// connection dies under it (a coordinator gone), the other takes it over.
func TestJobLock_LeadJobRunsOnOneAtATimeAndMovesOn(t *testing.T) {
	t.Parallel()
	db := storagetest.New(t)
	started := make(chan int, 4)
	leader := func(ctx context.Context, id int) {
		db.LeadJob(ctx, "test-job", 50*time.Millisecond, func(jctx context.Context) {
			started <- id
			<-jctx.Done()
		}, nil)
	}
	ctxs := map[int]context.CancelFunc{}
	for id := range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		ctxs[id] = cancel
		t.Cleanup(cancel)
		go leader(ctx, id)
	}
	first := <-started
	// The other does not run it while the first holds the lock (several retries).
	select {
	case id := <-started:
		t.Fatalf("leader %d started while %d holds the job", id, first)
	case <-time.After(300 * time.Millisecond):
	}
	// The runner's connection dies (its coordinator's database connection is cut):
	// the other takes over (the old runner notices within a retry and stops).
	if _, err := db.Pool().Exec(context.Background(), `SELECT pg_terminate_backend(pid) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`); err != nil {
		t.Fatal(err)
	}
	var second int
	select {
	case second = <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("nobody took the job over after its holder's connection died")
	}
	// The holder stops: the job moves again (to whichever leader retries first).
	ctxs[second]()
	select {
	case id := <-started:
		if id == second {
			t.Errorf("stopped leader %d runs the job again", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the job did not move when its holder stopped")
	}
}

// TestJobLock_TryJobSkipsWhileAnotherRuns: a pass while another coordinator's pass of
// the same job runs is skipped; once it ended, the next pass runs.
func TestJobLock_TryJobSkipsWhileAnotherRuns(t *testing.T) {
	t.Parallel()
	db := storagetest.New(t)
	ctx := context.Background()
	inside, release := make(chan struct{}), make(chan struct{})
	done := make(chan bool)
	go func() {
		ran, err := db.TryJob(ctx, "sweep", func(context.Context) { close(inside); <-release })
		if err != nil {
			t.Error(err)
		}
		done <- ran
	}()
	<-inside
	ran, err := db.TryJob(ctx, "sweep", func(context.Context) { t.Error("second pass ran during the first") })
	if err != nil || ran {
		t.Fatalf("second pass: ran %v, %v", ran, err)
	}
	if ran, err := db.TryJob(ctx, "other", func(context.Context) {}); err != nil || !ran {
		t.Errorf("another job was blocked: %v %v", ran, err)
	}
	close(release)
	if !<-done {
		t.Fatal("first pass did not run")
	}
	if ran, err := db.TryJob(ctx, "sweep", func(context.Context) {}); err != nil || !ran {
		t.Errorf("pass after the first ended: ran %v, %v", ran, err)
	}
}
