package evaluator

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strings"
	"sync"
)

// walkNix is the fallback evaluator's walker (see walk.nix for how it reports).
//
//go:embed walk.nix
var walkNix string

// The fallback on plain Nix 2.8. builtins.tryEval catches only throw and assert, so a
// single nix process cannot evaluate a job set in which one attribute aborts or has a
// type error. Instead, one `nix eval` process walks the whole set (per shard) and
// reports each node on stderr as it goes (walk.nix); when it dies, the last node it
// began is the attribute at fault: its message is the process's error, everything
// reported before is kept, and a new process resumes after it. Attributes that threw
// are caught in-process and then evaluated once more, each on its own (in parallel), to
// get their messages. The happy path is one process per shard, the derivations written
// as nix-instantiate writes them, and no "B" (begin) record: a process that dies is
// run again from the last node it reported, announcing each node, to name the one at
// fault.

// walkOpts are the per-process parameters of walk.nix.
type walkOpts struct {
	resume   []string
	only     []string
	catch    bool
	announce bool // B records (see walk.nix)
	shard    int
	shards   int
}

// walkRecord is one line the walker reported.
type walkRecord struct {
	tag  byte // B, J or T
	path []string
	job  *walkJob
}

type walkJob struct {
	P []string          `json:"p"`
	D string            `json:"d"`
	N string            `json:"n"`
	S string            `json:"s"`
	O map[string]string `json:"o"`
	F []any             `json:"f"`
	M struct {
		Description        *string  `json:"description"`
		License            []string `json:"license"`
		Homepage           *string  `json:"homepage"`
		Timeout            *int     `json:"timeout"`
		MaxSilent          *int     `json:"maxSilent"`
		SchedulingPriority *int     `json:"schedulingPriority"`
	} `json:"m"`
	A bool `json:"a"`
	C []struct {
		N string `json:"n"`
		D string `json:"d"`
	} `json:"c"`
}

func (w *walkJob) job() Job {
	j := Job{
		Attr:                   joinAttrPath(w.P),
		Name:                   w.N,
		DrvPath:                w.D,
		Outputs:                w.O,
		System:                 w.S,
		RequiredSystemFeatures: []string{},
		IsAggregate:            w.A,
	}
	for _, f := range w.F {
		if s, ok := f.(string); ok {
			j.RequiredSystemFeatures = append(j.RequiredSystemFeatures, strings.Fields(s)...)
		}
	}
	if w.M.Description != nil {
		j.Meta.Description = *w.M.Description
	}
	j.Meta.License = strings.Join(w.M.License, ", ")
	if w.M.Homepage != nil {
		j.Meta.Homepage = *w.M.Homepage
	}
	if w.M.Timeout != nil {
		j.Meta.Timeout = *w.M.Timeout
	}
	if w.M.MaxSilent != nil {
		j.Meta.MaxSilent = *w.M.MaxSilent
	}
	if w.M.SchedulingPriority != nil {
		j.Meta.SchedulingPriority = *w.M.SchedulingPriority
	}
	for _, c := range w.C {
		if c.D != "" {
			j.Constituents = append(j.Constituents, c.D)
		} else {
			j.Constituents = append(j.Constituents, c.N)
		}
	}
	return j
}

// walkRun is what one walker process reported.
type walkRun struct {
	records []walkRecord
	failed  bool
	message string // the error, when failed: from the last node begun
}

func runFallback(ctx context.Context, t *target) (rawResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	mark := "FC-" + randomHex(8)
	top := t.topExpr()
	shards := max(t.workers, 1)

	var (
		mu     sync.Mutex
		res    rawResult
		throws [][]string
		errs   []error
		wg     sync.WaitGroup
	)
	for shard := range shards {
		wg.Go(func() {
			jobs, attrErrs, thrown, err := walkShard(ctx, t, top, mark, shard, shards)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				cancel() // the first error is the evaluation's
				return
			}
			res.jobs = append(res.jobs, jobs...)
			res.errors = append(res.errors, attrErrs...)
			throws = append(throws, thrown...)
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return rawResult{}, errs[0]
	}

	// The messages of the attributes that threw: each on its own, workers at a time.
	sem := make(chan struct{}, shards)
	for _, path := range throws {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			run, err := runWalk(ctx, t, top, mark, walkOpts{only: path, shards: 1})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			if !run.failed {
				// It evaluated this time: keep what it gave.
				for _, r := range run.records {
					if r.tag == 'J' {
						res.jobs = append(res.jobs, rawJob{Job: r.job.job()})
					}
				}
				return
			}
			res.errors = append(res.errors, AttrError{Attr: joinAttrPath(path), Message: run.message})
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return rawResult{}, errs[0]
	}
	return res, nil
}

// walkShard walks one shard to the end, a new process after each attribute that
// kills one.
func walkShard(ctx context.Context, t *target, top, mark string, shard, shards int) (jobs []rawJob, attrErrs []AttrError, throws [][]string, err error) {
	var resume []string
	// announce: the last process died; this one announces each node it begins, so
	// that if it dies the same way, its last B names the attribute at fault.
	announce := false
	for {
		run, err := runWalk(ctx, t, top, mark, walkOpts{resume: resume, catch: true, announce: announce, shard: shard, shards: shards})
		if err != nil {
			return nil, nil, nil, err
		}
		var last *walkRecord
		for i := range run.records {
			r := &run.records[i]
			switch r.tag {
			case 'J':
				jobs = append(jobs, rawJob{Job: r.job.job()})
			case 'T':
				throws = append(throws, r.path)
			}
			last = r
		}
		if !run.failed {
			return jobs, attrErrs, throws, nil
		}
		switch {
		case last != nil && last.tag == 'B':
			// The attribute at fault: record it and go on after it, quietly again.
			attrErrs = append(attrErrs, AttrError{Attr: joinAttrPath(last.path), Message: run.message})
			resume, announce = last.path, false
		case !announce:
			// Died after its last record, without saying where: the same walk again
			// from there, announcing each node.
			if last != nil {
				resume = last.path
			}
			announce = true
		case last == nil:
			// Announcing, it died before reaching any attribute: the expression
			// itself is broken.
			return nil, nil, nil, fmt.Errorf("%w: %s", ErrEvalFailed, run.message)
		default:
			// Announcing, it died between attributes (out of memory?): go on after the
			// last one it finished; progress is guaranteed since every run reports
			// something.
			resume = last.path
		}
	}
}

// topExpr is the Nix expression of the job set.
func (t *target) topExpr() string {
	if t.flake {
		f := "(builtins.getFlake " + nixString(t.flakeRef) + ")"
		if len(t.attrPath) > 0 {
			return f + "." + nixAttrPath(t.attrPath)
		}
		return "(let f = " + f + "; in if f ? hydraJobs then f.hydraJobs else if f ? checks then f.checks " +
			"else throw \"the flake has neither hydraJobs nor checks\")"
	}
	var b strings.Builder
	b.WriteString("(let fcFile = import (/. + ")
	b.WriteString(nixString(t.file))
	b.WriteString("); fcInputs = {")
	for _, in := range t.inputs {
		b.WriteString(" " + nixString(in.name) + " = " + in.expr() + ";")
	}
	b.WriteString(" }; in if builtins.isFunction fcFile then " +
		"fcFile (builtins.intersectAttrs (builtins.functionArgs fcFile) fcInputs) else fcFile)")
	return b.String()
}

func nixAttrPath(path []string) string {
	parts := make([]string, len(path))
	for i, p := range path {
		parts[i] = nixString(p)
	}
	return strings.Join(parts, ".")
}

func nixList(path []string) string {
	if path == nil {
		return "null"
	}
	parts := make([]string, len(path))
	for i, p := range path {
		parts[i] = nixString(p)
	}
	return "[ " + strings.Join(parts, " ") + " ]"
}

// nixArgs are the arguments of a nix eval command for t, up to the subcommand's own.
func (t *target) nixArgs(sub ...string) []string {
	args := []string{"--extra-experimental-features", "nix-command flakes", "--log-format", "raw"}
	for i := 0; i+1 < len(t.options); i += 2 {
		args = append(args, "--option", t.options[i], t.options[i+1])
	}
	args = append(args, sub...)
	if t.evalStore != "" {
		args = append(args, "--eval-store", t.evalStore)
	}
	for _, s := range t.search {
		args = append(args, "-I", s)
	}
	return args
}

// runWalk runs one walker process and reads what it reports.
func runWalk(ctx context.Context, t *target, top, mark string, o walkOpts) (walkRun, error) {
	expr := fmt.Sprintf("(%s) { top = %s; mark = %s; recurseAll = %t; resume = %s; only = %s; catch = %t; announce = %t; shard = %d; shards = %d; }",
		walkNix, top, nixString(mark), t.flake, nixList(o.resume), nixList(o.only), o.catch, o.announce, o.shard, max(o.shards, 1))
	sub := []string{"eval", "--json"}
	if !t.flake {
		// Legacy files may use builtins.currentSystem, <…> and the file system, as
		// with nix-instantiate; restrict-eval still applies when configured.
		sub = append(sub, "--impure")
	}
	args := append(t.nixArgs(sub...), "--expr", expr)
	cmd := exec.CommandContext(ctx, "nix", args...)
	cmd.Stdout = io.Discard
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return walkRun{}, err
	}
	if err := cmd.Start(); err != nil {
		return walkRun{}, fmt.Errorf("start nix eval: %w", err)
	}
	run, readErr := readWalk(stderr, mark, func(j *walkJob) {
		t.onDrv(j.D)
		if !j.A {
			t.onJob(normalized(j.job()))
		}
	})
	waitErr := cmd.Wait()
	if ctx.Err() != nil {
		return walkRun{}, ctx.Err()
	}
	if readErr != nil {
		return walkRun{}, fmt.Errorf("read nix eval output: %w", readErr)
	}
	if waitErr != nil {
		var ee *exec.ExitError
		if !errors.As(waitErr, &ee) {
			return walkRun{}, fmt.Errorf("nix eval: %w", waitErr)
		}
		run.failed = true
		if run.message == "" {
			run.message = "nix eval: " + waitErr.Error()
		} else if !ee.Exited() {
			run.message += "\n(nix eval: " + waitErr.Error() + ")"
		}
	}
	return run, nil
}

// readWalk reads a walker's stderr: its records, and the error message that follows
// the last node it began.
func readWalk(r io.Reader, mark string, onJob func(*walkJob)) (walkRun, error) {
	var run walkRun
	prefix := []byte("trace: " + mark + " ")
	var tail []string // lines since the last record
	br := bufio.NewReaderSize(r, 1<<16)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			line = bytes.TrimRight(line, "\r\n")
			if rest, ok := bytes.CutPrefix(line, prefix); ok && len(rest) > 2 && rest[1] == ' ' {
				rec := walkRecord{tag: rest[0]}
				payload := rest[2:]
				var perr error
				if rec.tag == 'J' {
					rec.job = new(walkJob)
					perr = json.Unmarshal(payload, rec.job)
					rec.path = rec.job.P
					if perr == nil {
						onJob(rec.job)
					}
				} else {
					perr = json.Unmarshal(payload, &rec.path)
				}
				if perr != nil {
					return run, fmt.Errorf("bad record %.200q: %w", line, perr)
				}
				run.records = append(run.records, rec)
				tail = tail[:0]
			} else {
				tail = append(tail, string(line))
				if len(tail) > 2000 {
					tail = tail[len(tail)-1000:]
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return run, err
		}
	}
	run.message = errorMessage(tail)
	return run, nil
}

var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;?]*[ -/]*[@-~]`)

// errorMessage trims what Nix printed after the last record to its error: from the
// first "error:" line, without the hint about --show-trace.
func errorMessage(lines []string) string {
	start := -1
	for i, l := range lines {
		l = ansiEscape.ReplaceAllString(l, "")
		lines[i] = l
		if start < 0 && strings.HasPrefix(l, "error:") {
			start = i
		}
	}
	if start < 0 {
		start = max(len(lines)-20, 0)
	}
	var out []string
	for _, l := range lines[start:] {
		if strings.HasPrefix(l, "(use '--show-trace'") {
			continue
		}
		out = append(out, strings.TrimRight(l, " \t"))
	}
	return strings.TrimSpace(strings.Join(out, "\n"))
}
