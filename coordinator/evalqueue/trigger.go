package evalqueue

import (
	"context"
	"errors"
	"fmt"

	"github.com/fc-ci/fc/storage"
)

// ErrJobsetDisabled: a disabled jobset (or one of a disabled project) is not evaluated.
var ErrJobsetDisabled = errors.New("the jobset or its project is disabled")

// TriggerNow checks a jobset at once, as the scheduler would, so the caller learns
// whether an evaluation was created: the check is one ls-remote (bounded by the git
// timeout), short enough to answer within the request. A jobset waiting for its
// newest evaluation (or its builds) keeps the trigger pending for the scheduler; so
// does a check that fails (ReasonCheckFailed: the repository may be back by the
// scheduler's next pass), its error recorded on the jobset as the scheduler does.
func (e *Evals) TriggerNow(ctx context.Context, jobsetID int64, force bool) (CheckResult, error) {
	t, err := e.db.EvalTargetOf(ctx, jobsetID)
	if err != nil {
		return CheckResult{}, err
	}
	if !t.ProjectEnabled || t.Jobset.State == storage.JobsetDisabled {
		return CheckResult{}, fmt.Errorf("jobset %d: %w", jobsetID, ErrJobsetDisabled)
	}
	t.TriggerPending, t.TriggerForced = true, t.TriggerForced || force
	e.checkMu.Lock()
	res, err := e.check(ctx, t)
	e.checkMu.Unlock()
	if err != nil {
		e.log.Warn("check a triggered jobset", "jobset", jobsetID, "err", err)
		if err := e.db.MarkChecked(ctx, jobsetID, err.Error()); err != nil {
			return CheckResult{}, err
		}
		res = CheckResult{Reason: ReasonCheckFailed, Error: err.Error()}
	}
	if res.Reason == ReasonBusy || res.Reason == ReasonBuildsUnfinished || res.Reason == ReasonCheckFailed {
		if err := e.db.RequestEvaluation(ctx, jobsetID, force); err != nil {
			return CheckResult{}, err
		}
	}
	e.Wake()
	return res, nil
}
