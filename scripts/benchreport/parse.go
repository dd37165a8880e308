package main

import (
	"bufio"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// Figure is one reported metric of one benchmark: every "<value> <unit>" pair of a
// `go test -bench` result line (b.ReportMetric's, and ns/op when nothing else is).
type Figure struct {
	Script string  `json:"script"` // the bench script whose output it came from
	Bench  string  `json:"bench"`  // without "Benchmark" and the -GOMAXPROCS suffix
	Metric string  `json:"metric"` // the unit as reported, e.g. "p99-ms", "build-MB/s"
	Value  float64 `json:"value"`  // the mean over the runs (-count) in this output
	Runs   int     `json:"runs,omitempty"`
}

var (
	// A result line: name (with an optional -N suffix), iterations, then pairs.
	resultLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+(\d+)\s+(.*)$`)
	// A line that starts with a benchmark's name: its result may follow on a later
	// line when the benchmark (or a process it ran) printed in between.
	nameLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?(?:\s|$)`)
	// The rest of a result printed on its own line.
	bareResult = regexp.MustCompile(`^\s*(\d+)\s+(.*)$`)
)

// ParseGoBench reads `go test -bench` output (other lines are ignored) and returns
// its figures in the order first seen, the repeats of -count averaged.
func ParseGoBench(script string, r io.Reader) []Figure {
	type key struct{ bench, metric string }
	var order []key
	sums := map[key]*Figure{}
	add := func(bench string, pairs []pair) {
		for _, p := range pairs {
			k := key{bench, p.unit}
			f, ok := sums[k]
			if !ok {
				f = &Figure{Script: script, Bench: bench, Metric: p.unit}
				sums[k] = f
				order = append(order, k)
			}
			f.Value += p.value
			f.Runs++
		}
	}
	pending := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), " \t\r")
		if m := resultLine.FindStringSubmatch(line); m != nil {
			if pairs, ok := parsePairs(m[3]); ok {
				add(benchName(m[1]), pairs)
				pending = ""
				continue
			}
		}
		if m := nameLine.FindStringSubmatch(line); m != nil {
			pending = benchName(m[1])
			continue
		}
		if pending != "" {
			if m := bareResult.FindStringSubmatch(line); m != nil {
				if pairs, ok := parsePairs(m[2]); ok {
					add(pending, pairs)
					pending = ""
				}
			}
		}
	}
	out := make([]Figure, 0, len(order))
	for _, k := range order {
		f := *sums[k]
		f.Value /= float64(f.Runs)
		out = append(out, f)
	}
	return out
}

type pair struct {
	value float64
	unit  string
}

// parsePairs reads "<value> <unit>" pairs; ns/op is kept only when it is the only
// figure (whole-measurement benchmarks report their own, and zero it).
func parsePairs(s string) ([]pair, bool) {
	f := strings.Fields(s)
	if len(f) < 2 || len(f)%2 != 0 {
		return nil, false
	}
	var pairs []pair
	for i := 0; i < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return nil, false
		}
		pairs = append(pairs, pair{v, f[i+1]})
	}
	if len(pairs) > 1 {
		kept := pairs[:0]
		for _, p := range pairs {
			if p.unit != "ns/op" {
				kept = append(kept, p)
			}
		}
		pairs = kept
	}
	return pairs, true
}

func benchName(s string) string { return strings.TrimPrefix(s, "Benchmark") }
