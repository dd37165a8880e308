package coordtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The helpers below are what the end-to-end tests and benchmarks of several packages
// share: a test package cannot import another's, so they live here.

// Salt is a name unique to this run of tb: its name plus random hex. Derivations that
// carry it are never already built.
func Salt(tb testing.TB) string {
	p := make([]byte, 6)
	_, _ = rand.Read(p)
	return strings.NewReplacer("/", "-", "_", "-", " ", "-").Replace(tb.Name()) + "-" + hex.EncodeToString(p)
}

// MkLet is the preamble of a test jobset's let: mk name attrs makes a /bin/sh
// derivation whose name carries salt, and sh script is the builder's args for a
// shell script with PATH set.
func MkLet(salt string) string {
	return fmt.Sprintf(`mk = name: attrs: derivation ({ name = "${name}-%s"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo ${name} > $out" ]; } // attrs);
  sh = script: [ "-c" ("export PATH=/bin:/usr/bin; " + script) ];`, salt)
}

// Product is a build product as the builds API answers it.
type Product struct {
	Nr          int    `json:"nr"`
	Type        string `json:"type"`
	Subtype     string `json:"subtype"`
	Name        string `json:"name"`
	Path        string `json:"path"`
	FileSize    *int64 `json:"file_size"`
	SHA256      string `json:"sha256"`
	DownloadURL string `json:"download_url"`
}

// Step is a build step as the builds API answers it.
type Step struct {
	ID       int64  `json:"id"`
	DrvPath  string `json:"drv_path"`
	Status   string `json:"status"`
	Error    string `json:"error"`
	Agent    string `json:"agent"`
	Attempts int    `json:"attempts"`
}

// Build is a build as the builds API answers it (steps only in the detail).
type Build struct {
	ID             int64             `json:"id"`
	EvaluationID   int64             `json:"evaluation_id"`
	Job            string            `json:"job"`
	DrvPath        string            `json:"drv_path"`
	System         string            `json:"system"`
	Status         string            `json:"status"`
	StatusCode     *int              `json:"status_code"`
	PropagatedFrom *int64            `json:"propagated_from"`
	Outputs        map[string]string `json:"outputs"`
	Products       []Product         `json:"products"`
	Metrics        []struct {
		Name  string  `json:"name"`
		Value float64 `json:"value"`
		Unit  string  `json:"unit"`
	} `json:"metrics"`
	ReleaseName string `json:"release_name"`
	Steps       []Step `json:"steps"`
}

// Code is the build's status code, -1 while it has none.
func (b Build) Code() int {
	if b.StatusCode == nil {
		return -1
	}
	return *b.StatusCode
}

// Finished reports whether the build has left the queue (any final status).
func (b Build) Finished() bool { return !Unfinished(b.Status) }

// Unfinished reports whether a build or step status is still queued or running.
func Unfinished(status string) bool { return status == "queued" || status == "running" }

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

// BuildsOf lists the builds of an evaluation by job name.
func BuildsOf(tb testing.TB, c *Coordinator, evalID int64) map[string]Build {
	tb.Helper()
	var l struct{ Items []Build }
	if code := c.Do("GET", fmt.Sprintf("/api/v1/builds?evaluation_id=%d&limit=500", evalID), "", nil, &l); code != 200 {
		tb.Fatalf("list builds: %d", code)
	}
	out := map[string]Build{}
	for _, b := range l.Items {
		out[b.Job] = b
	}
	return out
}

// GetBuild is one build with its steps.
func GetBuild(tb testing.TB, c *Coordinator, id int64) Build {
	tb.Helper()
	var b Build
	if code := c.Do("GET", fmt.Sprintf("/api/v1/builds/%d", id), "", nil, &b); code != 200 {
		tb.Fatalf("get build %d: %d", id, code)
	}
	return b
}

// WaitBuild waits until build id satisfies ok and returns it.
func WaitBuild(tb testing.TB, c *Coordinator, id int64, within time.Duration, what string, ok func(Build) bool) Build {
	tb.Helper()
	var b Build
	Eventually(tb, within, fmt.Sprintf("build %d: %s", id, what), func() bool {
		b = GetBuild(tb, c, id)
		return ok(b)
	})
	return b
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

// Get fetches url without credentials and returns the status and body.
func Get(tb testing.TB, url string) (int, string) {
	tb.Helper()
	resp, err := http.Get(url)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}
