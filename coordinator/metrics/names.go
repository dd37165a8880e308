package metrics

import (
	"regexp"
	"sort"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// names remembers the metric names of the collectors registered through Registerer,
// so a test can check that a dashboard's queries name series that exist.
type names struct {
	mu  sync.Mutex
	set map[string]bool
}

func (n *names) record(c prometheus.Collector) {
	// A Desc's fully-qualified name is in its String form (Desc has no accessor).
	descName := regexp.MustCompile(`fqName: "([^"]+)"`)
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.set == nil {
		n.set = map[string]bool{}
	}
	for d := range ch {
		if m := descName.FindStringSubmatch(d.String()); m != nil {
			n.set[m[1]] = true
		}
	}
}

// Names are the metric names registered so far (histograms by their base name).
func (m *Metrics) Names() []string {
	m.names.mu.Lock()
	defer m.names.mu.Unlock()
	out := make([]string, 0, len(m.names.set))
	for n := range m.names.set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Registerer registers collectors in the registry (for packages that bring their own
// instruments, as the cache does) and remembers their names.
func (m *Metrics) Registerer() prometheus.Registerer { return recorder{m} }

type recorder struct{ m *Metrics }

func (r recorder) Register(c prometheus.Collector) error {
	if err := r.m.Registry.Register(c); err != nil {
		return err
	}
	r.m.names.record(c)
	return nil
}

func (r recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

func (r recorder) Unregister(c prometheus.Collector) bool { return r.m.Registry.Unregister(c) }
