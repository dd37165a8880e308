package outbox

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/fc-ci/fc/storage"
)

// produce decides a batch's deliveries: commit statuses, then per finished build
// run_command and the project's e-mail and webhook, then per finished evaluation its
// e-mail and webhook. It runs in the transaction that consumes the events.
func (o *Outbox) produce(ctx context.Context, b *storage.EventBatch) ([]storage.NewDelivery, error) {
	builds, err := b.Builds(ctx, b.BuildIDs)
	if err != nil {
		return nil, err
	}
	wants, err := o.statusWants(ctx, b, builds)
	if err != nil {
		return nil, err
	}
	out, err := statusDeliveries(ctx, b, wants)
	if err != nil {
		return nil, err
	}
	evals := map[int64]storage.DeliveryEvaluation{}
	for _, e := range b.Evaluations {
		evals[e.ID] = e
	}
	// The builds that will be mailed, and their failing steps (one query for all).
	var mailed []storage.DeliveryBuild
	var failedIDs []int64
	for _, bu := range builds {
		e, ok := evals[bu.EvaluationID]
		if !ok || !bu.Finished {
			continue
		}
		if o.cfg.RunCommand != "" {
			out = append(out, o.delivery(storage.DeliveryCommand, "run_command", e.ProjectID, o.buildJSON(e, bu)))
		}
		n := e.Notifications
		if n == nil || !notify(n.On, bu) {
			continue
		}
		if n.WebhookURL != "" {
			out = append(out, o.delivery(storage.DeliveryWebhook, RedactURL(n.WebhookURL), e.ProjectID,
				map[string]any{"event": "build.finished", "build": o.buildJSON(e, bu)}))
		}
		if len(n.Emails) > 0 {
			mailed = append(mailed, bu)
			if bu.Status != "succeeded" {
				failedIDs = append(failedIDs, bu.ID)
			}
		}
	}
	if len(mailed) > 0 {
		steps, err := b.FailedSteps(ctx, failedIDs)
		if err != nil {
			return nil, err
		}
		for _, bu := range mailed {
			e := evals[bu.EvaluationID]
			m := o.buildMail(e, bu, steps[bu.ID], bu.Status != "succeeded")
			out = append(out, o.delivery(storage.DeliveryEmail, strings.Join(m.To, ", "), e.ProjectID, m))
		}
	}
	for _, e := range b.Evaluations {
		n := e.Notifications
		if n == nil || !b.EvaluationChanged[e.ID] || (e.Status != "succeeded" && e.Status != "failed") {
			continue
		}
		if n.WebhookURL != "" && (e.Status == "failed" || n.On == storage.NotifyOnAlways) {
			out = append(out, o.delivery(storage.DeliveryWebhook, RedactURL(n.WebhookURL), e.ProjectID,
				map[string]any{"event": "evaluation.finished", "evaluation": o.evaluationJSON(e)}))
		}
		if len(n.Emails) > 0 && e.Status == "failed" {
			m := o.evaluationMail(e)
			out = append(out, o.delivery(storage.DeliveryEmail, strings.Join(m.To, ", "), e.ProjectID, m))
		}
	}
	return out, nil
}

// notify says whether a finished build is worth telling under on: "failure" every
// build that did not succeed, "change" one whose success differs from the job's
// previous build (or a new job's failure), "always" every one. A cancelled build
// is someone's decision, not news.
func notify(on string, b storage.DeliveryBuild) bool {
	if b.Status == "cancelled" {
		return false
	}
	failed := b.Status != "succeeded"
	switch on {
	case storage.NotifyOnAlways:
		return true
	case storage.NotifyOnChange:
		if b.PreviousStatus == "" {
			return failed
		}
		return (b.PreviousStatus == "succeeded") == failed
	}
	return failed
}

func (o *Outbox) delivery(kind, target string, projectID int64, payload any) storage.NewDelivery {
	raw, err := json.Marshal(payload)
	if err != nil {
		// Only maps, strings and numbers go in: it cannot fail.
		raw = []byte(`{}`)
	}
	return storage.NewDelivery{Kind: kind, Target: target, ProjectID: projectID, Payload: raw}
}

// BuildJSON is a finished build as webhooks and run_command receive it.
type BuildJSON struct {
	ID             int64             `json:"id"`
	URL            string            `json:"url"`
	ProjectID      int64             `json:"project_id"`
	Project        string            `json:"project"`
	JobsetID       int64             `json:"jobset_id"`
	Jobset         string            `json:"jobset"`
	Job            string            `json:"job"`
	EvaluationID   int64             `json:"evaluation_id"`
	EvaluationURL  string            `json:"evaluation_url"`
	Commit         string            `json:"commit"`
	System         string            `json:"system"`
	DrvPath        string            `json:"drv_path"`
	NixName        string            `json:"nix_name"`
	Status         string            `json:"status"`
	StatusCode     *int              `json:"status_code"`
	PreviousStatus string            `json:"previous_status"`
	StartedAt      *time.Time        `json:"started_at"`
	FinishedAt     *time.Time        `json:"finished_at"`
	Outputs        map[string]string `json:"outputs"`
}

func (o *Outbox) buildJSON(e storage.DeliveryEvaluation, b storage.DeliveryBuild) BuildJSON {
	outputs := b.Outputs
	if outputs == nil {
		outputs = map[string]string{}
	}
	return BuildJSON{ID: b.ID, URL: o.buildURL(b.ID), ProjectID: e.ProjectID, Project: e.Project, JobsetID: e.JobsetID,
		Jobset: e.Jobset, Job: b.Job, EvaluationID: e.ID, EvaluationURL: o.evalURL(e.ID), Commit: e.Commit, System: b.System,
		DrvPath: b.DrvPath, NixName: b.NixName, Status: b.Status, StatusCode: b.StatusCode, PreviousStatus: b.PreviousStatus,
		StartedAt: utc(b.StartedAt), FinishedAt: utc(b.FinishedAt), Outputs: outputs}
}

// EvaluationJSON is a finished evaluation as webhooks receive it.
type EvaluationJSON struct {
	ID        int64  `json:"id"`
	URL       string `json:"url"`
	ProjectID int64  `json:"project_id"`
	Project   string `json:"project"`
	JobsetID  int64  `json:"jobset_id"`
	Jobset    string `json:"jobset"`
	Commit    string `json:"commit"`
	Status    string `json:"status"`
	Error     string `json:"error"`
	NrJobs    int    `json:"nr_jobs"`
	NrErrors  int    `json:"nr_errors"`
}

func (o *Outbox) evaluationJSON(e storage.DeliveryEvaluation) EvaluationJSON {
	return EvaluationJSON{ID: e.ID, URL: o.evalURL(e.ID), ProjectID: e.ProjectID, Project: e.Project, JobsetID: e.JobsetID,
		Jobset: e.Jobset, Commit: e.Commit, Status: e.Status, Error: e.Error, NrJobs: e.NrJobs, NrErrors: e.NrErrors}
}

func (o *Outbox) evalURL(id int64) string {
	return o.cfg.PublicURL + "/eval/" + strconv.FormatInt(id, 10)
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}
