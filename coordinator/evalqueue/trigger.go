package evalqueue

import (
	"context"
	"errors"
	"fmt"

	"github.com/fc-ci/fc/storage"
)

// ErrCheckFailed: the check of a triggered jobset failed (its repository or an
// input could not be read); the error says why and is recorded on the jobset.
var ErrCheckFailed = errors.New("checking the jobset failed")

// ErrJobsetDisabled: a disabled jobset (or one of a disabled project) is not evaluated.
var ErrJobsetDisabled = errors.New("the jobset or its project is disabled")

// TriggerNow checks a jobset at once, as the scheduler would, so the caller learns
// whether an evaluation was created: the check is one ls-remote (bounded by the git
// timeout), short enough to answer within the request. A jobset waiting for its
// newest evaluation (or its builds) keeps the trigger pending for the scheduler; a
// check that fails is recorded on the jobset, as the scheduler records it.
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
		if merr := e.db.MarkChecked(context.WithoutCancel(ctx), jobsetID, err.Error()); merr != nil {
			e.log.Warn("record a failed check", "jobset", jobsetID, "err", merr)
		}
		return CheckResult{}, fmt.Errorf("jobset %d: %w: %w", jobsetID, ErrCheckFailed, err)
	}
	if res.Reason == ReasonBusy || res.Reason == ReasonBuildsUnfinished {
		if err := e.db.RequestEvaluation(ctx, jobsetID, force); err != nil {
			return CheckResult{}, err
		}
	}
	e.Wake()
	return res, nil
}
