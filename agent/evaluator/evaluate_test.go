package evaluator

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// jobsetNix is the job set both the legacy file and the flake evaluate: every kind of
// job and of failure. greeting, flag and src are in scope; recurse is what a nested set
// needs to be recursed into.
func jobsetNix(salt, system, recurse string) string {
	return fmt.Sprintf(`let
  salt = %q;
  system = %s;
  drv = name: script: extra: derivation ({
    inherit name system salt;
    builder = "/bin/sh";
    args = [ "-c" "export PATH=/bin:/usr/bin; ${script}" ];
  } // extra);
  chainBase = drv "chain-base" "echo base > $out" { };
  chainMiddle = drv "chain-middle" "cat ${chainBase} > $out" { };
  base = drv "diamond-base" "echo base > $out" { };
  left = drv "diamond-left" "cat ${base} > $out" { };
  right = drv "diamond-right" "cat ${base} > $out" { };
  success = drv "success" "echo ok > $out" { } // {
    meta = {
      description = "it works";
      license = [ { spdxId = "MIT"; shortName = "mit"; } "custom" ];
      homepage = "https://example.org";
      timeout = 60;
      maxSilent = 30;
      schedulingPriority = 50;
    };
  };
  multi = drv "multi" "echo out > $out; echo dev > $dev; echo doc > $doc" { outputs = [ "out" "dev" "doc" ]; };
in {
  inherit success multi;
  failure = drv "failure" "echo failing; exit 1" { };
  chain = drv "chain-top" "cat ${chainMiddle} > $out" { };
  diamond = { %s
    inherit base left right;
    top = drv "diamond-top" "cat ${left} ${right} > $out" { };
  };
  deep = { %s
    ok = drv "deep-ok" "echo > $out" { };
    bad = abort "deep down";
  };
  aggregate = drv "aggregate" "echo aggregate > $out" {
    _hydraAggregate = true;
    constituents = [ success multi "chain" "diamond.top" ];
  };
  throws = throw "deliberately thrown";
  asserts = assert flag == "never"; success;
  aborts = abort "deliberately aborted";
  missing = (import ./lib.nix).nope;
  typeError = 1 + "a";
  arm = drv "arm" "echo arm > $out" { system = "aarch64-linux"; };
  kvm = drv "kvm" "echo kvm > $out" { requiredSystemFeatures = [ "kvm" ]; };
  local = drv "local" "echo local > $out" { preferLocalBuild = true; };
  inputs = drv "inputs-${greeting}-${if flag then "yes" else "no"}" "echo > $out" { };
  hidden = { x = drv "hidden-x" "echo > $out" { }; };
  gitinput = if src == null then null
    else drv "git-${src.shortRev}-${toString src.revCount}" "cat ${src}/hello.txt > $out" { } // { meta.description = src.rev; };
  notAJob = "just a string";
}
`, salt, system, recurse, recurse)
}

var wantErrors = map[string]string{
	"throws":    "error: deliberately thrown",
	"asserts":   "assertion",
	"aborts":    "deliberately aborted",
	"missing":   "attribute 'nope' missing",
	"typeError": "cannot add a string to an integer",
	"deep.bad":  "deep down",
}

func checkErrors(t *testing.T, res Result) {
	t.Helper()
	got := map[string]string{}
	for _, e := range res.Errors {
		got[e.Attr] = e.Message
	}
	for attr, want := range wantErrors {
		msg, ok := got[attr]
		if !ok {
			t.Errorf("no error recorded for %s (errors: %v)", attr, res.Errors)
			continue
		}
		if !strings.Contains(msg, want) || !strings.HasPrefix(msg, "error:") {
			t.Errorf("error of %s = %q, want it to start with error: and contain %q", attr, msg, want)
		}
		if strings.Contains(msg, "trace: FC-") || strings.Contains(msg, "--show-trace") {
			t.Errorf("error of %s has noise: %q", attr, msg)
		}
	}
	if len(got) != len(wantErrors) {
		t.Errorf("errors = %v, want exactly %v", res.Errors, wantErrors)
	}
}

func errorOf(res Result, attr string) string {
	for _, e := range res.Errors {
		if e.Attr == attr {
			return e.Message
		}
	}
	return ""
}

func jobsByAttr(res Result) map[string]Job {
	m := map[string]Job{}
	for _, j := range res.Jobs {
		m[j.Attr] = j
	}
	return m
}

// checkAgainstInstantiate compares drv paths with what nix-instantiate prints for the
// same attributes, and the outputs with nix-store --query --outputs.
func checkAgainstInstantiate(t *testing.T, jobs map[string]Job, dir string, instArgs []string) {
	t.Helper()
	var attrs []string
	for a := range jobs {
		attrs = append(attrs, a)
	}
	sort.Strings(attrs)
	args := append([]string{"--option", "substituters", ""}, instArgs...)
	for _, a := range attrs {
		args = append(args, "-A", a)
	}
	lines := strings.Fields(run(t, dir, "nix-instantiate", args...))
	if len(lines) != len(attrs) {
		t.Fatalf("nix-instantiate printed %d paths for %d attributes: %v", len(lines), len(attrs), lines)
	}
	for i, a := range attrs {
		want, _, _ := strings.Cut(lines[i], "!")
		if jobs[a].DrvPath != want {
			t.Errorf("%s: drv %s, nix-instantiate says %s", a, jobs[a].DrvPath, want)
		}
		outs := strings.Fields(run(t, dir, "nix-store", "--query", "--outputs", want))
		var got []string
		for _, o := range jobs[a].Outputs {
			got = append(got, o)
		}
		sort.Strings(got)
		sort.Strings(outs)
		if !reflect.DeepEqual(got, outs) {
			t.Errorf("%s: outputs %v, nix-store says %v", a, got, outs)
		}
	}
}

func checkCommonJobs(t *testing.T, jobs map[string]Job, system string) {
	t.Helper()
	s := jobs["success"]
	if s.Name != "success" || s.System != system {
		t.Errorf("success = %+v", s)
	}
	wantMeta := Meta{Description: "it works", License: "MIT, custom", Homepage: "https://example.org",
		Timeout: 60, MaxSilent: 30, SchedulingPriority: 50}
	if s.Meta != wantMeta {
		t.Errorf("success meta = %+v, want %+v", s.Meta, wantMeta)
	}
	if m := jobs["multi"]; len(m.Outputs) != 3 || m.Outputs["dev"] == "" || m.Outputs["doc"] == "" || m.Outputs["out"] == "" {
		t.Errorf("multi outputs = %v", m.Outputs)
	}
	if a := jobs["arm"]; a.System != "aarch64-linux" {
		t.Errorf("arm system = %q", a.System)
	}
	if k := jobs["kvm"]; !reflect.DeepEqual(k.RequiredSystemFeatures, []string{"kvm"}) {
		t.Errorf("kvm features = %v", k.RequiredSystemFeatures)
	}
	if f := jobs["failure"]; f.DrvPath == "" {
		t.Errorf("failure is not a job: %+v", f)
	}
	agg := jobs["aggregate"]
	if !agg.IsAggregate || !reflect.DeepEqual(agg.Constituents, []string{"success", "multi", "chain", "diamond.top"}) {
		t.Errorf("aggregate = %+v", agg)
	}
	if jobs["success"].IsAggregate {
		t.Errorf("success is an aggregate")
	}
	for _, a := range []string{"diamond.base", "diamond.left", "diamond.right", "diamond.top", "deep.ok", "chain", "local"} {
		if jobs[a].DrvPath == "" {
			t.Errorf("job %s missing", a)
		}
	}
	if _, ok := jobs["notAJob"]; ok {
		t.Errorf("a string became a job")
	}
}

func TestEvaluate_LegacyRelease(t *testing.T) {
	t.Parallel()
	needNix(t)
	ctx := testCtx(t)
	s := salt(t)
	release := "{ greeting ? \"none\", flag ? false, src ? null }:\n" + jobsetNix(s, "builtins.currentSystem", "recurseForDerivations = true;")
	repo, rev := gitRepo(t, map[string]string{"release.nix": release, "lib.nix": "{ }\n"})
	input, _ := gitRepo(t, map[string]string{"hello.txt": "hello " + s + "\n"})
	inputRev := commit(t, input, map[string]string{"more.txt": "more\n"})

	cache := t.TempDir()
	dir, cleanup, err := Checkout(ctx, cache, repo, rev, Credentials{})
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	req := Request{RepoURL: repo, Revision: rev, Expression: "release.nix", RestrictEval: true, Workers: 2, CacheDir: cache,
		Inputs: []Input{
			{Name: "greeting", Type: "string", Value: "hello"},
			{Name: "flag", Type: "boolean", Value: "true"},
			{Name: "src", Type: "git", Value: input},
		}}
	res, err := Evaluate(ctx, dir, req)
	if err != nil {
		t.Fatal(err)
	}
	jobs := jobsByAttr(res)
	var names []string
	for a := range jobs {
		names = append(names, a)
	}
	sort.Strings(names)
	want := []string{"aggregate", "arm", "chain", "deep.ok", "diamond.base", "diamond.left", "diamond.right", "diamond.top",
		"failure", "gitinput", "inputs", "kvm", "local", "multi", "success"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("jobs = %v, want %v (hidden.x needs recurseForDerivations)", names, want)
	}
	checkErrors(t, res)
	checkCommonJobs(t, jobs, "x86_64-linux")
	for _, e := range res.Errors {
		t.Logf("%s: %s", e.Attr, e.Message)
	}
	if msg := errorOf(res, "typeError"); !strings.Contains(msg, "at release.nix:") {
		t.Errorf("typeError's location should be relative to the checkout: %q", msg)
	}

	if n := jobs["inputs"].Name; n != "inputs-hello-yes" {
		t.Errorf("string and boolean inputs: job name %q, want inputs-hello-yes", n)
	}
	g := jobs["gitinput"]
	if g.Name != fmt.Sprintf("git-%s-2", inputRev[:7]) || g.Meta.Description != inputRev {
		t.Errorf("git input: name %q description %q, want git-%s-2 and %s", g.Name, g.Meta.Description, inputRev[:7], inputRev)
	}
	if res.EvalSeconds <= 0 || res.CheckoutSeconds <= 0 {
		t.Errorf("times: eval %v checkout %v", res.EvalSeconds, res.CheckoutSeconds)
	}

	srcArg := fmt.Sprintf("{ outPath = %s; rev = %q; shortRev = %q; revCount = 2; }", storeCopy(input), inputRev, inputRev[:7])
	checkAgainstInstantiate(t, jobs, dir, []string{"release.nix", "--argstr", "greeting", "hello", "--arg", "flag", "true", "--arg", "src", srcArg})

	// The git input's source reached the derivation as a store path.
	if out := run(t, dir, "nix-store", "--realise", "--option", "substituters", "", g.DrvPath); true {
		data, err := os.ReadFile(strings.TrimSpace(out))
		if err != nil || string(data) != "hello "+s+"\n" {
			t.Errorf("git input build: %q %v", data, err)
		}
	}
}

// Sharded walkers (workers > 1 splits the top-level names) give the same result as
// one: the same jobs, each error once with the same message, aggregates with their
// constituents from other shards; and OnJob sees every job but the aggregates once.
func TestEvaluate_LegacySameResultWithOneOrManyWorkers(t *testing.T) {
	t.Parallel()
	needNix(t)
	ctx := testCtx(t)
	release := "{ greeting ? \"none\", flag ? false, src ? null }:\n" + jobsetNix(salt(t), "builtins.currentSystem", "recurseForDerivations = true;")
	dir := t.TempDir()
	for name, content := range map[string]string{"release.nix": release, "lib.nix": "{ }"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var results []Result
	for _, w := range []int{1, 2, 3, 40} {
		var mu sync.Mutex
		var seen []Job
		res, err := Evaluate(ctx, dir, Request{Expression: "release.nix", Workers: w, OnJob: func(j Job) {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, j)
		}})
		if err != nil {
			t.Fatal(err)
		}
		res.EvalSeconds, res.CheckoutSeconds = 0, 0
		results = append(results, res)
		var want []Job
		for _, j := range res.Jobs {
			if !j.IsAggregate {
				want = append(want, j)
			}
		}
		sort.Slice(seen, func(a, b int) bool { return seen[a].Attr < seen[b].Attr })
		if !reflect.DeepEqual(seen, want) {
			t.Errorf("%d workers: OnJob saw\n%+v\nwant the result's jobs but aggregates\n%+v", w, seen, want)
		}
		count := map[string]int{}
		for _, e := range res.Errors {
			count[e.Attr]++
		}
		for _, j := range res.Jobs {
			count[j.Attr]++
		}
		for attr, n := range count {
			if n != 1 {
				t.Errorf("%d workers: %s reported %d times", w, attr, n)
			}
		}
		agg := jobsByAttr(res)["aggregate"]
		got := append([]string{}, agg.Constituents...)
		sort.Strings(got)
		if !agg.IsAggregate || !reflect.DeepEqual(got, []string{"chain", "diamond.top", "multi", "success"}) {
			t.Errorf("%d workers: aggregate %+v", w, agg)
		}
	}
	for i := 1; i < len(results); i++ {
		if !reflect.DeepEqual(results[0], results[i]) {
			t.Errorf("1 worker:\n%+v\nmore:\n%+v", results[0], results[i])
		}
	}
	checkErrors(t, results[0])
}

func flakeNix(s string) string {
	return `{
  outputs = { self }: {
    hydraJobs = let greeting = "none"; flag = false; src = null; in
` + jobsetNix(s, `"x86_64-linux"`, "") + `;
  };
}
`
}

func TestEvaluate_Flake(t *testing.T) {
	t.Parallel()
	needNix(t)
	ctx := testCtx(t)
	s := salt(t)
	repo, rev := gitRepo(t, map[string]string{"flake.nix": flakeNix(s), "lib.nix": "{ }\n"})
	cache := t.TempDir()
	dir, cleanup, err := Checkout(ctx, cache, repo, rev, Credentials{})
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	res, err := Evaluate(ctx, dir, Request{RepoURL: repo, Revision: rev, FlakeMode: true, RestrictEval: true, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	jobs := jobsByAttr(res)
	var names []string
	for a := range jobs {
		names = append(names, a)
	}
	sort.Strings(names)
	want := []string{"aggregate", "arm", "chain", "deep.ok", "diamond.base", "diamond.left", "diamond.right", "diamond.top",
		"failure", "hidden.x", "inputs", "kvm", "local", "multi", "success"}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("jobs = %v, want %v (every nested set is recursed in hydraJobs)", names, want)
	}
	checkErrors(t, res)
	checkCommonJobs(t, jobs, "x86_64-linux")
	checkAgainstInstantiate(t, jobs, dir, []string{"--extra-experimental-features", "flakes", "--expr",
		fmt.Sprintf("(builtins.getFlake %q).hydraJobs", "git+file://"+dir+"?rev="+rev)})
}

func TestEvaluate_FlakeFallsBackToChecks(t *testing.T) {
	t.Parallel()
	needNix(t)
	ctx := testCtx(t)
	flake := fmt.Sprintf(`{
  outputs = { self }: {
    checks.x86_64-linux.unit = derivation { name = "unit"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo %s > $out" ]; };
    checks.x86_64-linux.broken = abort "no";
  };
}
`, salt(t))
	repo, rev := gitRepo(t, map[string]string{"flake.nix": flake})
	res, err := Evaluate(ctx, repo, Request{Revision: rev, FlakeMode: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Jobs) != 1 || res.Jobs[0].Attr != "x86_64-linux.unit" {
		t.Errorf("jobs = %+v, want x86_64-linux.unit", res.Jobs)
	}
	if len(res.Errors) != 1 || res.Errors[0].Attr != "x86_64-linux.broken" {
		t.Errorf("errors = %+v", res.Errors)
	}

	// A named attribute is evaluated as it is.
	res, err = Evaluate(ctx, repo, Request{Revision: rev, FlakeMode: true, Expression: "checks.x86_64-linux"})
	if err != nil || len(res.Jobs) != 1 || res.Jobs[0].Attr != "unit" || len(res.Errors) != 1 {
		t.Errorf("checks.x86_64-linux: %+v %v", res, err)
	}

	// Neither: the evaluation fails as a whole.
	repo2, rev2 := gitRepo(t, map[string]string{"flake.nix": "{ outputs = { self }: { }; }\n"})
	if _, err := Evaluate(ctx, repo2, Request{Revision: rev2, FlakeMode: true}); !errors.Is(err, ErrEvalFailed) || !strings.Contains(err.Error(), "neither hydraJobs nor checks") {
		t.Errorf("flake without jobs: err = %v", err)
	}
}

func TestEvaluate_BrokenExpressionFailsTheEvaluation(t *testing.T) {
	t.Parallel()
	needNix(t)
	ctx := testCtx(t)
	for name, content := range map[string]string{
		"syntax":   "{ a = ; }",
		"argument": "{ needed }: { }",
		"aborts":   "abort \"whole file\"",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "release.nix"), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			res, err := Evaluate(ctx, dir, Request{})
			if !errors.Is(err, ErrEvalFailed) || !strings.Contains(err.Error(), "error:") || strings.Contains(err.Error(), dir) {
				t.Errorf("err = %v, res = %+v", err, res)
			}
		})
	}
}

func TestEvaluate_PlainAttrsetAndEmpty(t *testing.T) {
	t.Parallel()
	needNix(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	content := fmt.Sprintf(`{ a = derivation { name = "a"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo %s > $out" ]; }; }`, salt(t))
	if err := os.WriteFile(filepath.Join(dir, "jobs.nix"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "empty.nix"), []byte("{ }"), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := Evaluate(ctx, dir, Request{Expression: "jobs.nix"})
	if err != nil || len(res.Jobs) != 1 || res.Jobs[0].Attr != "a" || len(res.Errors) != 0 {
		t.Errorf("res = %+v, err = %v", res, err)
	}
	res, err = Evaluate(ctx, dir, Request{Expression: "empty.nix"})
	if err != nil || len(res.Jobs) != 0 || len(res.Errors) != 0 || res.Jobs == nil || res.Errors == nil {
		t.Errorf("empty: res = %+v, err = %v", res, err)
	}
	if _, err := Evaluate(ctx, dir, Request{Expression: "../outside.nix"}); !errors.Is(err, ErrEvalFailed) {
		t.Errorf("an expression outside the checkout: %v", err)
	}
	for _, in := range []Input{{Name: "b", Type: "boolean", Value: "maybe"}, {Name: "x", Type: "svn"}, {Name: "a b", Type: "string"}} {
		if _, err := Evaluate(ctx, dir, Request{Expression: "jobs.nix", Inputs: []Input{in}}); !errors.Is(err, ErrEvalFailed) {
			t.Errorf("input %+v: %v", in, err)
		}
	}
}

func TestAttrPathJoinSplit(t *testing.T) {
	t.Parallel()
	for _, path := range [][]string{{"a"}, {"a", "b"}, {"dotted.attr"}, {"x", "1.2", "y"}} {
		s := joinAttrPath(path)
		if got := splitAttrPath(s); !reflect.DeepEqual(got, path) {
			t.Errorf("%v -> %q -> %v", path, s, got)
		}
	}
	if got := joinAttrPath([]string{"pkgs", "python3.11"}); got != `pkgs."python3.11"` {
		t.Errorf("join = %s", got)
	}
}

func TestNixString(t *testing.T) {
	t.Parallel()
	if got := nixString("a\"b\\c${d}\n"); got != `"a\"b\\c\${d}\n"` {
		t.Errorf("nixString = %s", got)
	}
}

func TestEvaluate_ImportFromDerivation(t *testing.T) {
	t.Parallel()
	needNix(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	release := fmt.Sprintf(`let
  gen = derivation { name = "gen"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo '{ x = 1; }' > $out # %s" ]; };
  v = import gen;
in {
  ifd = derivation { name = "ifd-${toString v.x}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; };
  plain = derivation { name = "plain"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo %s > $out" ]; };
}`, salt(t), salt(t))
	if err := os.WriteFile(filepath.Join(dir, "release.nix"), []byte(release), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := Evaluate(ctx, dir, Request{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Jobs) != 1 || res.Jobs[0].Attr != "plain" || !strings.Contains(errorOf(res, "ifd"), "import") {
		t.Errorf("IFD not allowed: %+v", res)
	}
	res, err = Evaluate(ctx, dir, Request{AllowIFD: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Jobs) != 2 || len(res.Errors) != 0 || jobsByAttr(res)["ifd"].Name != "ifd-1" {
		t.Errorf("IFD allowed: %+v", res)
	}
}

func TestEvaluate_RestrictEval(t *testing.T) {
	t.Parallel()
	needNix(t)
	ctx := testCtx(t)
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "outside.txt")
	if err := os.WriteFile(outside, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	release := fmt.Sprintf(`let mk = name: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo %s > $out" ]; }; in {
  inside = mk "inside-${builtins.readFile ./data.txt}";
  outside = mk "outside-${builtins.readFile %s}";
}`, salt(t), outside)
	for name, content := range map[string]string{"release.nix": release, "data.txt": "d"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	res, err := Evaluate(ctx, dir, Request{RestrictEval: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Jobs) != 1 || res.Jobs[0].Name != "inside-d" || !strings.Contains(errorOf(res, "outside"), "restricted mode") {
		t.Errorf("restricted: %+v", res)
	}
	res, err = Evaluate(ctx, dir, Request{})
	if err != nil || len(res.Jobs) != 2 {
		t.Errorf("unrestricted: %+v %v", res, err)
	}
}

func TestEvaluate_CancelStopsNix(t *testing.T) {
	t.Parallel()
	needNix(t)
	dir := t.TempDir()
	release := `{ slow = builtins.seq (builtins.foldl' (a: b: a + b) 0 (builtins.genList (i: i) 100000000)) { }; }`
	if err := os.WriteFile(filepath.Join(dir, "release.nix"), []byte(release), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Evaluate(ctx, dir, Request{Workers: 2})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("cancelled evaluation took %v", d)
	}
}

// With an eval store, the .drv files (and the sources they need) are written to that
// store, not to Nix's own, for a legacy file and a flake, with the same jobs, errors
// and drv paths as nix-instantiate; the graph is read from there.
func TestEvaluate_EvalStoreHoldsTheDerivations(t *testing.T) {
	t.Parallel()
	needNix(t)
	ctx := testCtx(t)
	root := t.TempDir()
	t.Cleanup(func() { _ = exec.Command("chmod", "-R", "u+w", root).Run() })
	// Made once before the walkers share it (they would race to create its database).
	run(t, root, "nix", "--extra-experimental-features", "nix-command", "store", "ping", "--store", root)

	s := salt(t)
	release := "{ greeting ? \"none\", flag ? false, src ? null }:\n" + jobsetNix(s, "builtins.currentSystem", "recurseForDerivations = true;")
	for _, mode := range []string{"legacy", "flake"} {
		t.Run(mode, func(t *testing.T) {
			files := map[string]string{"release.nix": release, "lib.nix": "{ }\n"}
			if mode == "flake" {
				files = map[string]string{"flake.nix": flakeNix(s + "-flake"), "lib.nix": "{ }\n"}
			}
			repo, rev := gitRepo(t, files)
			res, err := Evaluate(ctx, repo, Request{RepoURL: repo, Revision: rev, FlakeMode: mode == "flake", Workers: 2, EvalStore: root})
			if err != nil {
				t.Fatal(err)
			}
			checkErrors(t, res)
			jobs := jobsByAttr(res)
			checkCommonJobs(t, jobs, "x86_64-linux")
			var drvs []string
			for _, j := range res.Jobs {
				if _, err := os.Stat(root + j.DrvPath); err != nil {
					t.Errorf("%s: %s is not in the eval store: %v", j.Attr, j.DrvPath, err)
				}
				drvs = append(drvs, j.DrvPath)
			}
			if exec.Command("nix-store", append([]string{"--check-validity"}, drvs...)...).Run() == nil {
				t.Errorf("the jobs' derivations are in Nix's own store too")
			}
			// The graph reads them from the eval store: every job that must be built is a node.
			g := NewGrapher(root, func(_ context.Context, _ []string) (map[string]bool, error) { return map[string]bool{}, nil })
			nodes, err := g.Add(ctx, drvs)
			if err != nil {
				t.Fatal(err)
			}
			if len(nodes) < len(drvs) {
				t.Errorf("%d nodes for %d jobs", len(nodes), len(drvs))
			}
			// The same derivations as nix-instantiate (which writes them to Nix's own store).
			if mode == "legacy" {
				checkAgainstInstantiate(t, jobs, repo, []string{"release.nix"})
			} else {
				checkAgainstInstantiate(t, jobs, repo, []string{"--extra-experimental-features", "flakes", "--expr",
					fmt.Sprintf("(builtins.getFlake %q).hydraJobs", "git+file://"+repo+"?rev="+rev)})
			}
		})
	}
}
