package server_test

// Benchmarks for issue #2: the latency of GET /api/v1/projects?limit=50 with 10,000
// projects, over real HTTP on loopback to the real handler tree (the same assembly as
// fc-coordinator serve), beside the bare SQL the handler runs, timed on the same pool
// in the same run. Run them with scripts/bench, or:
//
//	go test -run '^$' -bench ListProjects -benchtime 1x ./coordinator/server/

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fc-ci/fc/coordinator/app"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

const (
	benchProjects = 10_000
	benchPageSize = 50
	benchWarmup   = 200   // requests before measuring (connections, statement cache, buffers)
	benchRequests = 2_000 // measured requests per run
	benchClients  = 8
)

// benchListSQL is the SQL storage.ListProjects runs (a count, then the page), copied
// so the baseline does not go through the code it is the baseline for.
const (
	benchCountSQL = `SELECT count(*) FROM projects`
	benchPageSQL  = `SELECT id, name, display_name, description, repository_url, enabled,
	webhook_secret IS NOT NULL AND webhook_secret <> '', created_at, updated_at FROM projects ORDER BY id DESC LIMIT $1 OFFSET $2`
)

// BenchmarkListProjects10k measures GET /api/v1/projects?limit=50 over 10,000
// projects: sequentially (p50/p99 per request) and with 8 concurrent clients (req/s),
// each beside the bare SQL on the pool. ns/op is suppressed: one op is a whole
// measurement of benchRequests requests.
func BenchmarkListProjects10k(b *testing.B) {
	ctx := context.Background()
	db := storagetest.New(b)
	if _, err := db.Pool().Exec(ctx, `INSERT INTO projects (name, display_name, description, repository_url, webhook_secret)
		SELECT 'bench-' || g, 'Bench project ' || g, 'A project the list benchmark made', 'https://example.org/bench/' || g || '.git',
		       CASE WHEN g % 10 = 0 THEN 'secret-' || g END
		FROM generate_series(1, $1::int) g`, benchProjects); err != nil {
		b.Fatalf("insert %d projects: %v", benchProjects, err)
	}
	if _, err := db.Pool().Exec(ctx, `ANALYZE projects`); err != nil {
		b.Fatal(err)
	}
	base := benchServe(b, db)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * benchClients}}
	b.Cleanup(client.CloseIdleConnections)
	url := fmt.Sprintf("%s/api/v1/projects?limit=%d", base, benchPageSize)

	// One checked answer: the benchmark measures what it claims to.
	var page struct {
		Items []json.RawMessage `json:"items"`
		Total int64             `json:"total"`
	}
	body, err := benchGet(client, url)
	if err != nil {
		b.Fatal(err)
	}
	if err := json.Unmarshal(body, &page); err != nil || page.Total != benchProjects || len(page.Items) != benchPageSize {
		b.Fatalf("GET %s: total %d, %d items, err %v; want %d and %d", url, page.Total, len(page.Items), err, benchProjects, benchPageSize)
	}
	respBytes := len(body)
	get := func() error { _, err := benchGet(client, url); return err }
	bare := func() error { return benchBareSQL(ctx, db.Pool()) }

	b.Run("sequential", func(b *testing.B) {
		for range benchWarmup {
			if err := errors.Join(bare(), get()); err != nil {
				b.Fatal(err)
			}
		}
		var httpLat, sqlLat, countLat []time.Duration
		for b.Loop() {
			// Alternate the two so both see the same machine at the same moment.
			for range benchRequests {
				t0 := time.Now()
				var n int64
				if err := db.Pool().QueryRow(ctx, benchCountSQL).Scan(&n); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := benchPage(ctx, db.Pool()); err != nil {
					b.Fatal(err)
				}
				t2 := time.Now()
				if err := get(); err != nil {
					b.Fatal(err)
				}
				countLat = append(countLat, t1.Sub(t0))
				sqlLat = append(sqlLat, t2.Sub(t0))
				httpLat = append(httpLat, time.Since(t2))
			}
		}
		hp50, hp99 := benchPercentiles(httpLat)
		sp50, sp99 := benchPercentiles(sqlLat)
		cp50, _ := benchPercentiles(countLat)
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(benchMS(hp50), "p50-ms")
		b.ReportMetric(benchMS(hp99), "p99-ms")
		b.ReportMetric(benchMS(sp50), "sql-p50-ms")
		b.ReportMetric(benchMS(sp99), "sql-p99-ms")
		b.ReportMetric(benchMS(cp50), "count-p50-ms")
		b.ReportMetric(float64(respBytes), "resp-bytes")
		b.Logf("GET /api/v1/projects?limit=%d over %d projects, %d sequential requests after %d warm-up: p50 %.3f ms, p99 %.3f ms; "+
			"baseline, bare SQL on the pool (count %.3f ms at p50 + page): p50 %.3f ms, p99 %.3f ms; HTTP+JSON adds %.3f ms at p50, %.3f ms at p99; answer %d bytes",
			benchPageSize, benchProjects, len(httpLat), benchWarmup, benchMS(hp50), benchMS(hp99),
			benchMS(cp50), benchMS(sp50), benchMS(sp99), benchMS(hp50-sp50), benchMS(hp99-sp99), respBytes)
	})

	b.Run(fmt.Sprintf("%d-clients", benchClients), func(b *testing.B) {
		if _, _, err := benchConcurrent(benchClients, benchWarmup, get); err != nil {
			b.Fatal(err)
		}
		var one, many, sqlMany float64
		var lat []time.Duration
		for b.Loop() {
			var err error
			if one, _, err = benchConcurrent(1, benchRequests, get); err != nil {
				b.Fatal(err)
			}
			if many, lat, err = benchConcurrent(benchClients, benchRequests, get); err != nil {
				b.Fatal(err)
			}
			if sqlMany, _, err = benchConcurrent(benchClients, benchRequests, bare); err != nil {
				b.Fatal(err)
			}
		}
		p50, p99 := benchPercentiles(lat)
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(many, "req/s")
		b.ReportMetric(benchMS(p50), "p50-ms")
		b.ReportMetric(benchMS(p99), "p99-ms")
		b.ReportMetric(one, "1-client-req/s")
		b.ReportMetric(sqlMany, "sql-req/s")
		b.Logf("%d clients, %d requests in all: %.0f req/s (p50 %.3f ms, p99 %.3f ms per request); baselines in the same run: "+
			"1 client %.0f req/s, bare SQL with %d clients %.0f/s",
			benchClients, benchRequests, many, benchMS(p50), benchMS(p99), one, benchClients, sqlMany)
	})
}

// benchServe runs the coordinator's HTTP surface on a loopback listener, with the
// production default settings and log level (info: successful GETs are not logged).
func benchServe(b *testing.B, db *storage.DB) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	cfg := config.Defaults()
	cfg.StateDir = b.TempDir()
	a, err := app.New(app.Config{Settings: cfg, DB: db, Logger: log, Addr: ln.Addr().String()})
	if err != nil {
		ln.Close()
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Server.Serve(ctx, ln, 10*time.Second) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("serve: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

// benchGet fetches url and returns the body of a 200 answer.
func benchGet(client *http.Client, url string) ([]byte, error) {
	resp, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %d %s", url, resp.StatusCode, body)
	}
	return body, nil
}

// benchBareSQL runs what storage.ListProjects runs, directly on the pool.
func benchBareSQL(ctx context.Context, pool *pgxpool.Pool) error {
	var n int64
	if err := pool.QueryRow(ctx, benchCountSQL).Scan(&n); err != nil {
		return err
	}
	return benchPage(ctx, pool)
}

func benchPage(ctx context.Context, pool *pgxpool.Pool) error {
	rows, err := pool.Query(ctx, benchPageSQL, benchPageSize, 0)
	if err != nil {
		return err
	}
	defer rows.Close()
	var (
		id                        int64
		name, display, desc, repo string
		enabled, secretSet        bool
		createdAt, updatedAt      time.Time
		n                         int
	)
	for rows.Next() {
		if err := rows.Scan(&id, &name, &display, &desc, &repo, &enabled, &secretSet, &createdAt, &updatedAt); err != nil {
			return err
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if n != benchPageSize {
		return fmt.Errorf("page query returned %d rows, want %d", n, benchPageSize)
	}
	return nil
}

// benchConcurrent runs total calls of f from clients goroutines and returns the calls
// per second, every call's latency, and the first error.
func benchConcurrent(clients, total int, f func() error) (perSec float64, lat []time.Duration, err error) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	lats := make([][]time.Duration, clients)
	start := time.Now()
	for c := range clients {
		n := total / clients
		if c < total%clients {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				t0 := time.Now()
				if err := f(); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
				lats[c] = append(lats[c], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, l := range lats {
		lat = append(lat, l...)
	}
	return float64(len(lat)) / elapsed.Seconds(), lat, first
}

// benchPercentiles returns the 50th and 99th percentiles (nearest rank).
func benchPercentiles(d []time.Duration) (p50, p99 time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	rank := func(p float64) time.Duration {
		i := int(math.Ceil(p/100*float64(len(s)))) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return rank(50), rank(99)
}

func benchMS(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
