// Command benchreport turns the outputs of FC's bench scripts into one report: a
// Markdown table of every figure beside its baseline, ratio and goal, an SVG plot of
// each over the runs of a history file, to which it appends this run. scripts/bench-all
// runs it; it can be run again on the outputs of a run:
//
//	go run ./scripts/benchreport -dir bin/bench/<run> [-quick] [-history FILE] bench-logs bench-eval ...
//
// reads <dir>/<script>.txt (the script's output) and <dir>/<script>.status (its exit
// status) for each script named, and writes <dir>/report.md and <dir>/svg/*.svg.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, time.Now()); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

type options struct {
	dir, history, commit string
	quick, dirty, noSave bool
	scripts              []string
}

func run(args []string, stdout io.Writer, now time.Time) error {
	var o options
	fs := flag.NewFlagSet("benchreport", flag.ContinueOnError)
	fs.StringVar(&o.dir, "dir", "", "the run's folder: <script>.txt and <script>.status in, report.md and svg/ out")
	fs.StringVar(&o.history, "history", "", "the history file (JSON lines) to plot from and append to")
	fs.StringVar(&o.commit, "commit", "", "the commit measured (default: git rev-parse --short HEAD)")
	fs.BoolVar(&o.quick, "quick", false, "the run used small sizes (compared only with other quick runs)")
	fs.BoolVar(&o.dirty, "dirty", false, "the work tree had uncommitted changes (default: asked of git)")
	fs.BoolVar(&o.noSave, "no-history", false, "do not append this run to the history")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o.scripts = fs.Args()
	if o.dir == "" || o.history == "" || len(o.scripts) == 0 {
		return errors.New("usage: benchreport -dir DIR -history FILE [-quick] SCRIPT...")
	}
	if o.commit == "" {
		o.commit, o.dirty = gitState()
	}
	r, err := collect(o, now.UTC())
	if err != nil {
		return err
	}
	history, err := ReadHistory(o.history)
	if err != nil {
		return err
	}
	md, err := write(o.dir, r, history)
	if err != nil {
		return err
	}
	if !o.noSave {
		if err := AppendHistory(o.history, r); err != nil {
			return err
		}
	}
	_, err = io.WriteString(stdout, md)
	return err
}

// collect reads the scripts' outputs into a Run.
func collect(o options, now time.Time) (Run, error) {
	r := Run{Date: now.Format(time.RFC3339), Commit: o.commit, Dirty: o.dirty, Quick: o.quick, NProc: runtime.NumCPU()}
	if l, ok := parseLoad(readFile("/proc/loadavg")); ok {
		r.Load = l
	}
	for _, s := range o.scripts {
		out, err := os.ReadFile(filepath.Join(o.dir, s+".txt"))
		if err != nil {
			return Run{}, fmt.Errorf("output of %s: %w", s, err)
		}
		res := ScriptResult{Name: s, Status: -1}
		if st, err := strconv.Atoi(strings.TrimSpace(readFile(filepath.Join(o.dir, s+".status")))); err == nil {
			res.Status = st
		}
		res.LoadBefore, res.LoadAfter = scriptLoad(string(out))
		figs := ParseGoBench(s, bytes.NewReader(out))
		if strings.Contains(s, "cache") && len(figs) == 0 {
			figs = ParseCacheReport(s, bytes.NewReader(out))
		}
		res.Figures = len(figs)
		r.Scripts = append(r.Scripts, res)
		r.Figures = append(r.Figures, figs...)
	}
	return r, nil
}

// write puts report.md and the plots in dir and returns the report.
func write(dir string, r Run, history []Run) (string, error) {
	svgDir := filepath.Join(dir, "svg")
	if err := os.MkdirAll(svgDir, 0o755); err != nil {
		return "", fmt.Errorf("report: %w", err)
	}
	all := append(append([]Run(nil), history...), r)
	for _, row := range Rows(r.Figures) {
		if err := os.WriteFile(filepath.Join(svgDir, SVGName(row)), SVG(row, Series(row.Key(), all)), 0o644); err != nil {
			return "", fmt.Errorf("report: %w", err)
		}
	}
	md := Markdown(r, history, "svg")
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(md), 0o644); err != nil {
		return "", fmt.Errorf("report: %w", err)
	}
	return md, nil
}

var loadLine = regexp.MustCompile(`load average[^:\d\n]*: ([\d.]+),? ([\d.]+),? ([\d.]+)`)

// scriptLoad is the first and last load average a script printed.
func scriptLoad(out string) (before, after *[3]float64) {
	all := loadLine.FindAllStringSubmatch(out, -1)
	if len(all) == 0 {
		return nil, nil
	}
	parse := func(m []string) *[3]float64 {
		l, _ := parseLoad(strings.Join(m[1:], " "))
		return &l
	}
	if len(all) == 1 { // a script that did not finish printed no "after"
		return parse(all[0]), nil
	}
	return parse(all[0]), parse(all[len(all)-1])
}

// parseLoad reads the first three fields of /proc/loadavg's format.
func parseLoad(s string) ([3]float64, bool) {
	var l [3]float64
	f := strings.Fields(s)
	if len(f) < 3 {
		return l, false
	}
	for i := range l {
		v, err := strconv.ParseFloat(strings.TrimSuffix(f[i], ","), 64)
		if err != nil {
			return l, false
		}
		l[i] = v
	}
	return l, true
}

func readFile(name string) string {
	b, _ := os.ReadFile(name)
	return string(b)
}

// gitState is the short commit of HEAD and whether the work tree differs from it.
func gitState() (string, bool) {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown", false
	}
	dirty := exec.Command("git", "diff", "--quiet", "HEAD", "--").Run() != nil
	return strings.TrimSpace(string(out)), dirty
}
