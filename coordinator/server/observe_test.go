package server

import (
	"log/slog"
	"net/http"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/metrics"
)

// The metric series observe caches keep counting: every cache read, hit or miss,
// moves its route's counter and histogram, by status.
func TestObserve_CachedSeriesKeepCounting(t *testing.T) {
	m := metrics.New(nil, nil)
	s := New(Config{Server: config.Defaults().Server, Logger: slog.New(slog.DiscardHandler),
		Mounts: map[string]http.Handler{"/nix-cache": benchCacheHandler()}}, nil, m)
	w := &discardWriter{h: http.Header{}}
	for range 5 {
		req, _ := http.NewRequest(http.MethodGet, "/nix-cache/0c5ph2nwh1ambhm9w1h8zzb0h8lffpc1.narinfo", nil)
		req.RemoteAddr = "127.0.0.1:1"
		s.Handler().ServeHTTP(w, req)
	}
	var d dto.Metric
	if err := m.HTTPRequests.WithLabelValues("/nix-cache/{file}", "GET", "200").Write(&d); err != nil || d.GetCounter().GetValue() != 5 {
		t.Errorf("fc_http_requests_total for the narinfo route: %v (%v), want 5", d.GetCounter().GetValue(), err)
	}
	d.Reset()
	h, err := m.HTTPDuration.GetMetricWithLabelValues("/nix-cache/{file}", "GET")
	if err == nil {
		err = h.(interface{ Write(*dto.Metric) error }).Write(&d)
	}
	if err != nil || d.GetHistogram().GetSampleCount() != 5 {
		t.Errorf("fc_http_request_duration_seconds for the narinfo route: %d samples (%v), want 5", d.GetHistogram().GetSampleCount(), err)
	}
	if got := w.h.Get("X-Frame-Options"); got != "DENY" {
		t.Errorf("X-Frame-Options %q, want DENY", got)
	}
}
