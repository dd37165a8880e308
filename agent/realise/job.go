// A job is one request inside a batch: what the log parser learns about it, and how
// it gets its result.

package realise

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// job is one request in a batch.
type job struct {
	ctx  context.Context
	req  Request
	key  string
	lw   *limitWriter
	outs map[string]string
	done chan struct{}
	res  Result
	err  error

	// stopWatch ends the job's cancel watch once it finished early.
	stopWatch func() bool

	// mu guards what the log parser fills in and the early finisher reads: the log
	// writer, handed, started, errors, status, exit.
	mu sync.Mutex
	// handed: the job got its result while its batch went on; nothing more goes to
	// its log.
	handed bool

	// Filled by the log parser.
	started time.Time
	errors  []string
	status  string // StepFailed or StepTimedOut when a message said so
	exit    int
}

func newJob(ctx context.Context, req Request) (*job, error) {
	if req.DrvPath == "" {
		return nil, errors.New("realise: no derivation given")
	}
	if req.Log == nil {
		req.Log = io.Discard
	}
	key, _ := json.Marshal([]any{req.CacheURL, req.Substituters, req.TrustedKeys, req.Features, req.Timeout, req.MaxSilent})
	return &job{ctx: ctx, req: req, key: string(key), outs: req.Outputs, done: make(chan struct{})}, nil
}

func (j *job) finish(res Result, err error) {
	j.res, j.err = res, err
	close(j.done)
}

// write adds to one job's log unless it was already handed on.
func (j *job) write(p []byte) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.handed {
		j.lw.write(p)
	}
}

func failAll(jobs []*job, res Result, err error) {
	for _, j := range jobs {
		j.finish(res, err)
	}
}

func ctxError(ctx context.Context, drv string) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return ctx.Err()
	}
	return fmt.Errorf("%w: realise %s: %w", ErrInfrastructure, drv, ctx.Err())
}
