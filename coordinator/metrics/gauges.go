package metrics

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fc-ci/fc/storage"
)

// scrapeTimeout bounds each scrape-time statement.
const scrapeTimeout = 5 * time.Second

// QueueSource reads the runnable queue (one statement).
type QueueSource interface {
	RunnableQueue(ctx context.Context) ([]storage.QueueGroup, error)
}

// SlotSource reads the connected agents' sessions and slots per system (one statement).
type SlotSource interface {
	AgentSlotsBySystem(ctx context.Context) ([]storage.SystemSlots, error)
}

// queueCollector reads the runnable queue once per scrape.
type queueCollector struct {
	db         QueueSource
	log        *slog.Logger
	depth, age *prometheus.Desc
}

func newQueueCollector(db QueueSource, log *slog.Logger) *queueCollector {
	return &queueCollector{db: db, log: log, depth: prometheus.NewDesc("fc_queue_runnable_steps",
		"Steps runnable now (queued, backoff over, every input built), by system and required features (sorted, comma-separated).",
		[]string{"system", "features"}, nil),
		age: prometheus.NewDesc("fc_queue_oldest_runnable_seconds",
			"How long the longest-waiting runnable step has been runnable, by system and required features.",
			[]string{"system", "features"}, nil)}
}

// slotsCollector reads the agents' sessions and slots once per scrape.
type slotsCollector struct {
	db                    SlotSource
	log                   *slog.Logger
	sessions, slots, free *prometheus.Desc
}

func newSlotsCollector(db SlotSource, log *slog.Logger) *slotsCollector {
	return &slotsCollector{db: db, log: log, sessions: prometheus.NewDesc("fc_agent_sessions",
		"Agents connected now that advertise the system (an agent counts under each of its systems).",
		[]string{"system"}, nil),
		slots: prometheus.NewDesc("fc_agent_build_slots",
			"Build slots (max_jobs) of the connected agents taking builds now (enabled, not draining, not backed off), by system.",
			[]string{"system"}, nil),
		free: prometheus.NewDesc("fc_agent_free_build_slots",
			"Build slots of the connected agents taking builds now less the steps they run, by system.",
			[]string{"system"}, nil)}
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.depth
	ch <- c.age
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	groups, err := c.db.RunnableQueue(ctx)
	if err != nil {
		c.log.Warn("metrics: read the runnable queue", "err", err)
		ch <- prometheus.NewInvalidMetric(c.depth, err)
		return
	}
	for _, g := range groups {
		ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(g.Runnable), g.System, g.Features)
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, g.OldestAge.Seconds(), g.System, g.Features)
	}
}

func (c *slotsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.sessions
	ch <- c.slots
	ch <- c.free
}

func (c *slotsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	systems, err := c.db.AgentSlotsBySystem(ctx)
	if err != nil {
		c.log.Warn("metrics: read agent slots", "err", err)
		ch <- prometheus.NewInvalidMetric(c.sessions, err)
		return
	}
	for _, s := range systems {
		ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.GaugeValue, float64(s.Sessions), s.System)
		ch <- prometheus.MustNewConstMetric(c.slots, prometheus.GaugeValue, float64(s.Slots), s.System)
		ch <- prometheus.MustNewConstMetric(c.free, prometheus.GaugeValue, float64(s.Free), s.System)
	}
}
