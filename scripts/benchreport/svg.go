package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"strings"
)

// Point is one run's plotted figure.
type Point struct {
	Date, Commit string
	Value        float64
}

// Series is what the plot of the row named key shows: its plotted figure in every
// run of runs (oldest first) of the same quickness as the last, where the run has it.
func Series(key string, runs []Run) []Point {
	if len(runs) == 0 {
		return nil
	}
	quick := runs[len(runs)-1].Quick
	var pts []Point
	for _, run := range runs {
		if run.Quick != quick {
			continue
		}
		for _, r := range Rows(run.Figures) {
			if r.Key() == key {
				if v := r.Plotted(); !math.IsNaN(v) && !math.IsInf(v, 0) {
					pts = append(pts, Point{Date: run.Date, Commit: run.Commit, Value: v})
				}
				break
			}
		}
	}
	return pts
}

// Plot geometry, in SVG user units.
const (
	plotW, plotH           = 640, 260
	padL, padR, padT, padB = 64, 16, 40, 44
)

// SVG draws pts as a line over runs, with the goal's bound as a dashed line when the
// goal is on the plotted figure. Hand-written: a few elements, no library needed.
func SVG(r Row, pts []Point) []byte {
	var b bytes.Buffer
	title := r.Key()
	ylabel := r.Metric
	if r.HasBaseline {
		ylabel = "ratio to " + r.BaselineMetric
	}
	goal, hasGoal := r.Goal.Target, r.Goal.Op != "" && r.Goal.Ratio == r.HasBaseline
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, p := range pts {
		lo, hi = math.Min(lo, p.Value), math.Max(hi, p.Value)
	}
	if hasGoal {
		lo, hi = math.Min(lo, goal), math.Max(hi, goal)
	}
	if math.IsInf(lo, 0) {
		lo, hi = 0, 1
	}
	if lo > 0 && lo < hi/3 || lo == hi { // from zero when that costs little resolution
		lo = math.Min(lo, 0)
	}
	if hi == lo {
		hi = lo + 1
	}
	span := hi - lo
	hi += span * 0.08
	if lo != 0 {
		lo -= span * 0.08
	}
	x := func(i int) float64 {
		if len(pts) == 1 {
			return padL + (plotW-padL-padR)/2
		}
		return padL + float64(i)*(plotW-padL-padR)/float64(len(pts)-1)
	}
	y := func(v float64) float64 { return padT + (hi-v)/(hi-lo)*(plotH-padT-padB) }

	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n",
		plotW, plotH, plotW, plotH)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="#fff"/>`+"\n", plotW, plotH)
	fmt.Fprintf(&b, `<text x="%d" y="18" font-size="13" font-weight="bold">%s</text>`+"\n", padL, esc(title))
	fmt.Fprintf(&b, `<text x="%d" y="32" fill="#555">%s, %d runs</text>`+"\n", padL, esc(ylabel), len(pts))
	// Axes and five horizontal grid lines with their values.
	for i := 0; i <= 4; i++ {
		v := lo + (hi-lo)*float64(i)/4
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#e4e4e4"/>`+"\n", padL, plotW-padR, y(v), y(v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="#555">%s</text>`+"\n", padL-6, y(v)+4, esc(trimFloat(v)))
	}
	fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#888"/>`+"\n", padL, padL, padT, plotH-padB)
	fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="#888"/>`+"\n", padL, plotW-padR, plotH-padB, plotH-padB)
	if hasGoal {
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#c0392b" stroke-dasharray="6 4"/>`+"\n",
			padL, plotW-padR, y(goal), y(goal))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" fill="#c0392b">goal %s</text>`+"\n",
			plotW-padR, y(goal)-4, esc(r.Goal.String()))
	}
	if len(pts) > 1 {
		coords := make([]string, len(pts))
		for i, p := range pts {
			coords[i] = fmt.Sprintf("%.1f,%.1f", x(i), y(p.Value))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="#2c6fbb" stroke-width="2" points="%s"/>`+"\n", strings.Join(coords, " "))
	}
	for i, p := range pts {
		fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="#2c6fbb"><title>%s</title></circle>`+"\n",
			x(i), y(p.Value), esc(fmt.Sprintf("%s %s: %s", p.Date, p.Commit, trimFloat(p.Value))))
	}
	if len(pts) == 0 {
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle" fill="#555">no run has this figure yet</text>`+"\n", plotW/2, plotH/2)
	} else {
		first, last := pts[0], pts[len(pts)-1]
		fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#555">%s</text>`+"\n", padL, plotH-padB+16, esc(day(first.Date)+" "+first.Commit))
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end" fill="#555">%s</text>`+"\n", plotW-padR, plotH-padB+16,
			esc(day(last.Date)+" "+last.Commit+": "+trimFloat(last.Value)))
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

// day is the date part of an RFC 3339 time.
func day(s string) string {
	if i := strings.IndexByte(s, 'T'); i > 0 {
		return s[:i]
	}
	return s
}

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
