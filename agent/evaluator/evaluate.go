package evaluator

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// defaultFlakeAttr is what a flake jobset evaluates unless it names an attribute;
// when the flake has no hydraJobs, its checks are evaluated instead.
const defaultFlakeAttr = "hydraJobs"

// ErrEvalFailed is a failure of the jobset's expression as a whole (a syntax error, a
// missing function argument, a flake with neither hydraJobs nor checks): the
// evaluation failed, and evaluating the same inputs again fails the same way. Other
// errors (git, a missing nix, a cancelled context) are the machinery's.
var ErrEvalFailed = errors.New("evaluation failed")

// NoFlakeMessage is the error of a flake-mode jobset whose repository has no flake.nix.
const NoFlakeMessage = "no flake.nix at the repository root (this jobset is in flake mode; for release.nix set flake_mode false)"

// Evaluate evaluates the jobset req describes in the checkout dir: the jobs (dotted
// attribute paths, relative to the evaluated attribute: a flake's hydraJobs or checks,
// or what the legacy file returns), each with its derivation written to the store, and
// the attributes that failed, each with its message. It uses nix-eval-jobs when it is
// on PATH and otherwise plain Nix. Git inputs are checked out under req.CacheDir (their
// time is Result.CheckoutSeconds); a failure of the whole expression (a syntax error,
// a flake without hydraJobs or checks) is an error.
func Evaluate(ctx context.Context, dir string, req Request) (Result, error) {
	start := time.Now()
	t, cleanup, checkoutSeconds, err := prepare(ctx, dir, req)
	defer cleanup()
	if err != nil {
		return Result{CheckoutSeconds: checkoutSeconds}, err
	}
	var r rawResult
	if bin, lerr := exec.LookPath("nix-eval-jobs"); lerr == nil {
		r, err = runEvalJobs(ctx, bin, t)
		if errors.Is(err, errEvalJobsUnusable) {
			// An old nix-eval-jobs: plain Nix gives the same result.
			r, err = runFallback(ctx, t)
		}
	} else {
		r, err = runFallback(ctx, t)
	}
	if err != nil {
		if !t.flake {
			err = &relativeError{err: err, msg: strings.ReplaceAll(err.Error(), t.checkout+"/", "")}
		}
		return Result{CheckoutSeconds: checkoutSeconds}, err
	}
	res := r.finish()
	// Name files by their place in the repository, not in this evaluation's checkout,
	// so that messages compare across evaluations.
	if !t.flake {
		for i := range res.Errors {
			res.Errors[i].Message = strings.ReplaceAll(res.Errors[i].Message, t.checkout+"/", "")
		}
	}
	res.CheckoutSeconds = checkoutSeconds
	res.EvalSeconds = time.Since(start).Seconds() - checkoutSeconds
	return res, nil
}

// target is what to evaluate and how, for either evaluator.
type target struct {
	flake    bool
	flakeRef string   // git+file:///dir?rev=… or path:/dir?narHash=…
	attrPath []string // the flake attribute to evaluate; empty: hydraJobs, else checks
	checkout string   // the checkout's absolute path
	file     string   // legacy: the absolute path of the file
	inputs   []nixArg // legacy: the jobset inputs
	search   []string // -I entries (restricted evaluation must be allowed to read them)
	options  []string // --option pairs
	workers  int
	maxMemMB int
	onDrv    func(drvPath string) // Request.OnDrv, never nil
	onJob    func(Job)            // Request.OnJob, never nil
	// evalStore is Request.EvalStore: where the .drv files are, under their store
	// paths ("" for Nix's own store).
	evalStore string
}

// nixArg is an input passed to a legacy expression: a string (--argstr) or a Nix
// expression (--arg).
type nixArg struct {
	name  string
	str   bool
	value string
}

// expr is the input as a Nix expression.
func (a nixArg) expr() string {
	if a.str {
		return nixString(a.value)
	}
	return "(" + a.value + ")"
}

// prepare makes the target of an evaluation of the checkout dir: for a legacy
// expression that includes checking its git inputs out. cleanup removes those
// checkouts; checkoutSeconds is the time they took.
func prepare(ctx context.Context, dir string, req Request) (t *target, cleanup func(), checkoutSeconds float64, err error) {
	var cleanups []func()
	cleanup = func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, cleanup, 0, err
	}
	t = newTarget(dir, req)
	if t.flake {
		// Said plainly here: Nix would name a path inside the eval store instead.
		if _, err := os.Stat(filepath.Join(dir, "flake.nix")); errors.Is(err, fs.ErrNotExist) {
			return nil, cleanup, 0, fmt.Errorf("%w: %s", ErrEvalFailed, NoFlakeMessage)
		}
		if req.Expression != "" && req.Expression != defaultFlakeAttr {
			t.attrPath = splitAttrPath(strings.TrimPrefix(req.Expression, "#"))
		}
		if err := t.lockFlake(ctx, req.Revision); err != nil {
			return nil, cleanup, 0, err
		}
		return t, cleanup, 0, nil
	}

	if t.file, err = legacyFile(dir, req.Expression); err != nil {
		return nil, cleanup, 0, err
	}
	t.search = append(t.search, "fc-checkout="+dir)
	cacheDir := req.CacheDir
	if cacheDir == "" {
		cacheDir = filepath.Join(os.TempDir(), "fc-eval-cache")
	}
	for _, in := range req.Inputs {
		c, secs, err := t.addInput(ctx, in, req, cacheDir)
		if c != nil {
			cleanups = append(cleanups, c)
		}
		checkoutSeconds += secs
		if err != nil {
			return nil, cleanup, checkoutSeconds, err
		}
	}
	return t, cleanup, checkoutSeconds, nil
}

// newTarget is the target of the checkout dir with the request's settings and Nix
// options, before its expression and inputs.
func newTarget(dir string, req Request) *target {
	t := &target{checkout: dir, flake: req.FlakeMode, workers: req.Workers, maxMemMB: req.MaxMemoryMB, onDrv: req.OnDrv,
		onJob: req.OnJob, evalStore: req.EvalStore}
	if t.onDrv == nil {
		t.onDrv = func(string) {}
	}
	if t.onJob == nil {
		t.onJob = func(Job) {}
	}
	if t.workers <= 0 {
		t.workers = min(runtime.NumCPU(), 4)
	}
	t.options = []string{"substituters", ""}
	if req.RestrictEval {
		t.options = append(t.options, "restrict-eval", "true")
	}
	if !req.AllowIFD {
		t.options = append(t.options, "allow-import-from-derivation", "false")
	}
	return t
}

// lockFlake sets the flake reference of the checkout: a git checkout at revision
// (HEAD when it is not a full commit id), anything else locked by its content.
func (t *target) lockFlake(ctx context.Context, revision string) error {
	dir := t.checkout
	if _, err := os.Stat(filepath.Join(dir, ".git")); err == nil {
		rev := revision
		if !fullSHA.MatchString(rev) {
			if rev, err = HeadRev(ctx, dir); err != nil {
				return err
			}
		}
		t.flakeRef = "git+file://" + dir + "?rev=" + rev
		return nil
	}
	// Not a git checkout: lock the directory by its content.
	out, err := exec.CommandContext(ctx, "nix", "--extra-experimental-features", "nix-command",
		"hash", "path", "--type", "sha256", dir).Output()
	if err != nil {
		return fmt.Errorf("hash %s: %w%s", dir, err, stderrOf(err))
	}
	t.flakeRef = "path:" + dir + "?narHash=" + strings.TrimSpace(string(out))
	return nil
}

// legacyFile is the absolute path of a legacy expression (default release.nix; a
// directory means its default.nix), which must lie inside the checkout dir.
func legacyFile(dir, expr string) (string, error) {
	if expr == "" {
		expr = "release.nix"
	}
	file := filepath.Clean(filepath.Join(dir, expr))
	if file != dir && !strings.HasPrefix(file, dir+string(filepath.Separator)) {
		return "", fmt.Errorf("%w: expression %q is outside the checkout", ErrEvalFailed, expr)
	}
	if st, err := os.Stat(file); err != nil {
		return "", fmt.Errorf("%w: expression %q: %w", ErrEvalFailed, expr, err)
	} else if st.IsDir() {
		file = filepath.Join(file, "default.nix")
	}
	return file, nil
}

// addInput passes one jobset input to a legacy expression. A git input is checked
// out: cleanup (nil for other inputs) removes the checkout, secs is the time it took.
func (t *target) addInput(ctx context.Context, in Input, req Request, cacheDir string) (cleanup func(), secs float64, err error) {
	if !validInputName(in.Name) {
		return nil, 0, fmt.Errorf("%w: input %q: not a valid attribute name", ErrEvalFailed, in.Name)
	}
	switch in.Type {
	case "string", "":
		t.inputs = append(t.inputs, nixArg{name: in.Name, str: true, value: in.Value})
	case "boolean", "bool":
		b, err := strconv.ParseBool(strings.TrimSpace(in.Value))
		if err != nil {
			return nil, 0, fmt.Errorf("%w: input %q: %q is not a boolean", ErrEvalFailed, in.Name, in.Value)
		}
		t.inputs = append(t.inputs, nixArg{name: in.Name, value: strconv.FormatBool(b)})
	case "nix":
		t.inputs = append(t.inputs, nixArg{name: in.Name, value: in.Value})
	case "path":
		// A path on this machine: only where the agent's own list allows, never
		// its state, and read where its symlinks lead as checked.
		p, err := checkPathInput(in.Name, in.Value, req.AllowedInputPaths, req.ProtectedPaths)
		if err != nil {
			return nil, 0, err
		}
		t.inputs = append(t.inputs, nixArg{name: in.Name, value: "{ outPath = " + storeCopy(p) + "; }"})
		t.search = append(t.search, in.Name+"="+p)
	case "git":
		return t.addGitInput(ctx, in, req, cacheDir)
	default:
		return nil, 0, fmt.Errorf("%w: input %q: unknown type %q", ErrEvalFailed, in.Name, in.Type)
	}
	return nil, 0, nil
}

// addGitInput checks a git input out ("URL" or "URL REVISION": a commit, branch or
// tag; default HEAD) and passes it as Hydra does, with rev, shortRev and revCount.
func (t *target) addGitInput(ctx context.Context, in Input, req Request, cacheDir string) (cleanup func(), secs float64, err error) {
	fields := strings.Fields(in.Value)
	if len(fields) == 0 || len(fields) > 2 {
		return nil, 0, fmt.Errorf("%w: input %q: want \"URL [revision]\", got %q", ErrEvalFailed, in.Name, in.Value)
	}
	rev := ""
	if len(fields) == 2 {
		rev = fields[1]
	}
	cstart := time.Now()
	// The project's credentials go only to its own scheme, host and port.
	creds := Credentials{SSHKey: req.SSHKey, HTTPSToken: req.HTTPSToken}.ScopedTo(req.RepoURL, fields[0])
	idir, irev, icleanup, err := checkout(ctx, cacheDir, fields[0], rev, creds)
	if err != nil {
		return nil, 0, fmt.Errorf("input %q: %w", in.Name, err)
	}
	count, err := RevCount(ctx, idir, irev)
	secs = time.Since(cstart).Seconds()
	if err != nil {
		return icleanup, secs, fmt.Errorf("input %q: %w", in.Name, err)
	}
	t.inputs = append(t.inputs, nixArg{name: in.Name, value: fmt.Sprintf(
		"{ outPath = %s; rev = %s; shortRev = %s; revCount = %d; }",
		storeCopy(idir), nixString(irev), nixString(irev[:7]), count)})
	t.search = append(t.search, in.Name+"="+idir)
	return icleanup, secs, nil
}

// storeCopy is a Nix expression copying the directory (without .git) to the store, as
// Hydra gives a git input's outPath: a store path builders can use.
func storeCopy(path string) string {
	return `builtins.path { path = /. + ` + nixString(path) + `; name = "source"; filter = p: t: baseNameOf p != ".git"; }`
}

func validInputName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && (c >= '0' && c <= '9' || c == '-' || c == '\'')) {
			return false
		}
	}
	return true
}

// nixString is s as a Nix string literal.
func nixString(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `${`, `\${`, "\n", `\n`, "\r", `\r`, "\t", `\t`)
	return `"` + r.Replace(s) + `"`
}

// joinAttrPath names a job by its attribute path as nix-eval-jobs does: components
// joined with dots, a component that contains a dot in double quotes.
func joinAttrPath(path []string) string {
	parts := make([]string, len(path))
	for i, p := range path {
		if strings.Contains(p, ".") {
			p = `"` + p + `"`
		}
		parts[i] = p
	}
	return strings.Join(parts, ".")
}

// splitAttrPath is the inverse of joinAttrPath.
func splitAttrPath(s string) []string {
	var out []string
	var cur strings.Builder
	quoted := false
	for _, c := range s {
		switch {
		case c == '"':
			quoted = !quoted
		case c == '.' && !quoted:
			out = append(out, cur.String())
			cur.Reset()
		default:
			cur.WriteRune(c)
		}
	}
	if s != "" {
		out = append(out, cur.String())
	}
	return out
}

// rawJob is a job whose constituents (drv paths or job names) are not resolved yet.
type rawJob struct {
	Job
}

type rawResult struct {
	jobs   []rawJob
	errors []AttrError
}

// finish resolves aggregates' constituents to job names (or drv paths where they are
// not jobs) and sorts. An aggregate naming a job that does not exist or failed to
// evaluate is an error, as in Hydra.
func (r rawResult) finish() Result {
	byDrv := map[string]string{}
	byName := map[string]bool{}
	failed := map[string]bool{}
	for _, e := range r.errors {
		failed[e.Attr] = true
	}
	sort.Slice(r.jobs, func(a, b int) bool { return r.jobs[a].Attr < r.jobs[b].Attr })
	for _, j := range r.jobs {
		byName[j.Attr] = true
		if _, ok := byDrv[j.DrvPath]; !ok {
			byDrv[j.DrvPath] = j.Attr
		}
	}
	res := Result{Jobs: []Job{}, Errors: append([]AttrError{}, r.errors...)}
	for _, j := range r.jobs {
		job := j.Job
		if job.IsAggregate {
			var broken []string
			seen := map[string]bool{}
			add := func(c string) {
				if c != "" && c != job.Attr && !seen[c] {
					seen[c] = true
					job.Constituents = append(job.Constituents, c)
				}
			}
			job.Constituents = nil
			for _, c := range j.Constituents {
				if isDrvPath(c) {
					if name, ok := byDrv[c]; ok {
						add(name)
					} else {
						add(c)
					}
					continue
				}
				switch n := c; {
				case byName[n]:
					add(n)
				case failed[n]:
					broken = append(broken, fmt.Sprintf("constituent %q failed to evaluate", n))
				default:
					broken = append(broken, fmt.Sprintf("constituent %q does not exist", n))
				}
			}
			if len(broken) > 0 {
				res.Errors = append(res.Errors, AttrError{Attr: job.Attr,
					Message: "aggregate job " + job.Attr + ": " + strings.Join(broken, "; ")})
				continue
			}
		}
		res.Jobs = append(res.Jobs, normalized(job))
	}
	sort.Slice(res.Errors, func(a, b int) bool { return res.Errors[a].Attr < res.Errors[b].Attr })
	return res
}

// normalized is j as the result has it: no nil outputs or features.
func normalized(j Job) Job {
	if j.Outputs == nil {
		j.Outputs = map[string]string{}
	}
	if j.RequiredSystemFeatures == nil {
		j.RequiredSystemFeatures = []string{}
	}
	return j
}

// relativeError is err with the checkout's path taken out of its message.
type relativeError struct {
	err error
	msg string
}

func (e *relativeError) Error() string { return e.msg }
func (e *relativeError) Unwrap() error { return e.err }

func isDrvPath(s string) bool { return strings.HasPrefix(s, "/") && strings.HasSuffix(s, ".drv") }

// licenseString flattens meta.license as nixpkgs writes it (a string, an attribute
// set with spdxId/shortName/fullName, or a list of those) to one string.
func licenseString(v any) string {
	var names []string
	var walk func(v any)
	walk = func(v any) {
		switch l := v.(type) {
		case string:
			names = append(names, l)
		case []any:
			for _, e := range l {
				walk(e)
			}
		case map[string]any:
			for _, k := range []string{"spdxId", "shortName", "fullName"} {
				if s, ok := l[k].(string); ok && s != "" {
					names = append(names, s)
					return
				}
			}
		}
	}
	walk(v)
	return strings.Join(names, ", ")
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return ": " + strings.TrimSpace(string(ee.Stderr))
	}
	return ""
}
