package main

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func figMap(figs []Figure) map[string]Figure {
	m := map[string]Figure{}
	for _, f := range figs {
		m[f.Bench+" "+f.Metric] = f
	}
	return m
}

func openTestdata(t *testing.T, name string) *os.File {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// Real `go test -bench` output: -count 2, then -v; sub-benchmarks (one named page-2,
// like the -GOMAXPROCS suffix); a line printed by the benchmark between its name and
// its figures; ns/op dropped where the benchmark reports figures of its own.
func TestParseGoBench_RealOutput(t *testing.T) {
	figs := ParseGoBench("bench-x", openTestdata(t, "sample-count2-and-v.txt"))
	m := figMap(figs)
	want := map[string]struct {
		v    float64
		runs int
	}{
		"Whole p50-ms":                {12.5, 3},
		"Whole p99-ms":                {48.25, 3},
		"Whole nix-p99-ms":            {40, 3},
		"List/default default-p99-ms": {3.5, 3},
		"List/page-2 page-2-p99-ms":   {3.5, 3},
	}
	for k, w := range want {
		f, ok := m[k]
		if !ok {
			t.Errorf("no figure %q; got %v", k, figs)
			continue
		}
		if f.Value != w.v || f.Runs != w.runs || f.Script != "bench-x" {
			t.Errorf("%s = %+v, want %v over %d runs", k, f, w.v, w.runs)
		}
	}
	if len(figs) != len(want) {
		t.Errorf("%d figures, want %d (no ns/op beside reported figures): %v", len(figs), len(want), figs)
	}
}

// A real run of scripts/bench-logs' throughput benchmark (with -v: its log lines).
func TestParseGoBench_BenchLogs(t *testing.T) {
	m := figMap(ParseGoBench("bench-logs", openTestdata(t, "bench-logs-throughput.txt")))
	for _, k := range []string{"LogThroughput100 build-MB/s", "LogThroughput100 build-no-tailer-MB/s",
		"LogThroughput100 tailer-median-MB/s", "LogThroughput100 tailer-slowest-MB/s"} {
		if f, ok := m[k]; !ok || f.Value <= 0 {
			t.Errorf("%s: %+v (found %v)", k, f, ok)
		}
	}
}

func TestParseGoBench_AveragesAndKeepsOnlyNsOp(t *testing.T) {
	out := "BenchmarkA-8 \t 100\t 2000 ns/op\n" +
		"BenchmarkA-8 \t 100\t 4000 ns/op\n" +
		"BenchmarkB \t 1\t 1.5e+03 x/s\t 2 y\n" +
		"BenchmarkBroken 1 oops ns/op\n" +
		"ok  \tpkg\t1.0s\n"
	m := figMap(ParseGoBench("s", strings.NewReader(out)))
	if f := m["A ns/op"]; f.Value != 3000 || f.Runs != 2 {
		t.Errorf("A = %+v", f)
	}
	if m["B x/s"].Value != 1500 || m["B y"].Value != 2 {
		t.Errorf("B = %+v %+v", m["B x/s"], m["B y"])
	}
	if len(m) != 3 {
		t.Errorf("figures: %v", m)
	}
}

func TestParseCacheReport(t *testing.T) {
	m := figMap(ParseCacheReport("bench-cache", openTestdata(t, "bench-cache-format.txt")))
	want := map[string]float64{
		"CacheNarinfo fc-req/s": 24012, "CacheNarinfo nginx-req/s": 31990, "CacheNarinfo fc-p99-ms": 4.10,
		"CacheNarinfo nginx-p99-ms": 3.02, "CacheNAR/c1 fc-MB/s": 702, "CacheNAR/c16 nginx-MB/s": 1810,
		"CachePush fc-s": 0.59, "CachePush nix-copy-s": 0.59, "CachePush nix-copy-sync-s": 0.80,
	}
	for k, v := range want {
		if m[k].Value != v {
			t.Errorf("%s = %v, want %v", k, m[k].Value, v)
		}
	}
	if len(m) != 13 {
		t.Errorf("%d figures: %v", len(m), m)
	}
}

func TestRows_BaselinesGoalsAndRatios(t *testing.T) {
	figs := []Figure{
		{Bench: "LogThroughput100", Metric: "build-MB/s", Value: 8.5},
		{Bench: "LogThroughput100", Metric: "build-no-tailer-MB/s", Value: 10},
		{Bench: "LogLatency", Metric: "p99-ms", Value: 120},
		{Bench: "LogLatency", Metric: "nix-p99-ms", Value: 30},
		{Bench: "TriggerToGraph10k", Metric: "fc-s/op", Value: 4},
		{Bench: "TriggerToGraph10k", Metric: "nix-instantiate-s/op", Value: 5},
		{Bench: "ListBuilds1M", Metric: "jobset-p99-ms", Value: 12},
		{Bench: "Queue100k", Metric: "steps/s", Value: 900},
	}
	rows := Rows(figs)
	byKey := map[string]Row{}
	for _, r := range rows {
		byKey[r.Key()] = r
	}
	check := func(key string, ratio float64, met, hasGoal bool) {
		t.Helper()
		r, ok := byKey[key]
		if !ok {
			t.Fatalf("no row %q in %v", key, rows)
		}
		if got := r.Ratio(); !(math.IsNaN(ratio) && math.IsNaN(got)) && math.Abs(got-ratio) > 1e-9 {
			t.Errorf("%s ratio %v, want %v", key, got, ratio)
		}
		if m, ok := r.Met(); ok != hasGoal || m != met {
			t.Errorf("%s met %v (goal %v), want %v (%v)", key, m, ok, met, hasGoal)
		}
	}
	check("LogThroughput100 build-MB/s vs build-no-tailer-MB/s", 0.85, true, true)
	check("LogLatency p99-ms vs nix-p99-ms", 4, false, true) // the goal is on the figure: < 100 ms
	check("TriggerToGraph10k fc-s/op vs nix-instantiate-s/op", 0.8, true, true)
	check("TriggerToGraph10k fc-s/op vs nix-instantiate-tmpfs-s/op", math.NaN(), false, false) // baseline missing
	check("ListBuilds1M jobset-p99-ms", math.NaN(), true, true)                                // a pattern's goal
	check("Queue100k steps/s", math.NaN(), false, false)
	for _, r := range rows {
		if r.Metric == "build-no-tailer-MB/s" || r.Metric == "nix-p99-ms" || r.Metric == "nix-instantiate-s/op" {
			t.Errorf("a baseline has a row of its own: %+v", r)
		}
	}
}

func TestMarkdown_Table(t *testing.T) {
	prev := Run{Date: "2026-12-06T10:00:00Z", Commit: "aaa", Figures: []Figure{
		{Bench: "LogThroughput100", Metric: "build-MB/s", Value: 1.4}, {Bench: "LogThroughput100", Metric: "build-no-tailer-MB/s", Value: 9.9}}}
	load := [3]float64{1.5, 2, 2.25}
	run := Run{Date: "2026-12-07T10:00:00Z", Commit: "bbb", Dirty: true, NProc: 2, Load: load,
		Scripts: []ScriptResult{{Name: "bench-logs", Status: 0, LoadBefore: &load, Figures: 3}},
		Figures: []Figure{
			{Bench: "LogThroughput100", Metric: "build-MB/s", Value: 9.1},
			{Bench: "LogThroughput100", Metric: "build-no-tailer-MB/s", Value: 10},
			{Bench: "LogLatency", Metric: "p99-ms", Value: 140},
			{Bench: "Odd|Name", Metric: "x", Value: 0.000123},
		}}
	md := Markdown(run, []Run{prev}, "svg")
	for _, want := range []string{
		"Commit bbb + local changes; full run; 2 CPUs; load average 1.50 2.00 2.25",
		"| bench-logs | 0 | 1.50 2.00 2.25 | – | 3 |",
		"| benchmark | metric | value | baseline | ratio | goal | met? | last run |",
		"| LogThroughput100 | build-MB/s | 9.1 | 10 build-no-tailer-MB/s | 0.91 | ratio ≥ 0.8 (100 viewers cost the build ≤ 20%) | yes | ratio 0.141 |",
		"| LogLatency | p99-ms | 140 |  |  | < 100 | **NO** | – |",
		`| Odd\|Name | x | 0.000123 |`,
		"![LogThroughput100 build-MB/s vs build-no-tailer-MB/s](svg/LogThroughput100_build-MB_s_vs_build-no-tailer-MB_s.svg)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	// Every row of the figures' table has the header's 8 cells.
	_, table, _ := strings.Cut(md, "| benchmark |")
	table, _, _ = strings.Cut(table, "\n\n")
	for _, line := range strings.Split(table, "\n")[1:] {
		if n := strings.Count(line, "|") - strings.Count(line, `\|`); n != 9 {
			t.Errorf("row with %d cells, want 8: %q", n-1, line)
		}
	}
}

// wellFormed parses an SVG with encoding/xml and counts its elements by name.
func wellFormed(t *testing.T, svg []byte) map[string]int {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(svg))
	counts := map[string]int{}
	depth := 0
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("SVG not well-formed: %v\n%s", err, svg)
		}
		switch e := tok.(type) {
		case xml.StartElement:
			if depth == 0 && (e.Name.Local != "svg" || e.Name.Space != "http://www.w3.org/2000/svg") {
				t.Errorf("root element %v", e.Name)
			}
			depth++
			counts[e.Name.Local]++
		case xml.EndElement:
			depth--
		}
	}
	if depth != 0 {
		t.Errorf("unbalanced SVG")
	}
	return counts
}

func TestSVG_WellFormedWithGoalAndPoints(t *testing.T) {
	row := Row{Bench: "LogThroughput100", Metric: "build-MB/s", BaselineMetric: "build-no-tailer-MB/s", HasBaseline: true,
		Value: 9, Baseline: 10, Goal: goalsFor("LogThroughput100", "build-MB/s")[0]}
	pts := []Point{{"2026-12-06T10:00:00Z", "a<b&c", 0.14}, {"2026-12-07T10:00:00Z", "bbb", 0.9}, {"2026-12-08T10:00:00Z", "ccc", 0.85}}
	counts := wellFormed(t, SVG(row, pts))
	if counts["circle"] != 3 || counts["polyline"] != 1 {
		t.Errorf("elements: %v", counts)
	}
	if !bytes.Contains(SVG(row, pts), []byte(`stroke-dasharray`)) {
		t.Error("no goal line")
	}
	// One point, and none: still well-formed.
	wellFormed(t, SVG(row, pts[:1]))
	if c := wellFormed(t, SVG(Row{Bench: "Odd \"<&>\"", Metric: "x"}, nil)); c["circle"] != 0 {
		t.Errorf("empty plot: %v", c)
	}
	// Equal values do not divide by zero.
	flat := SVG(Row{Bench: "Flat", Metric: "x"}, []Point{{"d", "c", 5}, {"d", "c", 5}})
	wellFormed(t, flat)
	if bytes.Contains(flat, []byte("NaN")) || bytes.Contains(flat, []byte("Inf")) {
		t.Errorf("flat plot has NaN/Inf:\n%s", flat)
	}
}

func TestHistory_AppendReadAndSeries(t *testing.T) {
	file := filepath.Join(t.TempDir(), "sub", "history.jsonl")
	if runs, err := ReadHistory(file); err != nil || runs != nil {
		t.Fatalf("missing history: %v %v", runs, err)
	}
	mk := func(date string, quick bool, v float64) Run {
		return Run{Date: date, Commit: "c" + date[8:10], Quick: quick, NProc: 2, Figures: []Figure{
			{Script: "bench-logs", Bench: "LogThroughput100", Metric: "build-MB/s", Value: v, Runs: 1},
			{Script: "bench-logs", Bench: "LogThroughput100", Metric: "build-no-tailer-MB/s", Value: 10, Runs: 1}}}
	}
	for _, r := range []Run{mk("2026-12-01T00:00:00Z", false, 2), mk("2026-12-02T00:00:00Z", true, 5), mk("2026-12-03T00:00:00Z", false, 9)} {
		if err := AppendHistory(file, r); err != nil {
			t.Fatal(err)
		}
	}
	runs, err := ReadHistory(file)
	if err != nil || len(runs) != 3 {
		t.Fatalf("read back %d runs: %v", len(runs), err)
	}
	if runs[2].Figures[0].Value != 9 || !runs[1].Quick || runs[0].NProc != 2 {
		t.Errorf("runs read back: %+v", runs)
	}
	raw, _ := os.ReadFile(file)
	if n := bytes.Count(raw, []byte("\n")); n != 3 {
		t.Errorf("%d lines, want one per run", n)
	}
	pts := Series("LogThroughput100 build-MB/s vs build-no-tailer-MB/s", runs)
	if len(pts) != 2 || pts[0].Value != 0.2 || pts[1].Value != 0.9 || pts[1].Commit != "c03" {
		t.Errorf("full-run series (the quick run left out): %+v", pts)
	}
	// A damaged line is an error, not a silently shorter history.
	if err := os.WriteFile(file, append(raw, "{not json\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadHistory(file); err == nil || !strings.Contains(err.Error(), "line 4") {
		t.Errorf("damaged history: %v", err)
	}
}

// The whole program on a run folder: report.md, one plot per row, the run appended.
func TestRun_WritesReportPlotsAndHistory(t *testing.T) {
	dir := t.TempDir()
	raw, err := os.ReadFile(filepath.Join("testdata", "bench-logs-throughput.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bench-logs.txt"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bench-logs.status"), []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hist := filepath.Join(dir, "history.jsonl")
	var out bytes.Buffer
	day := time.Date(2026, 12, 7, 4, 0, 0, 0, time.UTC)
	for i := 0; i < 2; i++ {
		out.Reset()
		args := []string{"-dir", dir, "-history", hist, "-commit", "abc", "-quick", "bench-logs"}
		if err := run(args, &out, day.Add(time.Duration(i)*time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if !strings.Contains(out.String(), "| LogThroughput100 | build-MB/s |") || !strings.Contains(out.String(), "quick") {
		t.Errorf("report:\n%s", out.String())
	}
	md, _ := os.ReadFile(filepath.Join(dir, "report.md"))
	if string(md) != out.String() {
		t.Error("report.md differs from what was printed")
	}
	runs, err := ReadHistory(hist)
	if err != nil || len(runs) != 2 || runs[0].Scripts[0].LoadBefore == nil || runs[0].Commit != "abc" {
		t.Fatalf("history: %+v %v", runs, err)
	}
	svgs, _ := filepath.Glob(filepath.Join(dir, "svg", "*.svg"))
	if len(svgs) != len(Rows(runs[1].Figures)) || len(svgs) == 0 {
		t.Errorf("%d plots for %d rows", len(svgs), len(Rows(runs[1].Figures)))
	}
	for _, f := range svgs {
		raw, _ := os.ReadFile(f)
		if c := wellFormed(t, raw); c["circle"] != 2 {
			t.Errorf("%s: %d points, want the 2 runs", f, c["circle"])
		}
	}
	if err := run([]string{"-dir", dir, "-history", hist, "missing"}, io.Discard, day); err == nil {
		t.Error("a script without output was accepted")
	}
}
