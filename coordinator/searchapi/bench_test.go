package searchapi_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/app"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// Benchmark scale: 20 jobsets × 100 evaluations × 500 jobs = 1,000,000 builds with
// an output each, every build its own derivation (the worst case for path prefixes).
const (
	benchJobsets = 20
	benchEvals   = 100
	benchJobs    = 500
)

// seedMillion fills db over SQL (generate_series), vacuums and analyses it. Job names are
// "pkgs.<word>-<n>" (25 words × 20), hash parts md5 hex with 'e' made 'z' (nix-base32).
func seedMillion(b *testing.B, db *storage.DB) {
	b.Helper()
	ctx := context.Background()
	start := time.Now()
	for _, q := range []string{
		`INSERT INTO projects (name, display_name, repository_url)
			SELECT 'project-' || i, 'Project ' || i, 'https://example.org/' || i || '.git' FROM generate_series(1, 10) i`,
		`INSERT INTO jobsets (project_id, name) SELECT p.id, n FROM projects p, unnest(ARRAY['main', 'staging']) n`,
		`INSERT INTO evaluations (jobset_id, status) SELECT j.id, 'succeeded' FROM jobsets j, generate_series(1, ` + itoa(benchEvals) + `)`,
		`INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, status, finished_at)
			SELECT e.id, e.jobset_id, 'pkgs.' || (ARRAY['hello', 'curl', 'git', 'vim', 'zlib', 'openssl', 'python', 'perl', 'bash',
				'coreutils', 'gcc', 'glibc', 'nginx', 'postgresql', 'redis', 'nodejs', 'rustc', 'go', 'ghc', 'firefox',
				'emacs', 'tmux', 'jq', 'ripgrep', 'sqlite'])[1 + k % 25] || '-' || (k / 25),
				'/nix/store/' || translate(md5('d' || e.id || '/' || k), 'e', 'z') || '-job-' || k || '.drv',
				'x86_64-linux', 'succeeded', now()
			FROM evaluations e, generate_series(0, ` + itoa(benchJobs-1) + `) k`,
		`INSERT INTO build_outputs (build_id, name, path)
			SELECT id, 'out', '/nix/store/' || translate(md5('o' || id), 'e', 'z') || '-out-' || id FROM builds`,
		`VACUUM ANALYZE`, // as autovacuum leaves a table after inserts: index-only scans read no rows
	} {
		if _, err := db.Pool().Exec(ctx, q); err != nil {
			b.Fatalf("seed: %v\n%s", err, q)
		}
	}
	var builds, jobs int64
	if err := db.Pool().QueryRow(ctx, `SELECT (SELECT count(*) FROM builds), (SELECT count(*) FROM jobs)`).Scan(&builds, &jobs); err != nil {
		b.Fatal(err)
	}
	b.Logf("seeded %d builds, %d jobs in %v", builds, jobs, time.Since(start).Round(time.Second))
}

func itoa(n int) string { return strconv.Itoa(n) }

// BenchmarkSearch: GET /api/v1/search through the coordinator's handler over a
// million builds, each kind of query; p50 and p99 per request in milliseconds.
func BenchmarkSearch(b *testing.B) {
	db := storagetest.New(b)
	seedMillion(b, db)
	cfg := config.Defaults()
	cfg.StateDir = b.TempDir()
	a, err := app.New(app.Config{Settings: cfg, DB: db, Logger: slog.New(slog.DiscardHandler), Addr: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	h := a.Server.Handler()
	var drv, out string
	if err := db.Pool().QueryRow(context.Background(), `SELECT b.drv_path, o.path FROM builds b JOIN build_outputs o ON o.build_id = b.id
		WHERE b.id = (SELECT max(id) / 2 FROM builds)`).Scan(&drv, &out); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct{ name, q string }{
		{"job-name", "hello"},
		{"job-name-everywhere", "pkgs"}, // in every one of the 10,000 jobs
		{"drv-path", drv},
		{"output-path", out},
		{"hash-part", out[len("/nix/store/") : len("/nix/store/")+32]},
		{"hash-prefix-2", out[len("/nix/store/") : len("/nix/store/")+2]},
		{"no-match", "yyyyyyyyyyyy"},
	} {
		b.Run(c.name, func(b *testing.B) {
			path := "/api/v1/search?q=" + url.QueryEscape(c.q)
			var ds []time.Duration
			for b.Loop() {
				start := time.Now()
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
				ds = append(ds, time.Since(start))
				if rec.Code != http.StatusOK {
					b.Fatalf("%s: %d %s", path, rec.Code, rec.Body)
				}
			}
			p50, p99 := coordtest.Pct(ds, 50), coordtest.Pct(ds, 99)
			b.ReportMetric(coordtest.Msf(p50), "p50-ms")
			b.ReportMetric(coordtest.Msf(p99), "p99-ms")
			b.Logf("%s (%d requests): p50 %s, p99 %s", c.name, len(ds), coordtest.Ms(p50), coordtest.Ms(p99))
		})
	}
}
