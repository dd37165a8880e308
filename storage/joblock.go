package storage

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Periodic jobs run on one coordinator of those sharing the database: each job has
// a PostgreSQL advisory lock, keyed by its name. It needs no membership (it works
// with the cluster off, and while gossip is split), and a coordinator that dies
// loses its locks with its connections, so another takes the job over.

// jobLockKey is the advisory lock key of a periodic job, in SQL.
const jobLockKey = `hashtextextended('fc-job:' || $1, 0)`

// TryJob runs fn if no other coordinator runs the job name at this moment, holding
// the job's lock while it runs; it reports whether fn ran. For passes that may run
// again soon after (another coordinator's next pass sees what this one did).
func (db *DB) TryJob(ctx context.Context, name string, fn func(ctx context.Context)) (bool, error) {
	conn, err := db.pool.Acquire(ctx)
	if err != nil {
		return false, fmt.Errorf("job %s: %w", name, err)
	}
	defer conn.Release()
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(`+jobLockKey+`)`, name).Scan(&locked); err != nil {
		return false, fmt.Errorf("job %s: lock: %w", name, err)
	}
	if !locked {
		return false, nil
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock(`+jobLockKey+`)`, name); err != nil {
			conn.Conn().Close(uctx) // a lock we cannot release goes with its connection
		}
	}()
	fn(ctx)
	return true, nil
}

// LeadJob runs run on this coordinator for as long as it holds the job's lock: it
// tries every retry until it gets it, then holds it (on a connection of its own,
// checked every retry) and calls run with a context that ends when ctx ends or the
// lock's connection is lost (a holder whose connection broke may run on for up to
// retry after another took over: the jobs tolerate that, they only must not run
// everywhere). Then it tries again. For jobs on a timer of their own
// (cache retention, polling), which must run once across the coordinators.
// busy, if not nil, is called each time the lock is found held elsewhere.
func (db *DB) LeadJob(ctx context.Context, name string, retry time.Duration, run func(ctx context.Context), busy func()) {
	for ctx.Err() == nil {
		if !db.leadOnce(ctx, name, retry, run) && busy != nil && ctx.Err() == nil {
			busy()
		}
		select {
		case <-ctx.Done():
		case <-time.After(retry):
		}
	}
}

// leadOnce takes the lock and runs run while holding it; false if it did not get it.
func (db *DB) leadOnce(ctx context.Context, name string, retry time.Duration, run func(ctx context.Context)) bool {
	// A connection of its own, not the pool's: it is held for as long as the job
	// leads (hours), and a small pool would lose a connection to every job.
	conn, err := pgx.ConnectConfig(ctx, db.pool.Config().ConnConfig.Copy())
	if err != nil {
		return false
	}
	defer func() {
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer ccancel()
		conn.Close(cctx) // closing it releases the lock too
	}()
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(`+jobLockKey+`)`, name).Scan(&locked); err != nil || !locked {
		return false
	}
	jctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); run(jctx) }()
	t := time.NewTicker(retry)
	defer t.Stop()
	for held := true; held; {
		select {
		case <-done:
			held = false
		case <-ctx.Done():
			held = false
		case <-t.C:
			pctx, pcancel := context.WithTimeout(ctx, retry)
			held = conn.Ping(pctx) == nil // the lock lives as long as this connection
			pcancel()
		}
	}
	cancel()
	<-done
	return true
}
