package outbox

import (
	"testing"

	"github.com/fc-ci/fc/coordinator/forge"
	"github.com/fc-ci/fc/storage"
)

// The aggregate fails as soon as one job failed, runs while jobs build, and
// succeeds only when every job did; its text changes only with the state or at the
// end, so a forge is told a few times per evaluation.
func TestAggregate(t *testing.T) {
	t.Parallel()
	cases := []struct {
		c          storage.EvalProgress
		evalErrors int
		state      string
		desc       string
	}{
		{storage.EvalProgress{Total: 3, Unfinished: 3}, 0, forge.StateRunning, "Building 3 jobs"},
		{storage.EvalProgress{Total: 3, Unfinished: 1, Succeeded: 2}, 0, forge.StateRunning, "Building 3 jobs"},
		{storage.EvalProgress{Total: 3, Unfinished: 2}, 0, forge.StateFailure, "Failing; the other jobs are still building"},
		{storage.EvalProgress{Total: 3, Succeeded: 2}, 0, forge.StateFailure, "1 of 3 jobs failed"},
		{storage.EvalProgress{Total: 3, Succeeded: 3}, 0, forge.StateSuccess, "All 3 jobs succeeded"},
		{storage.EvalProgress{Total: 1, Succeeded: 1}, 0, forge.StateSuccess, "All 1 job succeeded"},
		{storage.EvalProgress{Total: 2, Succeeded: 2}, 1, forge.StateFailure, "1 attribute failed to evaluate"},
		{storage.EvalProgress{Total: 2, Succeeded: 1}, 2, forge.StateFailure, "1 of 2 jobs failed; 2 attributes failed to evaluate"},
		{storage.EvalProgress{Total: 2, Succeeded: 1, Cancelled: 1}, 0, forge.StateCancelled, "1 of 2 jobs cancelled"},
		{storage.EvalProgress{}, 0, forge.StateSuccess, "No jobs"},
	}
	for _, c := range cases {
		if state, desc := aggregate(c.c, c.evalErrors); state != c.state || desc != c.desc {
			t.Errorf("%+v with %d errors: %s %q, want %s %q", c.c, c.evalErrors, state, desc, c.state, c.desc)
		}
	}
}

// on "failure" tells of every build that did not succeed; "change" of one whose
// success differs from the job's previous build (a new job only when it fails);
// "always" of every one; none of a cancelled build.
func TestNotify(t *testing.T) {
	t.Parallel()
	b := func(status, prev string) storage.DeliveryBuild {
		return storage.DeliveryBuild{Status: status, PreviousStatus: prev, Finished: true}
	}
	cases := []struct {
		on   string
		b    storage.DeliveryBuild
		want bool
	}{
		{storage.NotifyOnFailure, b("failed", "failed"), true},
		{storage.NotifyOnFailure, b("dependency_failed", ""), true},
		{storage.NotifyOnFailure, b("succeeded", "failed"), false},
		{storage.NotifyOnChange, b("failed", "succeeded"), true},
		{storage.NotifyOnChange, b("succeeded", "failed"), true},
		{storage.NotifyOnChange, b("failed", "timed_out"), false},
		{storage.NotifyOnChange, b("succeeded", "succeeded"), false},
		{storage.NotifyOnChange, b("failed", ""), true},
		{storage.NotifyOnChange, b("succeeded", ""), false},
		{storage.NotifyOnAlways, b("succeeded", "succeeded"), true},
		{storage.NotifyOnAlways, b("cancelled", "succeeded"), false},
		{storage.NotifyOnFailure, b("cancelled", ""), false},
	}
	for _, c := range cases {
		if got := notify(c.on, c.b); got != c.want {
			t.Errorf("on %s, %s after %q: %v, want %v", c.on, c.b.Status, c.b.PreviousStatus, got, c.want)
		}
	}
}

// A webhook's URL is shown without what may be a secret in it.
func TestRedactURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"https://hooks.slack.com/services/T0/B0/XXXX": "https://hooks.slack.com/…",
		"https://example.org":                         "https://example.org",
		"https://example.org/?token=abc":              "https://example.org/…",
		"http://u:p@example.org:8080/x":               "http://example.org:8080/…",
		"::not a url":                                 "(a malformed URL)",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
