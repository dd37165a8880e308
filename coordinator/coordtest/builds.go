package coordtest

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

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
