// Package work holds the agent's executors of leased work, which agent/daemon runs
// as its Executors: StepRunner builds one step (realising it with agent/realise,
// streaming its log, uploading its outputs with agent/push) and EvalRunner evaluates
// one jobset (agent/evaluator). An executor does the work and reports it over the
// agent's session, quoting its lease (id, epoch) so a stale report is refused. The
// coordinator's side of the same work is coordinator/buildqueue and
// coordinator/evalqueue.
package work

import (
	"context"
	"io"
)

// Link reaches the coordinator from an executor: it opens streams (logs, uploads,
// reports) on whatever session is current, waiting across reconnects. The daemon
// hands itself as the Link. It is an alias of an interface literal, so that the
// runners' Run methods match daemon.Executor without this package importing the
// daemon (or the daemon this one).
type Link = interface {
	OpenStream(ctx context.Context, kind string) (io.ReadWriteCloser, error)
}
