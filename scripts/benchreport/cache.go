package main

import (
	"bufio"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// scripts/bench-cache is a shell script with a table of its own, not `go test`
// output. ParseCacheReport turns the rows of that table into figures (FC and its
// baseline side by side). It is best effort: a row it does not recognise is left out,
// and once bench-cache prints `Benchmark…` lines, ParseGoBench reads those instead.
var (
	cacheRow = regexp.MustCompile(`^\s*(requests/s|p50 latency \(ms\)|p99 latency \(ms\)|MB/s, concurrency (\d+))\s+([\d.]+)\s+([\d.]+)(?:\s|$)`)
	pushRow  = regexp.MustCompile(`^\s*(fc-agent push|nix copy --to|nix copy, then sync)\D*?\s([\d.]+)\s+[\d.]+\s+[\d.]+\s`)
)

// ParseCacheReport reads bench-cache's printed report.
func ParseCacheReport(script string, r io.Reader) []Figure {
	var figs []Figure
	add := func(bench, metric, value string) {
		if v, err := strconv.ParseFloat(value, 64); err == nil {
			figs = append(figs, Figure{Script: script, Bench: bench, Metric: metric, Value: v, Runs: 1})
		}
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := cacheRow.FindStringSubmatch(line); m != nil {
			switch {
			case m[1] == "requests/s":
				add("CacheNarinfo", "fc-req/s", m[3])
				add("CacheNarinfo", "nginx-req/s", m[4])
			case strings.HasPrefix(m[1], "p50"):
				add("CacheNarinfo", "fc-p50-ms", m[3])
				add("CacheNarinfo", "nginx-p50-ms", m[4])
			case strings.HasPrefix(m[1], "p99"):
				add("CacheNarinfo", "fc-p99-ms", m[3])
				add("CacheNarinfo", "nginx-p99-ms", m[4])
			default:
				add("CacheNAR/c"+m[2], "fc-MB/s", m[3])
				add("CacheNAR/c"+m[2], "nginx-MB/s", m[4])
			}
			continue
		}
		if m := pushRow.FindStringSubmatch(line); m != nil {
			metric := map[string]string{"fc-agent push": "fc-s", "nix copy --to": "nix-copy-s", "nix copy, then sync": "nix-copy-sync-s"}[m[1]]
			add("CachePush", metric, m[2])
		}
	}
	return figs
}
