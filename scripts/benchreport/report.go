package main

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
)

// Row is one line of the report's table: a figure, against one baseline and goal.
type Row struct {
	Script, Bench, Metric string
	Value                 float64
	BaselineMetric        string
	Baseline              float64
	HasBaseline           bool
	Goal                  Goal
}

// Ratio is value/baseline (NaN without a baseline).
func (r Row) Ratio() float64 {
	if !r.HasBaseline || r.Baseline == 0 {
		return math.NaN()
	}
	return r.Value / r.Baseline
}

// Plotted is what the row's plot follows over runs: the ratio where there is a
// baseline (figures of different runs compare only through their own run's
// baseline), else the figure.
func (r Row) Plotted() float64 {
	if r.HasBaseline {
		return r.Ratio()
	}
	return r.Value
}

// Met says whether the row meets its goal; ok is false without a goal (or without
// the baseline a ratio goal needs).
func (r Row) Met() (met, ok bool) {
	x := r.Value
	if r.Goal.Ratio {
		if x = r.Ratio(); math.IsNaN(x) {
			return false, false
		}
	}
	return r.Goal.met(x)
}

// Key names the row across runs (and its plot's file).
func (r Row) Key() string {
	k := r.Bench + " " + r.Metric
	if r.BaselineMetric != "" {
		k += " vs " + r.BaselineMetric
	}
	return k
}

// Rows are the report's rows for figs. A figure that is only another's baseline gets
// no row of its own: it shows in that row's baseline column.
func Rows(figs []Figure) []Row {
	type key struct{ bench, metric string }
	byKey := map[key]Figure{}
	for _, f := range figs {
		byKey[key{f.Bench, f.Metric}] = f
	}
	isBaseline := map[key]bool{}
	for _, f := range figs {
		for _, g := range goalsFor(f.Bench, f.Metric) {
			if _, ok := byKey[key{f.Bench, g.Baseline}]; ok && g.Baseline != "" {
				isBaseline[key{f.Bench, g.Baseline}] = true
			}
		}
	}
	var rows []Row
	for _, f := range figs {
		gs := goalsFor(f.Bench, f.Metric)
		if len(gs) == 0 {
			if isBaseline[key{f.Bench, f.Metric}] {
				continue
			}
			gs = []Goal{{}}
		}
		for _, g := range gs {
			r := Row{Script: f.Script, Bench: f.Bench, Metric: f.Metric, Value: f.Value, Goal: g}
			if g.Baseline != "" {
				r.BaselineMetric = g.Baseline
				if b, ok := byKey[key{f.Bench, g.Baseline}]; ok {
					r.Baseline, r.HasBaseline = b.Value, true
				}
			}
			rows = append(rows, r)
		}
	}
	return rows
}

// Markdown is the report of run, with each row's plotted figure of the previous
// comparable run (same quickness) beside it and links to the plots in svgDir.
func Markdown(run Run, history []Run, svgDir string) string {
	var b strings.Builder
	kind := "full"
	if run.Quick {
		kind = "quick (small sizes: figures compare only with other quick runs)"
	}
	commit := run.Commit
	if run.Dirty {
		commit += " + local changes"
	}
	fmt.Fprintf(&b, "# FC benchmarks, %s\n\n", run.Date)
	fmt.Fprintf(&b, "Commit %s; %s run; %d CPUs; load average %s when the report was written.\n\n",
		commit, kind, run.NProc, loadString(&run.Load))
	b.WriteString("| script | exit | load average before | after | figures |\n|---|---|---|---|---|\n")
	for _, s := range run.Scripts {
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %d |\n", s.Name, s.Status, loadString(s.LoadBefore), loadString(s.LoadAfter), s.Figures)
	}
	prev := previousRows(run, history)
	b.WriteString("\n| benchmark | metric | value | baseline | ratio | goal | met? | last run |\n|---|---|---|---|---|---|---|---|\n")
	rows := Rows(run.Figures)
	for _, r := range rows {
		base, ratio := "", ""
		if r.BaselineMetric != "" {
			if r.Goal.Ratio && r.Goal.Op != "" { // the goal cannot be judged without it
				base = "– (" + r.BaselineMetric + " missing)"
			}
			if r.HasBaseline {
				base = trimFloat(r.Baseline) + " " + r.BaselineMetric
				ratio = trimFloat(r.Ratio())
			}
		}
		metS := ""
		if met, ok := r.Met(); ok {
			metS = map[bool]string{true: "yes", false: "**NO**"}[met]
		}
		last := "–"
		if p, ok := prev[r.Key()]; ok {
			last = trimFloat(p)
			if r.HasBaseline {
				last = "ratio " + last
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n",
			cell(r.Bench), cell(r.Metric), trimFloat(r.Value), cell(base), ratio, cell(r.Goal.String()), metS, last)
	}
	if len(rows) == 0 {
		b.WriteString("| (no figures) | | | | | | | |\n")
	}
	if len(rows) > 0 {
		b.WriteString("\nEach plot follows one row over the runs of the history (the ratio where the row has a baseline, else the figure; the dashed line is the goal):\n\n")
		for _, r := range rows {
			fmt.Fprintf(&b, "![%s](%s/%s)\n", r.Key(), svgDir, SVGName(r))
		}
	}
	return b.String()
}

// previousRows maps row keys to their plotted figure in the last earlier run of the
// same quickness.
func previousRows(run Run, history []Run) map[string]float64 {
	out := map[string]float64{}
	for i := len(history) - 1; i >= 0; i-- {
		h := history[i]
		if h.Quick != run.Quick || h.Date == run.Date {
			continue
		}
		for _, r := range Rows(h.Figures) {
			if v := r.Plotted(); !math.IsNaN(v) {
				out[r.Key()] = v
			}
		}
		break
	}
	return out
}

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// SVGName is the file name of a row's plot.
func SVGName(r Row) string { return unsafeName.ReplaceAllString(r.Key(), "_") + ".svg" }

func loadString(l *[3]float64) string {
	if l == nil {
		return "–"
	}
	return fmt.Sprintf("%.2f %.2f %.2f", l[0], l[1], l[2])
}

// cell keeps a table cell on its row: a "|" would end it.
func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

// trimFloat shows a figure with about three significant digits.
func trimFloat(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	a := math.Abs(v)
	prec := 0
	switch {
	case a == 0 || a >= 100:
		prec = 0
	case a >= 10:
		prec = 1
	case a >= 1:
		prec = 2
	default:
		prec = min(2-int(math.Floor(math.Log10(a))), 9)
	}
	s := strconv.FormatFloat(v, 'f', prec, 64)
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}
