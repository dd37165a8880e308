package metrics_test

import (
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/fc-ci/fc/coordinator/coordtest"
)

// scrape is one reading of /metrics.
type scrape map[string]*dto.MetricFamily

// scrapeMetrics reads url's /metrics as Prometheus would.
func scrapeMetrics(t testing.TB, url string) scrape {
	t.Helper()
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// labels are "name=value" pairs a series must carry (others may be there too).
func matches(m *dto.Metric, labels []string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for _, kv := range labels {
		k, v, _ := strings.Cut(kv, "=")
		if got, ok := have[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// value is the gauge's or counter's value of the series with labels, and whether
// there is one.
func (s scrape) value(name string, labels ...string) (float64, bool) {
	for _, m := range s[name].GetMetric() {
		if matches(m, labels) {
			switch {
			case m.Gauge != nil:
				return m.Gauge.GetValue(), true
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			case m.Untyped != nil:
				return m.Untyped.GetValue(), true
			}
		}
	}
	return 0, false
}

// histogram is the count and sum of the histogram series with labels (0, 0 if absent).
func (s scrape) histogram(name string, labels ...string) (count uint64, sum float64) {
	for _, m := range s[name].GetMetric() {
		if matches(m, labels) && m.Histogram != nil {
			return m.Histogram.GetSampleCount(), m.Histogram.GetSampleSum()
		}
	}
	return 0, 0
}

// series lists a family's series for failure messages.
func (s scrape) series(name string) string {
	var out []string
	for _, m := range s[name].GetMetric() {
		var ls []string
		for _, l := range m.GetLabel() {
			ls = append(ls, l.GetName()+"="+l.GetValue())
		}
		out = append(out, "{"+strings.Join(ls, ",")+"}")
	}
	sort.Strings(out)
	return name + " " + strings.Join(out, " ")
}

// wantValue fails unless the series has value want.
func (s scrape) wantValue(t testing.TB, want float64, name string, labels ...string) {
	t.Helper()
	got, ok := s.value(name, labels...)
	if !ok || got != want {
		t.Errorf("%s%v = %v (present %v), want %v; have %s", name, labels, got, ok, want, s.series(name))
	}
}

// histogramCount fails unless the histogram series counts want observations.
func (s scrape) histogramCount(t testing.TB, want uint64, name string, labels ...string) {
	t.Helper()
	if n, _ := s.histogram(name, labels...); n != want {
		t.Errorf("%s%v counts %d, want %d; have %s", name, labels, n, want, s.series(name))
	}
}

// scrapeUntil scrapes until cond holds of a scrape, and returns that scrape.
func scrapeUntil(t testing.TB, c *coordtest.Coordinator, what string, cond func(scrape) bool) scrape {
	t.Helper()
	var s scrape
	coordtest.Eventually(t, 60*time.Second, what, func() bool {
		s = scrapeMetrics(t, c.URL)
		return cond(s)
	})
	return s
}

// eventuallyValue scrapes until the series has value want.
func eventuallyValue(t testing.TB, c *coordtest.Coordinator, want float64, name string, labels ...string) scrape {
	t.Helper()
	var s scrape
	coordtest.Eventually(t, 60*time.Second, name+strings.Join(labels, ",")+" reaches the expected value", func() bool {
		s = scrapeMetrics(t, c.URL)
		got, ok := s.value(name, labels...)
		return ok && got == want
	})
	return s
}
