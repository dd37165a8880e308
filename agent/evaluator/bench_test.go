package evaluator

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"
)

// BenchmarkEvaluate10k evaluates a release.nix of 10,000 trivial derivations and walks
// their graph (Evaluate + Graph, nothing cached), against nix-instantiate of the same
// expression in the same run. Every run uses fresh salts on both sides, since writing
// the .drv files dominates.
func BenchmarkEvaluate10k(b *testing.B) {
	needNix(b)
	for _, workers := range []int{1, 2} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) { benchmarkEvaluate(b, 10000, workers) })
	}
}

func benchmarkEvaluate(b *testing.B, n, workers int) {
	ctx := context.Background()
	dir := b.TempDir()
	none := func(_ context.Context, paths []string) (map[string]bool, error) { return map[string]bool{}, nil }
	var fc, inst, evalOnly time.Duration
	var fcRuns, instRuns []time.Duration
	runs := 0
	for b.Loop() {
		s := salt(b)
		for name, sa := range map[string]string{"fc.nix": "fc-" + s, "inst.nix": "inst-" + s} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(TrivialJobset(n, sa)), 0o644); err != nil {
				b.Fatal(err)
			}
		}
		measureFC := func() {
			start := time.Now()
			res, err := Evaluate(ctx, dir, Request{Expression: "fc.nix", Workers: workers})
			if err != nil {
				b.Fatal(err)
			}
			evalOnly += time.Since(start)
			nodes, err := Graph(ctx, res.Jobs, none)
			if err != nil {
				b.Fatal(err)
			}
			fc += time.Since(start)
			fcRuns = append(fcRuns, time.Since(start))
			if len(res.Jobs) != n || len(nodes) != n {
				b.Fatalf("%d jobs, %d nodes", len(res.Jobs), len(nodes))
			}
		}
		measureInst := func() {
			start := time.Now()
			cmd := exec.Command("nix-instantiate", "--option", "substituters", "", filepath.Join(dir, "inst.nix"))
			if out, err := cmd.Output(); err != nil {
				b.Fatalf("nix-instantiate: %v%s", err, stderrOf(err))
			} else if len(out) == 0 {
				b.Fatal("nix-instantiate printed nothing")
			}
			inst += time.Since(start)
			instRuns = append(instRuns, time.Since(start))
		}
		// Alternate which goes first, so neither always finds a warmer cache.
		if runs%2 == 0 {
			measureFC()
			measureInst()
		} else {
			measureInst()
			measureFC()
		}
		runs++
	}
	per := func(d time.Duration) float64 { return d.Seconds() / float64(runs) }
	b.ReportMetric(per(fc), "fc-s/op")
	b.ReportMetric(per(evalOnly), "evaluate-s/op")
	b.ReportMetric(per(inst), "nix-instantiate-s/op")
	b.ReportMetric(fc.Seconds()/inst.Seconds(), "ratio")
	b.ReportMetric(median(fcRuns).Seconds()/median(instRuns).Seconds(), "median-ratio")
	b.Logf("%d derivations, %d workers, %d runs: Evaluate+Graph mean %.2fs median %.2fs (Evaluate mean %.2fs), "+
		"nix-instantiate mean %.2fs median %.2fs; ratio of means %.2f, of medians %.2f",
		n, workers, runs, per(fc), median(fcRuns).Seconds(), per(evalOnly), per(inst), median(instRuns).Seconds(),
		fc.Seconds()/inst.Seconds(), median(fcRuns).Seconds()/median(instRuns).Seconds())
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration{}, d...)
	sort.Slice(s, func(a, b int) bool { return s[a] < s[b] })
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}
