package main

import (
	"fmt"
	"path"
	"strings"
)

// Goal names a figure's baseline (another metric of the same benchmark, measured in
// the same run) and, where the issues set one, the goal it must meet: on the ratio
// figure/baseline when Ratio, else on the figure itself. Bench and Metric are
// path.Match patterns.
type Goal struct {
	Bench, Metric string
	Baseline      string  // "" when the figure has none
	Ratio         bool    // the goal is on value/baseline
	Op            string  // "<=", "<", ">=", ">"; "" when there is no goal
	Target        float64 // the bound Op compares with
	Note          string  // shown beside the goal (why, or the words)
}

// goals are the issues' goals (issue 21 and before) and the baselines each benchmark
// reports. A figure no entry names is reported with no baseline or goal.
var goals = []Goal{
	{Bench: "LogThroughput100", Metric: "build-MB/s", Baseline: "build-no-tailer-MB/s", Ratio: true, Op: ">=", Target: 0.8,
		Note: "100 viewers cost the build ≤ 20%"},
	{Bench: "LogLatency", Metric: "p99-ms", Baseline: "nix-p99-ms", Op: "<", Target: 100},
	{Bench: "LogLatency", Metric: "p50-ms", Baseline: "nix-p50-ms"},
	{Bench: "TriggerToGraph10k", Metric: "fc-s/op", Baseline: "nix-instantiate-tmpfs-s/op", Ratio: true, Op: "<=", Target: 1.0,
		Note: "against nix-instantiate into a tmpfs store"},
	{Bench: "TriggerToGraph10k", Metric: "fc-s/op", Baseline: "nix-instantiate-s/op", Ratio: true, Op: "<", Target: 1.0,
		Note: "below nix-instantiate into Nix's own store"},
	{Bench: "Evaluate10k", Metric: "fc-s/op", Baseline: "nix-instantiate-s/op", Ratio: true},
	{Bench: "Independent200", Metric: "fc-s/op", Baseline: "nix-build-s/op", Ratio: true, Op: "<=", Target: 1.2},
	{Bench: "DAG1000", Metric: "fc-s/op", Baseline: "nix-build-s/op", Ratio: true, Op: "<=", Target: 1.3},
	{Bench: "DispatchLatency", Metric: "p99-ms", Baseline: "nix-store-r-p50-ms", Op: "<", Target: 50,
		Note: "commit → Nix begins the derivation"},
	{Bench: "ListBuilds1M", Metric: "*-p99-ms", Op: "<", Target: 20},
	{Bench: "Queue100k/coordinators=1/agents=200", Metric: "steps/s", Op: ">=", Target: 1000,
		Note: "sustained, one coordinator (a second's gain: the cpu= runs)"},
	{Bench: "Queue100k", Metric: "max-rss-MB", Op: "<", Target: 300},
	{Bench: "ListProjects10k/sequential", Metric: "p99-ms", Baseline: "sql-p99-ms", Ratio: true},
	{Bench: "ListProjects10k/8-clients", Metric: "req/s", Baseline: "sql-req/s", Ratio: true},
	{Bench: "SessionRoundTrip/command", Metric: "p99-us", Baseline: "tcp-p99-us", Ratio: true},
	{Bench: "SessionRoundTrip/heartbeat", Metric: "p99-us", Baseline: "sql-p99-us", Ratio: true},
	{Bench: "CacheNarinfo", Metric: "fc-req/s", Baseline: "nginx-req/s", Ratio: true, Op: ">=", Target: 0.9},
	{Bench: "CacheNarinfo", Metric: "fc-p99-ms", Baseline: "nginx-p99-ms", Ratio: true},
	{Bench: "CacheNAR/*", Metric: "fc-MB/s", Baseline: "nginx-MB/s", Ratio: true, Op: ">=", Target: 0.95},
	{Bench: "CachePush", Metric: "fc-s", Baseline: "nix-copy-s", Ratio: true, Op: "<=", Target: 1 / 1.5,
		Note: "push ≥ 1.5× as fast as nix copy"},
}

// goalsFor are the entries that apply to a figure (a figure may have several goals,
// each against its own baseline).
func goalsFor(bench, metric string) []Goal {
	var out []Goal
	for _, g := range goals {
		if match(g.Bench, bench) && match(g.Metric, metric) {
			out = append(out, g)
		}
	}
	return out
}

// match is path.Match, where a pattern without "/" also matches the sub-benchmarks
// of the benchmark it names.
func match(pattern, s string) bool {
	if ok, err := path.Match(pattern, s); err == nil && ok {
		return true
	}
	parent, _, sub := strings.Cut(s, "/")
	ok, err := path.Match(pattern, parent)
	return sub && !strings.Contains(pattern, "/") && err == nil && ok
}

// met says whether x meets the goal; ok is false when there is no goal.
func (g Goal) met(x float64) (met, ok bool) {
	switch g.Op {
	case "<=":
		return x <= g.Target, true
	case "<":
		return x < g.Target, true
	case ">=":
		return x >= g.Target, true
	case ">":
		return x > g.Target, true
	}
	return false, false
}

// String is the goal as the report shows it.
func (g Goal) String() string {
	if g.Op == "" {
		return ""
	}
	op := map[string]string{"<=": "≤", "<": "<", ">=": "≥", ">": ">"}[g.Op]
	s := fmt.Sprintf("%s %s", op, trimFloat(g.Target))
	if g.Ratio {
		s = "ratio " + s
	}
	if g.Note != "" {
		s += " (" + g.Note + ")"
	}
	return s
}
