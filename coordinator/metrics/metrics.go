// Package metrics owns the coordinator's Prometheus registry (its own, never the
// global one): Go runtime and process collectors, HTTP request counts and latency by
// route, the schedulers' histograms and counters (observed where the events happen,
// through the *Metrics their configs are handed; a nil *Metrics observes nothing),
// and gauges read from PostgreSQL at scrape time (one indexed statement each).
package metrics

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/fc-ci/fc/storage"
)

// CountSource reads the gauges' values.
type CountSource interface {
	Counts(ctx context.Context) (storage.Counts, error)
}

// Metrics is the registry and the instruments other packages record into.
type Metrics struct {
	Registry        *prometheus.Registry
	HTTPRequests    *prometheus.CounterVec
	HTTPDuration    *prometheus.HistogramVec
	countsCollector *countsCollector

	stepDuration *prometheus.HistogramVec
	evalDuration *prometheus.HistogramVec
	dispatch     *prometheus.HistogramVec
	logBytes     prometheus.Counter
	names        names
}

// New registers the standard collectors, the schedulers' instruments and the
// database gauges: the counts, and the runnable queue and agents' slots when db reads
// them too (QueueSource, SlotSource; *storage.DB does).
func New(db CountSource, log *slog.Logger) *Metrics {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fc_http_requests_total", Help: "HTTP requests by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		HTTPDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "fc_http_request_duration_seconds", Help: "HTTP request latency by route pattern and method.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route", "method"}),
		countsCollector: newCountsCollector(db, log),
	}
	r := m.Registerer()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.HTTPRequests, m.HTTPDuration, m.countsCollector)
	m.registerWork()
	if q, ok := db.(QueueSource); ok {
		r.MustRegister(newQueueCollector(q, log))
	}
	if a, ok := db.(SlotSource); ok {
		r.MustRegister(newSlotsCollector(a, log))
	}
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry})
}

type gauge struct {
	desc *prometheus.Desc
	get  func(storage.Counts) int64
}

// countsCollector queries the database once per scrape for every gauge.
type countsCollector struct {
	db     CountSource
	log    *slog.Logger
	gauges []gauge
}

func newCountsCollector(db CountSource, log *slog.Logger) *countsCollector {
	g := func(name, help string, get func(storage.Counts) int64) gauge {
		return gauge{desc: prometheus.NewDesc(name, help, nil, nil), get: get}
	}
	return &countsCollector{db: db, log: log, gauges: []gauge{
		g("fc_builds_total", "Builds in the database.", func(c storage.Counts) int64 { return c.Builds }),
		g("fc_builds_pending", "Builds waiting to run.", func(c storage.Counts) int64 { return c.BuildsPending }),
		g("fc_builds_running", "Builds running now.", func(c storage.Counts) int64 { return c.BuildsRunning }),
		g("fc_builds_completed", "Builds that finished, whatever their result.", func(c storage.Counts) int64 { return c.BuildsCompleted }),
		g("fc_builds_failed", "Finished builds that did not succeed.", func(c storage.Counts) int64 { return c.BuildsFailed }),
		g("fc_projects_total", "Projects.", func(c storage.Counts) int64 { return c.Projects }),
		g("fc_evaluations_total", "Evaluations.", func(c storage.Counts) int64 { return c.Evaluations }),
		g("fc_channels_total", "Channels.", func(c storage.Counts) int64 { return c.Channels }),
		g("fc_agents_connected", "Agents with a live session.", func(c storage.Counts) int64 { return c.AgentsConnected }),
	}}
}

func (c *countsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, g := range c.gauges {
		ch <- g.desc
	}
}

func (c *countsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	counts, err := c.db.Counts(ctx)
	if err != nil {
		// Report the scrape error; Prometheus marks the gauges stale.
		c.log.Warn("metrics: read counts", "err", err)
		for _, g := range c.gauges {
			ch <- prometheus.NewInvalidMetric(g.desc, err)
		}
		return
	}
	for _, g := range c.gauges {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, float64(g.get(counts)))
	}
}
