package buildapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage/storagetest"
)

// BenchmarkListBuilds1M (issue 20): GET /api/v1/builds with 1,000,000 builds (seeded
// with SQL: 2 projects, 10 jobsets, 1,000 evaluations of 1,000 jobs, a status mix),
// through the whole coordinator in-process over loopback HTTP, 500 sequential requests
// per list variant after 20 of warm-up; p50/p99 per variant, goal p99 < 20 ms. Run
// it with scripts/bench-queue, or:
//
//	go test -run '^$' -bench ListBuilds1M -benchtime 1x -timeout 30m ./coordinator/buildapi/
//
// FC_LIST_BUILDS (default 1000000) changes the number of builds, FC_LIST_REQUESTS
// (default 500) the requests per variant.
func BenchmarkListBuilds1M(b *testing.B) {
	n := 1_000_000
	if v := os.Getenv("FC_LIST_BUILDS"); v != "" {
		if _, err := fmt.Sscan(v, &n); err != nil || n < 1000 {
			b.Fatalf("FC_LIST_BUILDS=%q: want a number >= 1000", v)
		}
	}
	requests, warmup := 500, 20
	if v := os.Getenv("FC_LIST_REQUESTS"); v != "" { // fewer, when each takes seconds
		if _, err := fmt.Sscan(v, &requests); err != nil || requests < 1 {
			b.Fatalf("FC_LIST_REQUESTS=%q: want a positive number", v)
		}
		warmup = min(warmup, requests)
	}
	ctx := context.Background()
	db := storagetest.New(b)
	t0 := time.Now()
	for _, q := range []string{
		`INSERT INTO projects (name, repository_url) SELECT 'list-' || g, 'https://example.org/list-' || g || '.git' FROM generate_series(1, 2) g`,
		`INSERT INTO jobsets (project_id, name) SELECT p.id, 'js-' || g FROM projects p, generate_series(1, 5) g`,
		`INSERT INTO evaluations (jobset_id, status, commit, trigger, nr_jobs, started_at, finished_at, created_at)
			SELECT 1 + (g % 10), 'succeeded', md5('c' || g), 'poll', 1000, now() - make_interval(mins => 1000 - g), now() - make_interval(mins => 1000 - g),
				now() - make_interval(mins => 1000 - g) FROM generate_series(1, $1::int / 1000) g`,
		`INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, nix_name, status, status_code, created_at, started_at, finished_at)
			SELECT e.id, e.jobset_id, 'pkgs.job' || k, '/nix/store/' || md5(e.id || '-' || k) || '-job' || k || '.drv', 'x86_64-linux', 'job' || k,
				CASE WHEN k % 50 = 0 THEN 'failed' WHEN k % 97 = 0 THEN 'dependency_failed' ELSE 'succeeded' END,
				CASE WHEN k % 50 = 0 THEN 1 WHEN k % 97 = 0 THEN 2 ELSE 0 END, e.created_at, e.created_at, e.created_at + interval '1 minute'
			FROM evaluations e, generate_series(1, 1000) k ORDER BY e.id, k`,
		`ANALYZE`,
	} {
		args := []any{}
		if strings.Contains(q, "$1") {
			args = append(args, n)
		}
		if _, err := db.Pool().Exec(ctx, q, args...); err != nil {
			b.Fatalf("seed: %v\n%s", err, q)
		}
	}
	b.Logf("seeded %d builds in %.0f s", n, time.Since(t0).Seconds())
	c := coordtest.Start(b, coordtest.Options{DB: db})
	var evalID int64
	if err := db.Pool().QueryRow(ctx, `SELECT max(id) FROM evaluations`).Scan(&evalID); err != nil {
		b.Fatal(err)
	}
	client := &http.Client{}
	b.Cleanup(client.CloseIdleConnections)
	get := func(path string) (int64, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL+path, nil)
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+c.Admin)
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("GET %s: %d %v: %s", path, resp.StatusCode, err, body)
		}
		var page struct {
			Items []struct {
				ID int64 `json:"id"`
			} `json:"items"`
			Total      int64 `json:"total"`
			TotalExact *bool `json:"total_exact"`
		}
		if err := json.Unmarshal(body, &page); err != nil || len(page.Items) == 0 {
			return 0, fmt.Errorf("GET %s: %d items, %v", path, len(page.Items), err)
		}
		if page.TotalExact != nil && !*page.TotalExact {
			return -page.Total, nil // a lower bound, logged as "≥ N"
		}
		return page.Total, nil
	}
	// The deep keyset page: the one after the 100,000th build, by ?before_id=.
	var deepID int64
	if err := db.Pool().QueryRow(ctx, `SELECT id FROM builds ORDER BY id DESC OFFSET 99999 LIMIT 1`).Scan(&deepID); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for _, v := range []struct{ name, path string }{
		{"default", "/api/v1/builds"},
		{"jobset", "/api/v1/builds?jobset_id=3"},
		{"status=failed", "/api/v1/builds?status=failed"},
		{"project+status", "/api/v1/builds?project_id=2&status=succeeded"},
		{"evaluation", fmt.Sprintf("/api/v1/builds?evaluation_id=%d", evalID)},
		{"offset=5000", "/api/v1/builds?offset=5000"},
		// Deeper pages, a job across jobsets and the finished list (the figures before
		// issue 20's change had only the six above).
		{"offset=10000", "/api/v1/builds?offset=10000"},
		{"offset=100000", "/api/v1/builds?offset=100000"},
		{"before_id", fmt.Sprintf("/api/v1/builds?before_id=%d", deepID)},
		{"status+offset=10000", "/api/v1/builds?status=failed&offset=10000"},
		{"job", "/api/v1/builds?job=pkgs.job7"},
		{"recent", "/api/v1/builds/recent"},
	} {
		var lat []time.Duration
		var total int64
		var cpu0 coordtest.CPUUse
		for i := range warmup + requests {
			if i == warmup {
				cpu0 = coordtest.CPUNow(b, c)
			}
			t := time.Now()
			tot, err := get(v.path)
			if err != nil {
				b.Fatal(err)
			}
			if i >= warmup {
				lat = append(lat, time.Since(t))
			}
			total = tot
		}
		// CPU per request (coordinator, client and PostgreSQL): what a request costs
		// whatever else the machine runs, where latency is mostly waiting for a core.
		cpu := coordtest.CPUNow(b, c).Since(cpu0)
		perReq := func(d time.Duration) string { return coordtest.Ms(d / time.Duration(requests)) }
		b.ReportMetric(coordtest.Msf(coordtest.Pct(lat, 99)), v.name+"-p99-ms")
		tot := fmt.Sprint(total)
		if total < 0 {
			tot = fmt.Sprintf("≥ %d", -total)
		}
		b.Logf("GET %-45s total %9s: p50 %s, p90 %s, p99 %s, max %s (%d sequential after %d warm-up; load %s); "+
			"CPU per request %s (this process %s, PostgreSQL %s)", v.path, tot,
			coordtest.PctMs(lat, 50), coordtest.PctMs(lat, 90), coordtest.PctMs(lat, 99), coordtest.PctMs(lat, 100), requests, warmup,
			loadAverage(), perReq(cpu.Self+cpu.Postgres), perReq(cpu.Self), perReq(cpu.Postgres))
	}
	b.ReportMetric(0, "ns/op")
	b.Logf("load average at the end: %s", loadAverage())
}

// loadAverage is the machine's 1, 5 and 15 minute load average.
func loadAverage() string {
	raw, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(raw)); len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}
