package evaluator

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
)

// errEvalJobsUnusable is a nix-eval-jobs too old for the flags FC needs.
var errEvalJobsUnusable = errors.New("nix-eval-jobs does not take the flags FC needs")

// runEvalJobs evaluates with nix-eval-jobs: --meta and --constituents always, Hydra's
// recursion for flakes (--force-recurse; a legacy file's nested sets need
// recurseForDerivations), the jobset inputs as --arg/--argstr.
func runEvalJobs(ctx context.Context, bin string, t *target) (rawResult, error) {
	gcRoots, err := os.MkdirTemp("", "fc-eval-gcroots-")
	if err != nil {
		return rawResult{}, err
	}
	defer os.RemoveAll(gcRoots)

	args := []string{"--workers", strconv.Itoa(max(t.workers, 1)), "--gc-roots-dir", gcRoots, "--meta", "--constituents"}
	if t.maxMemMB > 0 {
		args = append(args, "--max-memory-size", strconv.Itoa(t.maxMemMB))
	}
	for i := 0; i+1 < len(t.options); i += 2 {
		args = append(args, "--option", t.options[i], t.options[i+1])
	}
	for _, s := range t.search {
		args = append(args, "-I", s)
	}
	if t.evalStore != "" {
		args = append(args, "--eval-store", t.evalStore)
	}
	if t.flake {
		attr := t.attrPath
		if len(attr) == 0 {
			attr, err = flakeJobsAttr(ctx, t)
			if err != nil {
				return rawResult{}, err
			}
		}
		args = append(args, "--force-recurse", "--flake", t.flakeRef+"#"+joinAttrPath(attr))
	} else {
		args = append(args, t.file)
		for _, in := range t.inputs {
			if in.str {
				args = append(args, "--argstr", in.name, in.value)
			} else {
				args = append(args, "--arg", in.name, in.value)
			}
		}
	}

	cmd := exec.CommandContext(ctx, bin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return rawResult{}, err
	}
	var stderr tailBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return rawResult{}, fmt.Errorf("start nix-eval-jobs: %w", err)
	}
	var res rawResult
	var fatal []string
	feats := newFeatureReader(t.evalStore, t.onJob)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<16), 256<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		job, attrErr, err := parseEvalJobsLine(line)
		switch {
		case err != nil:
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			_ = feats.wait(nil)
			return rawResult{}, err
		case attrErr != nil && attrErr.Attr == "":
			fatal = append(fatal, attrErr.Message)
		case attrErr != nil:
			res.errors = append(res.errors, *attrErr)
		default:
			feats.add(len(res.jobs), job)
			res.jobs = append(res.jobs, rawJob{Job: job})
			t.onDrv(job.DrvPath)
		}
	}
	scanErr := sc.Err()
	waitErr := cmd.Wait()
	featErr := feats.wait(res.jobs)
	if ctx.Err() != nil {
		return rawResult{}, ctx.Err()
	}
	if scanErr != nil {
		return rawResult{}, fmt.Errorf("read nix-eval-jobs output: %w", scanErr)
	}
	if len(fatal) > 0 {
		return rawResult{}, fmt.Errorf("%w: %s", ErrEvalFailed, strings.Join(fatal, "\n"))
	}
	if waitErr != nil {
		msg := stderr.String()
		if len(res.jobs)+len(res.errors) == 0 && (strings.Contains(msg, "unrecognised flag") || strings.Contains(msg, "unrecognized flag")) {
			return rawResult{}, fmt.Errorf("%w: %s", errEvalJobsUnusable, strings.TrimSpace(msg))
		}
		return rawResult{}, fmt.Errorf("nix-eval-jobs: %w: %s", waitErr, errorMessage(strings.Split(msg, "\n")))
	}
	if featErr != nil {
		return rawResult{}, featErr
	}
	return res, nil
}

// flakeJobsAttr is hydraJobs when the flake has it, else checks.
func flakeJobsAttr(ctx context.Context, t *target) ([]string, error) {
	expr := "let f = builtins.getFlake " + nixString(t.flakeRef) + "; in if f ? hydraJobs then \"hydraJobs\" else if f ? checks then \"checks\" else null"
	cmd := exec.CommandContext(ctx, "nix", append(t.nixArgs("eval", "--raw"), "--expr", expr)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: %s", ErrEvalFailed, errorMessage(strings.Split(stderr.String(), "\n")))
	}
	switch s := strings.TrimSpace(string(out)); s {
	case "hydraJobs", "checks":
		return []string{s}, nil
	default:
		return nil, fmt.Errorf("%w: the flake has neither hydraJobs nor checks", ErrEvalFailed)
	}
}

// featureReader reads requiredSystemFeatures from jobs' derivations (nix-eval-jobs
// does not report them) as the jobs arrive, a few at a time, and passes each job that
// is not an aggregate on, complete, to onJob.
type featureReader struct {
	root  string
	onJob func(Job)
	sem   chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	feats map[int][]string // by the job's index in the result
	err   error
}

func newFeatureReader(root string, onJob func(Job)) *featureReader {
	return &featureReader{root: root, onJob: onJob, sem: make(chan struct{}, 8), feats: map[int][]string{}}
}

// add reads the features of job, the i-th of the result.
func (f *featureReader) add(i int, job Job) {
	f.wg.Go(func() {
		f.sem <- struct{}{}
		defer func() { <-f.sem }()
		d, err := readDrv(f.root, job.DrvPath)
		f.mu.Lock()
		if err != nil {
			f.err = cmp.Or(f.err, err)
		} else {
			f.feats[i] = d.features
		}
		f.mu.Unlock()
		if err == nil && !job.IsAggregate {
			job.RequiredSystemFeatures = d.features
			f.onJob(normalized(job))
		}
	})
}

// wait waits for every read and sets the jobs' features (jobs nil: drop them).
func (f *featureReader) wait(jobs []rawJob) error {
	f.wg.Wait()
	if f.err != nil || jobs == nil {
		return f.err
	}
	for i, feats := range f.feats {
		jobs[i].RequiredSystemFeatures = feats
	}
	return nil
}

// evalJobsLine is one line of nix-eval-jobs' output (JSON lines). A job has attr,
// attrPath, drvPath, name, system, outputs and, with --meta, meta; with
// --constituents an aggregate has constituents (drv paths) and, in versions that
// resolve them late, namedConstituents. A failed attribute has error.
type evalJobsLine struct {
	Attr              *string            `json:"attr"`
	AttrPath          []any              `json:"attrPath"`
	DrvPath           string             `json:"drvPath"`
	Name              string             `json:"name"`
	System            string             `json:"system"`
	Outputs           map[string]*string `json:"outputs"`
	Meta              map[string]any     `json:"meta"`
	Error             *string            `json:"error"`
	Constituents      []string           `json:"constituents"`
	NamedConstituents []string           `json:"namedConstituents"`
}

// parseEvalJobsLine reads one line of nix-eval-jobs output: a job, or an attribute
// that failed (an error line without an attribute is a failure of the whole
// expression: its Attr is "").
func parseEvalJobsLine(line []byte) (Job, *AttrError, error) {
	var l evalJobsLine
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	if err := dec.Decode(&l); err != nil {
		return Job{}, nil, fmt.Errorf("nix-eval-jobs output %.200q: %w", line, err)
	}
	attr := ""
	if len(l.AttrPath) > 0 {
		path := make([]string, len(l.AttrPath))
		for i, p := range l.AttrPath {
			switch p := p.(type) {
			case string:
				path[i] = p
			case json.Number:
				path[i] = p.String()
			default:
				return Job{}, nil, fmt.Errorf("nix-eval-jobs output %.200q: bad attrPath", line)
			}
		}
		attr = joinAttrPath(path)
	} else if l.Attr != nil {
		attr = *l.Attr
	}
	if l.Error != nil {
		return Job{}, &AttrError{Attr: attr, Message: errorMessage(strings.Split(strings.TrimSpace(*l.Error), "\n"))}, nil
	}
	if attr == "" || l.DrvPath == "" {
		return Job{}, nil, fmt.Errorf("nix-eval-jobs output %.200q: neither a job nor an error", line)
	}
	j := Job{
		Attr:                   attr,
		Name:                   l.Name,
		DrvPath:                l.DrvPath,
		System:                 l.System,
		Outputs:                map[string]string{},
		RequiredSystemFeatures: []string{},
	}
	for name, p := range l.Outputs {
		if p != nil {
			j.Outputs[name] = *p
		} else {
			j.Outputs[name] = "" // content-addressed: known after the build
		}
	}
	m := l.Meta
	if s, ok := m["description"].(string); ok {
		j.Meta.Description = s
	}
	j.Meta.License = licenseString(m["license"])
	switch h := m["homepage"].(type) {
	case string:
		j.Meta.Homepage = h
	case []any:
		if len(h) > 0 {
			j.Meta.Homepage, _ = h[0].(string)
		}
	}
	j.Meta.Timeout = jsonInt(m["timeout"])
	j.Meta.MaxSilent = jsonInt(m["maxSilent"])
	j.Meta.SchedulingPriority = jsonInt(m["schedulingPriority"])
	if len(l.Constituents)+len(l.NamedConstituents) > 0 {
		j.IsAggregate = true
		j.Constituents = append(append([]string{}, l.Constituents...), l.NamedConstituents...)
	}
	return j, nil, nil
}

func jsonInt(v any) int {
	if n, ok := v.(json.Number); ok {
		if i, err := n.Int64(); err == nil {
			return int(i)
		}
		if f, err := n.Float64(); err == nil {
			return int(f)
		}
	}
	return 0
}

// tailBuffer keeps the last 64 KiB written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > 64<<10 {
		b.buf = append([]byte{}, b.buf[len(b.buf)-(64<<10):]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

var _ io.Writer = (*tailBuffer)(nil)
