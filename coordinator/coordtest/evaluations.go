package coordtest

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Evaluated waits up to two minutes for the jobset's newest evaluation, newer than
// after, to succeed and returns its id; a failed evaluation fails tb at once.
func Evaluated(tb testing.TB, c *Coordinator, jobsetID int64, after int64) int64 {
	tb.Helper()
	var id int64
	Eventually(tb, 120*time.Second, "the evaluation succeeds", func() bool {
		var l struct {
			Items []struct {
				ID     int64  `json:"id"`
				Status string `json:"status"`
				Error  string `json:"error"`
			}
		}
		c.Do("GET", fmt.Sprintf("/api/v1/evaluations?jobset_id=%d", jobsetID), "", nil, &l)
		if len(l.Items) == 0 || l.Items[0].ID <= after {
			return false
		}
		if l.Items[0].Status == "failed" {
			tb.Fatalf("evaluation failed: %s\n%s", l.Items[0].Error, c.Log)
		}
		id = l.Items[0].ID
		return l.Items[0].Status == "succeeded"
	})
	return id
}

// Evaluation is an evaluation as the evaluations list answers it.
type Evaluation struct {
	ID      int64  `json:"id"`
	Status  string `json:"status"`
	Commit  string `json:"commit"`
	Forced  bool   `json:"forced"`
	Trigger string `json:"trigger"`
}

// Evaluations lists the jobset's evaluations, newest first.
func Evaluations(tb testing.TB, c *Coordinator, jobsetID int64) []Evaluation {
	tb.Helper()
	var l struct{ Items []Evaluation }
	if code := c.Do("GET", fmt.Sprintf("/api/v1/evaluations?jobset_id=%d", jobsetID), "", nil, &l); code != 200 {
		tb.Fatalf("list evaluations: %d", code)
	}
	return l.Items
}

// Checked waits until the scheduler has dealt with the jobset's pending trigger.
func Checked(tb testing.TB, c *Coordinator, jobsetID int64) {
	tb.Helper()
	Eventually(tb, 30*time.Second, "the scheduler handles the trigger", func() bool {
		var pending bool
		if err := c.DB.Pool().QueryRow(context.Background(), `SELECT trigger_requested_at IS NOT NULL FROM jobsets WHERE id = $1`, jobsetID).Scan(&pending); err != nil {
			tb.Fatal(err)
		}
		return !pending
	})
}
