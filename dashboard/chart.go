package dashboard

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/fc-ci/fc/storage"
)

// A job's charts, drawn on the server as inline SVG (no script, nothing to load):
// one point per finished build, oldest on the left, coloured by its status, with
// the build in its title and a link to it. Colours come from browse.css, so they
// follow the page's scheme.

// chart is what the "chart" template draws, in the SVG's own units.
type chart struct {
	Title, Label        string
	W, H, Left, Right   int
	Top, Bottom         int
	Line                string // the polyline's points
	Points              []chartDot
	YTicks              []chartTick
	FirstDate, LastDate string
}

type chartDot struct {
	X, Y              string
	URL, Label, Class string
}

type chartTick struct {
	Y     string
	Label string
}

// chartSeries is one value per build (negative: unknown, left out).
type chartSeries struct {
	title, what string
	value       func(storage.ChartPoint) float64
	format      func(float64) string
}

func durationChart(ps []storage.ChartPoint) chart {
	return drawChart(ps, chartSeries{title: "Build duration", what: "durations",
		value:  func(p storage.ChartPoint) float64 { return p.Seconds },
		format: func(v float64) string { return roundDuration(time.Duration(v * float64(time.Second))) }})
}

func sizeChart(ps []storage.ChartPoint) chart {
	return drawChart(ps, chartSeries{title: "Output size", what: "output sizes",
		value:  func(p storage.ChartPoint) float64 { return float64(p.OutputBytes) },
		format: func(v float64) string { return humanBytes(v) }})
}

func drawChart(ps []storage.ChartPoint, s chartSeries) chart {
	c := chart{Title: s.title, W: 600, H: 200, Left: 70, Right: 590, Top: 10, Bottom: 170}
	var known []storage.ChartPoint
	top := 0.0
	for _, p := range ps {
		if v := s.value(p); v >= 0 {
			known = append(known, p)
			top = max(top, v)
		}
	}
	if len(known) == 0 {
		return c
	}
	top = niceCeil(top)
	x := func(i int) float64 {
		if len(known) == 1 {
			return float64(c.Left+c.Right) / 2
		}
		return float64(c.Left) + float64(i)*float64(c.Right-c.Left)/float64(len(known)-1)
	}
	y := func(v float64) float64 { return float64(c.Bottom) - v/top*float64(c.Bottom-c.Top) }
	line := make([]string, 0, len(known))
	for i, p := range known {
		v := s.value(p)
		px, py := num(x(i)), num(y(v))
		line = append(line, px+","+py)
		c.Points = append(c.Points, chartDot{X: px, Y: py, URL: "/build/" + strconv.FormatInt(p.BuildID, 10),
			Label: fmt.Sprintf("build %d (%s): %s", p.BuildID, p.Status, s.format(v)), Class: statusClass(p.Status)})
	}
	c.Line = strings.Join(line, " ")
	for _, f := range []float64{0, .5, 1} {
		c.YTicks = append(c.YTicks, chartTick{Y: num(y(top * f)), Label: s.format(top * f)})
	}
	c.FirstDate = known[0].FinishedAt.UTC().Format("2006-01-02")
	c.LastDate = known[len(known)-1].FinishedAt.UTC().Format("2006-01-02")
	c.Label = fmt.Sprintf("%s of the last %d builds, from %s to %s", s.what, len(known), s.format(0), s.format(top))
	return c
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten, so the axis reads well.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func num(f float64) string { return strconv.FormatFloat(f, 'f', 1, 64) }

// badge is a "label | message" SVG badge, coloured by the message.
func badge(label, msg string) []byte {
	colour := "#9f9f9f"
	switch msg {
	case "passing":
		colour = "#2e7d32"
	case "failing":
		colour = "#c62828"
	}
	// Verdana at 11 px averages about 7 px a character.
	lw, mw := 7*len(label)+12, 7*len(msg)+12
	return fmt.Appendf(nil, `<svg xmlns="http://www.w3.org/2000/svg" width="%[1]d" height="20" role="img" aria-label="%[3]s: %[4]s">
<title>%[3]s: %[4]s</title>
<rect width="%[2]d" height="20" rx="3" fill="#555"/>
<rect x="%[2]d" width="%[5]d" height="20" rx="3" fill="%[6]s"/>
<rect x="%[2]d" width="4" height="20" fill="%[6]s"/>
<g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11">
<text x="%[7]d" y="14">%[3]s</text>
<text x="%[8]d" y="14">%[4]s</text>
</g>
</svg>
`, lw+mw, lw, label, msg, mw, colour, lw/2, lw+mw/2)
}
