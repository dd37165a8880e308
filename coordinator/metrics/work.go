package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// registerWork creates and registers the instruments the schedulers record into.
// Buckets in seconds: steps and evaluations take from a fraction of a second (a
// trivial derivation) to hours; a step may wait a day for a builder.
func (m *Metrics) registerWork() {
	stepBuckets := []float64{.1, .5, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 36000}
	evalBuckets := []float64{.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600}
	dispatchBuckets := []float64{.01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400}
	m.stepDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "fc_step_duration_seconds", Help: "How long steps built on their agents, by system and the status they ended in.",
		Buckets: stepBuckets,
	}, []string{"system", "outcome"})
	m.evalDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "fc_evaluation_duration_seconds", Help: "How long evaluations took on their agents (checkout and evaluation), by outcome.",
		Buckets: evalBuckets,
	}, []string{"outcome"})
	m.dispatch = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "fc_dispatch_latency_seconds", Help: "Time from a step becoming runnable to its being leased to an agent, by system.",
		Buckets: dispatchBuckets,
	}, []string{"system"})
	m.logBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "fc_log_bytes_written_total", Help: "Build log bytes received from agents and stored.",
	})
	m.Registerer().MustRegister(m.stepDuration, m.evalDuration, m.dispatch, m.logBytes)
}

// ObserveStep records a step's build time; outcome is the status it ended in.
func (m *Metrics) ObserveStep(system, outcome string, d time.Duration) {
	if m == nil || d < 0 {
		return
	}
	m.stepDuration.WithLabelValues(system, outcome).Observe(d.Seconds())
}

// ObserveEvaluation records an evaluation's time; outcome is succeeded, failed or
// retried (an infrastructure failure).
func (m *Metrics) ObserveEvaluation(outcome string, d time.Duration) {
	if m == nil || d < 0 {
		return
	}
	m.evalDuration.WithLabelValues(outcome).Observe(d.Seconds())
}

// ObserveDispatch records how long a step had been runnable when it was leased.
func (m *Metrics) ObserveDispatch(system string, waited time.Duration) {
	if m == nil {
		return
	}
	m.dispatch.WithLabelValues(system).Observe(max(waited, 0).Seconds())
}

// AddLogBytes counts n build log bytes stored.
func (m *Metrics) AddLogBytes(n int) {
	if m == nil || n <= 0 {
		return
	}
	m.logBytes.Add(float64(n))
}
