package outbox

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/fc-ci/fc/coordinator/forge"
	"github.com/fc-ci/fc/storage"
)

// statusWant is a commit status the producer wants a context to show.
type statusWant struct {
	eval   storage.DeliveryEvaluation
	status forge.Status
	// onlyIfShown: send it only to correct a context that already shows something
	// (an evaluation that succeeded after one that failed on the same commit).
	onlyIfShown bool
}

func (w statusWant) key() string {
	return "status/" + strconv.FormatInt(w.eval.ProjectID, 10) + "/" + w.status.SHA + "/" + w.status.Context
}

// statusWants decides the commit statuses of the evaluations in a batch, from their
// current state:
//   - an evaluation that starts: pending on fc/<jobset> (fc/<jobset>/evaluation
//     when the forge has a status per job);
//   - one that fails or is cancelled: failure (cancelled) on fc/<jobset>/evaluation,
//     and on fc/<jobset> too unless there is a status per job;
//   - one that succeeded: per job, fc/<jobset>/<job> for each build it has (all of
//     them when the evaluation itself changed, else those the events name); or one
//     aggregate on fc/<jobset>. Attributes that failed to evaluate fail
//     fc/<jobset>/evaluation (and the aggregate).
func (o *Outbox) statusWants(ctx context.Context, b *storage.EventBatch, builds []storage.DeliveryBuild) ([]statusWant, error) {
	byEval := map[int64][]storage.DeliveryBuild{}
	for _, bu := range builds {
		byEval[bu.EvaluationID] = append(byEval[bu.EvaluationID], bu)
	}
	var wants []statusWant
	var allOf []int64 // per-job evaluations that changed: every build is wanted
	for _, e := range b.Evaluations {
		if e.Forge == nil || !e.ForgeTokenSet || !forge.ValidSHA(e.Commit) {
			continue
		}
		perJob, changed := e.Forge.StatusPerJob, b.EvaluationChanged[e.ID]
		base, evalURL := "fc/"+e.StatusJobset, o.cfg.PublicURL+"/eval/"+strconv.FormatInt(e.ID, 10)
		want := func(context, state, desc, target string, onlyIfShown bool) {
			wants = append(wants, statusWant{eval: e, onlyIfShown: onlyIfShown,
				status: forge.Status{SHA: e.Commit, State: state, Context: context, Description: desc, TargetURL: target}})
		}
		switch e.Status {
		case "running":
			if changed {
				want(ifElse(perJob, base+"/evaluation", base), forge.StatePending, "Evaluating", evalURL, false)
			}
		case "failed":
			want(base+"/evaluation", forge.StateFailure, evalError(e.Error), evalURL, false)
			if !perJob {
				want(base, forge.StateFailure, "The evaluation failed", evalURL, false)
			}
		case "cancelled":
			want(base+"/evaluation", forge.StateCancelled, "The evaluation was cancelled", evalURL, false)
			if !perJob {
				want(base, forge.StateCancelled, "The evaluation was cancelled", evalURL, false)
			}
		case "succeeded":
			if e.NrErrors > 0 {
				want(base+"/evaluation", forge.StateFailure, plural(e.NrErrors, "attribute")+" failed to evaluate", evalURL, false)
			} else {
				want(base+"/evaluation", forge.StateSuccess, "Evaluated "+plural(e.NrJobs, "job"), evalURL, !perJob)
			}
			if !perJob {
				state, desc := aggregate(e.Builds, e.NrErrors)
				want(base, state, desc, evalURL, false)
			} else if changed {
				allOf = append(allOf, e.ID)
			} else {
				for _, bu := range byEval[e.ID] {
					state, desc := jobState(bu)
					want(base+"/"+bu.Job, state, desc, o.buildURL(bu.ID), false)
				}
			}
		}
	}
	if len(allOf) == 0 {
		return wants, nil
	}
	all, err := b.BuildsOfEvaluations(ctx, allOf)
	if err != nil {
		return nil, err
	}
	evals := map[int64]storage.DeliveryEvaluation{}
	for _, e := range b.Evaluations {
		evals[e.ID] = e
	}
	for _, bu := range all {
		e := evals[bu.EvaluationID]
		state, desc := jobState(bu)
		wants = append(wants, statusWant{eval: e, status: forge.Status{SHA: e.Commit, State: state,
			Context: "fc/" + e.StatusJobset + "/" + bu.Job, Description: desc, TargetURL: o.buildURL(bu.ID)}})
	}
	return wants, nil
}

// statusDeliveries turns wants into deliveries, leaving out each that the context
// already shows (the newest delivery of its key says the same), in order.
func statusDeliveries(ctx context.Context, b *storage.EventBatch, wants []statusWant) ([]storage.NewDelivery, error) {
	if len(wants) == 0 {
		return nil, nil
	}
	keys := make([]string, len(wants))
	for i, w := range wants {
		keys[i] = w.key()
	}
	last, err := b.LastPayloads(ctx, keys)
	if err != nil {
		return nil, err
	}
	var out []storage.NewDelivery
	for _, w := range wants {
		key := w.key()
		payload, err := json.Marshal(w.status)
		if err != nil {
			return nil, err
		}
		prev, shown := last[key]
		if (w.onlyIfShown && !shown) || (shown && samePayload(prev, payload)) {
			continue
		}
		last[key] = payload
		f := w.eval.Forge
		out = append(out, storage.NewDelivery{Kind: storage.DeliveryStatus, ProjectID: w.eval.ProjectID, OrderingKey: key,
			Payload: payload, Target: fmt.Sprintf("%s %s@%s %s", f.Type, f.Repository, w.status.SHA[:12], w.status.Context)})
	}
	return out, nil
}

// samePayload compares two JSON objects by value (jsonb does not keep the text).
func samePayload(a, b []byte) bool {
	var x, y forge.Status
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return bytes.Equal(a, b)
	}
	return x == y
}

// aggregate is fc/<jobset>'s state over an evaluation's builds: failure as soon as
// one failed (or an attribute failed to evaluate), running while any is unfinished,
// success when all succeeded. Its descriptions change only with the state or at the
// end, so a forge is told a few times per evaluation, not once per build.
func aggregate(c storage.EvalProgress, evalErrors int) (state, desc string) {
	failed := c.Failed()
	switch {
	case (failed > 0 || evalErrors > 0) && c.Unfinished > 0:
		return forge.StateFailure, "Failing; the other jobs are still building"
	case failed > 0 || evalErrors > 0:
		var parts []string
		if failed > 0 {
			parts = append(parts, fmt.Sprintf("%d of %s failed", failed, plural(c.Total, "job")))
		}
		if evalErrors > 0 {
			parts = append(parts, plural(evalErrors, "attribute")+" failed to evaluate")
		}
		return forge.StateFailure, strings.Join(parts, "; ")
	case c.Unfinished > 0:
		return forge.StateRunning, "Building " + plural(c.Total, "job")
	case c.Cancelled > 0:
		return forge.StateCancelled, fmt.Sprintf("%d of %s cancelled", c.Cancelled, plural(c.Total, "job"))
	case c.Total == 0:
		return forge.StateSuccess, "No jobs"
	}
	return forge.StateSuccess, "All " + plural(c.Total, "job") + " succeeded"
}

// jobState is fc/<jobset>/<job>'s state for a build.
func jobState(b storage.DeliveryBuild) (state, desc string) {
	switch {
	case !b.Finished:
		return forge.StatePending, "Queued or building"
	case b.Status == "succeeded":
		return forge.StateSuccess, "Succeeded"
	case b.Status == "cancelled":
		return forge.StateCancelled, "Cancelled"
	case b.Status == "aborted":
		return forge.StateError, "Aborted (an infrastructure failure)"
	}
	return forge.StateFailure, statusText(b.Status)
}

// statusText is a build status for people: dependency_failed → Dependency failed.
func statusText(s string) string {
	s = strings.ReplaceAll(s, "_", " ")
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// evalError is the first line of an evaluation's error, for a description.
func evalError(msg string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(msg), "\n")
	if line == "" {
		return "The evaluation failed"
	}
	return "Evaluation failed: " + line
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

func ifElse(c bool, a, b string) string {
	if c {
		return a
	}
	return b
}

func (o *Outbox) buildURL(id int64) string {
	return o.cfg.PublicURL + "/build/" + strconv.FormatInt(id, 10)
}
