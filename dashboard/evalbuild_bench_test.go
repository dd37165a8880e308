package dashboard_test

// The evaluation and build pages with 100,000 builds in the database (100 evaluations
// of 1,000 jobs, each build with its own step), over real HTTP on loopback to the
// whole coordinator's handler. Run:
//
//	go test -run '^$' -bench EvalBuildPages -benchtime 1x ./dashboard/

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/app"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

const (
	ebBenchEvals    = 100
	ebBenchJobs     = 1000
	ebBenchWarmup   = 100
	ebBenchRequests = 1000
)

// ebBenchSeed fills db with the benchmark's project, evaluations, steps and builds.
// Job j of evaluation e: every tenth job fails in two evaluations of three (so
// consecutive evaluations have newly failing, newly succeeding and still failing
// jobs), the job after a failed one depends on it and is dependency_failed (found
// through step_edges: propagated_from is not set), some are aborted after three
// attempts, some of the last evaluation are queued, and every 97th job is renamed
// (new and removed jobs).
func ebBenchSeed(b *testing.B, db *storage.DB) {
	ctx := context.Background()
	stmts := []string{
		`INSERT INTO projects (name, repository_url) VALUES ('bench', 'https://example.org/bench.git')`,
		`INSERT INTO jobsets (project_id, name) SELECT id, 'main' FROM projects`,
		`INSERT INTO evaluations (jobset_id, status, commit, trigger, nr_jobs, created_at, started_at, finished_at, checkout_seconds, eval_seconds)
			SELECT j.id, 'succeeded', md5(e::text) || 'abcdefgh', 'poll', 1000, now() - (101 - e) * interval '1 hour',
				now() - (101 - e) * interval '1 hour' + interval '1 minute', now() - (101 - e) * interval '1 hour' + interval '2 minutes', 1.2, 30.5
			FROM jobsets j, generate_series(1, 100) e ORDER BY e`,
		`INSERT INTO evaluation_inputs (evaluation_id, name, type, value, revision)
			SELECT id, 'src', 'git', 'https://example.org/bench.git', md5(id::text) FROM evaluations`,
		`INSERT INTO evaluation_errors (evaluation_id, attr, message)
			SELECT id, 'broken' || k, 'error: attribute ''x'' missing' FROM evaluations, generate_series(1, 3) k`,
		`CREATE TEMP TABLE bench_jobs AS
			SELECT e, j, 'pkgs.job' || CASE WHEN (j + e) % 97 = 0 THEN j + 1000 ELSE j END AS job,
				'/nix/store/' || lpad(e::text, 3, '0') || lpad(j::text, 29, '0') || '-job' || j || '.drv' AS drv,
				CASE WHEN j % 10 = 0 AND (j / 10 + e) % 3 <> 0 THEN 'failed'
					WHEN j % 10 = 1 AND ((j - 1) / 10 + e) % 3 <> 0 AND j > 1 THEN 'dependency_failed'
					WHEN e = 100 AND j % 50 = 2 THEN 'queued'
					WHEN e % 2 = 0 AND j % 30 = 3 THEN 'aborted'
					ELSE 'succeeded' END AS status
			FROM generate_series(1, 100) e, generate_series(1, 1000) j`,
		`INSERT INTO steps (drv_path, system, status, status_code, error, attempts, exit_code, log_size, created_at, started_at, finished_at)
			SELECT drv, 'x86_64-linux', status, CASE status WHEN 'succeeded' THEN 0 WHEN 'failed' THEN 1 WHEN 'dependency_failed' THEN 2 WHEN 'aborted' THEN 3 END,
				CASE status WHEN 'failed' THEN 'builder failed with exit code 1' WHEN 'aborted' THEN 'nix-store was killed (after 3 attempts)' ELSE '' END,
				CASE WHEN status IN ('queued', 'dependency_failed') THEN 0 WHEN status = 'aborted' THEN 3 ELSE 1 END,
				CASE WHEN status = 'failed' THEN 100 END, CASE WHEN status IN ('queued', 'dependency_failed') THEN 0 ELSE 2048 END,
				now() - interval '1 day', CASE WHEN status NOT IN ('queued', 'dependency_failed') THEN now() - interval '1 hour' END,
				CASE WHEN status <> 'queued' THEN now() - interval '50 minutes' END
			FROM bench_jobs ORDER BY e, j`,
		`INSERT INTO step_edges (step_id, depends_on)
			SELECT s.id, d.id FROM bench_jobs bj JOIN steps s ON s.drv_path = bj.drv
			JOIN bench_jobs dj ON dj.e = bj.e AND dj.j = bj.j - 1 JOIN steps d ON d.drv_path = dj.drv WHERE bj.j % 10 = 1 AND bj.j > 1`,
		`INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, step_id, system, status, status_code, created_at, started_at, finished_at)
			SELECT ev.id, ev.jobset_id, bj.job, bj.drv, s.id, 'x86_64-linux', bj.status, s.status_code, s.created_at,
				coalesce(s.started_at, s.finished_at), s.finished_at
			FROM bench_jobs bj JOIN evaluations ev ON ev.id = bj.e JOIN steps s ON s.drv_path = bj.drv ORDER BY bj.e, bj.j`,
		`INSERT INTO build_outputs (build_id, name, path) SELECT id, 'out', replace(drv_path, '.drv', '') FROM builds`,
		`INSERT INTO build_metrics (build_id, name, value, unit) SELECT id, 'closure', 12.5, 'MiB' FROM builds WHERE status = 'succeeded'`,
		`ANALYZE`,
	}
	for _, s := range stmts {
		if _, err := db.Pool().Exec(ctx, s); err != nil {
			b.Fatalf("seed: %s: %v", s, err)
		}
	}
	var n int64
	if err := db.Pool().QueryRow(ctx, `SELECT count(*) FROM builds`).Scan(&n); err != nil || n != ebBenchEvals*ebBenchJobs {
		b.Fatalf("seeded %d builds (%v), want %d", n, err, ebBenchEvals*ebBenchJobs)
	}
}

// ebBenchGet fetches url and returns the body, refusing anything but 200.
func ebBenchGet(client *http.Client, url string) (string, error) {
	res, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return "", err
	}
	if res.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %d", url, res.StatusCode)
	}
	return string(body), nil
}

// BenchmarkEvalBuildPages measures GET /build/{id} and GET /eval/{id}?tab=… of random
// builds, evaluations and tabs, sequentially: p50 and p99 per request. ns/op is
// suppressed: one op is a whole measurement.
func BenchmarkEvalBuildPages(b *testing.B) {
	db := storagetest.New(b)
	ebBenchSeed(b, db)
	cfg := config.Defaults()
	cfg.StateDir = b.TempDir()
	a, err := app.New(app.Config{Settings: cfg, DB: db, Addr: "127.0.0.1:0"})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(a.Server.Handler())
	b.Cleanup(srv.Close)
	client := &http.Client{Timeout: 30 * time.Second}
	b.Cleanup(client.CloseIdleConnections)

	// Checked answers: the pages measured show what they claim to.
	body, err := ebBenchGet(client, srv.URL+"/eval/100?tab=newly-failing")
	if err != nil || !strings.Contains(body, "Compared with evaluation 99") || !strings.Contains(body, "page 1 of") {
		b.Fatalf("eval page: %v\n%s", err, body)
	}
	body, err = ebBenchGet(client, srv.URL+fmt.Sprintf("/build/%d", 99*ebBenchJobs+11)) // eval 100, job 11: dependency_failed
	if err != nil || !strings.Contains(body, `id="build-culprit"`) {
		b.Fatalf("build page: %v\n%s", err, body)
	}

	rng := rand.New(rand.NewPCG(1, 2))
	tabs := append([]string{""}, storage.CompareTabs...)
	pages := map[string]func() string{
		"build": func() string { return fmt.Sprintf("%s/build/%d", srv.URL, 1+rng.IntN(ebBenchEvals*ebBenchJobs)) },
		"eval": func() string {
			u := fmt.Sprintf("%s/eval/%d?tab=%s", srv.URL, 1+rng.IntN(ebBenchEvals), tabs[rng.IntN(len(tabs))])
			if rng.IntN(4) == 0 {
				u += "&filter=job1"
			}
			return u
		},
	}
	for _, name := range []string{"build", "eval"} {
		next := pages[name]
		b.Run(name, func(b *testing.B) {
			for range ebBenchWarmup {
				if _, err := ebBenchGet(client, next()); err != nil {
					b.Fatal(err)
				}
			}
			var lat []time.Duration
			for b.Loop() {
				for range ebBenchRequests {
					u := next()
					t0 := time.Now()
					if _, err := ebBenchGet(client, u); err != nil {
						b.Fatal(err)
					}
					lat = append(lat, time.Since(t0))
				}
			}
			p50, p99 := coordtest.Pct(lat, 50), coordtest.Pct(lat, 99)
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(coordtest.Msf(p50), "p50-ms")
			b.ReportMetric(coordtest.Msf(p99), "p99-ms")
			b.Logf("GET /%s/… with %d builds, %d sequential requests after %d warm-up: p50 %.2f ms, p99 %.2f ms",
				name, ebBenchEvals*ebBenchJobs, len(lat), ebBenchWarmup, coordtest.Msf(p50), coordtest.Msf(p99))
			if p99 > 50*time.Millisecond {
				b.Errorf("p99 %v is over 50 ms", p99)
			}
		})
	}
}
