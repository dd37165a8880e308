package metrics_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/fc-ci/fc/coordinator/app"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/storage/storagetest"
)

// dashboardPanel is what the test reads of a Grafana panel (rows nest panels).
type dashboardPanel struct {
	Title   string           `json:"title"`
	Type    string           `json:"type"`
	Panels  []dashboardPanel `json:"panels"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

// TestDashboard_EveryQueryNamesARegisteredSeries reads nixos/grafana-dashboard.json
// and checks every query against the names the coordinator registers (app.New's
// registry, the cache's instruments included): a renamed series breaks the test, not
// an operator's dashboard.
func TestDashboard_EveryQueryNamesARegisteredSeries(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../nixos/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string           `json:"title"`
		UID    string           `json:"uid"`
		Panels []dashboardPanel `json:"panels"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("the dashboard is not valid JSON: %v", err)
	}
	if d.Title == "" || d.UID == "" {
		t.Errorf("the dashboard has no title or uid: %q %q", d.Title, d.UID)
	}
	settings := config.Defaults()
	settings.StateDir = t.TempDir()
	a, err := app.New(app.Config{Settings: settings, DB: storagetest.New(t), Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	registered := a.Metrics.Names()
	for _, want := range []string{"fc_queue_runnable_steps", "fc_step_duration_seconds", "fc_cache_narinfo_hits_total", "go_goroutines"} {
		if !slices.Contains(registered, want) {
			t.Fatalf("Names() lacks %s: %v", want, registered)
		}
	}
	known := func(name string) bool {
		if slices.Contains(registered, name) {
			return true
		}
		for _, suffix := range []string{"_bucket", "_sum", "_count"} { // a histogram's series
			if base, ok := strings.CutSuffix(name, suffix); ok && slices.Contains(registered, base) {
				return true
			}
		}
		return false
	}
	metricName := regexp.MustCompile(`\b(?:fc|go|process|promhttp)_[a-zA-Z0-9_:]+`)
	queries := 0
	var walk func([]dashboardPanel)
	walk = func(ps []dashboardPanel) {
		for _, p := range ps {
			walk(p.Panels)
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				queries++
				names := metricName.FindAllString(tg.Expr, -1)
				if len(names) == 0 {
					t.Errorf("panel %q: query %q names no series", p.Title, tg.Expr)
				}
				for _, n := range names {
					if !known(n) {
						t.Errorf("panel %q: %s is not a registered series (query %q)", p.Title, n, tg.Expr)
					}
				}
			}
		}
	}
	walk(d.Panels)
	if queries < 10 {
		t.Errorf("the dashboard has %d queries; it should chart the queue, agents, steps, evaluations, cache and HTTP", queries)
	}
}
