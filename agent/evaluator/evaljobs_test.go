package evaluator

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// Lines in nix-eval-jobs' documented output format (its README and tests): JSON lines
// with attr, attrPath, drvPath, name, outputs, system, and optionally meta, inputDrvs,
// constituents/namedConstituents (--constituents), cacheStatus (--check-cache-status)
// or error. No nix-eval-jobs binary runs in these tests (Debian 12 has none).
var recordedLines = map[string]string{
	"readme": `{"attr":"coverage","attrPath":["coverage"],"drvPath":"/nix/store/fmbqzaq8mim1423879lhn9whs6imx5w4-patchelf-coverage-0.18.0.drv","inputDrvs":{"/nix/store/23632hx2c98lbbjld279dx0w08lxn6kp-hook.drv":["out"],"/nix/store/6z1jfnqqgyqr221zgbpm30v91yfj3r45-bash-5.1-p16.drv":["out"]},"name":"patchelf-coverage-0.18.0","outputs":{"out":"/nix/store/gfni9sbhhwhxxfqziq1fs3n82bvw962l-patchelf-coverage-0.18.0"},"system":"x86_64-linux"}`,
	"old":    `{"attr":"build-sanitized-clang.aarch64-linux","drvPath":"/nix/store/361mr6bzzwcv65sp0bhbakaa21fj4p1b-patchelf-0.13.20210926.18a389b.drv","name":"patchelf-0.13.20210926.18a389b","system":"x86_64-linux"}`,
	"dotted": `{"attr":"\"dotted.attr\"","attrPath":["dotted.attr"],"drvPath":"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-job1.drv","name":"job1","outputs":{"out":"/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-job1"},"system":"x86_64-linux","meta":{"broken":false}}`,
	"meta": `{"attr":"pkgs.hello","attrPath":["pkgs","hello"],"drvPath":"/nix/store/cccccccccccccccccccccccccccccccc-hello-2.12.drv","name":"hello-2.12","outputs":{"out":"/nix/store/dddddddddddddddddddddddddddddddd-hello-2.12","man":"/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-hello-2.12-man"},"system":"x86_64-linux",` +
		`"meta":{"description":"A program that produces a familiar, friendly greeting","license":{"deprecated":false,"free":true,"fullName":"GNU General Public License v3.0 or later","redistributable":true,"shortName":"gpl3Plus","spdxId":"GPL-3.0-or-later","url":"https://spdx.org/licenses/GPL-3.0-or-later.html"},"homepage":"https://www.gnu.org/software/hello/","maintainers":[],"platforms":["x86_64-linux"],"timeout":36000,"maxSilent":7200,"schedulingPriority":100,"broken":false},` +
		`"cacheStatus":"notBuilt","isCached":false,"neededBuilds":[],"neededSubstitutes":[]}`,
	"error":     `{"attr":"brokenPackage","attrPath":["brokenPackage"],"error":"error:\n       … while evaluating the attribute 'brokenPackage'\n\n       error: this is an evaluation error\n(use '--show-trace' to show detailed location information)"}`,
	"aggregate": `{"attr":"mixed_aggregate","attrPath":["mixed_aggregate"],"constituents":["/nix/store/ffffffffffffffffffffffffffffffff-job1.drv","/nix/store/gggggggggggggggggggggggggggggggg-anotherone.drv"],"drvPath":"/nix/store/hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh-mixed-aggregate.drv","name":"mixed-aggregate","outputs":{"out":"/nix/store/iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii-mixed-aggregate"},"system":"x86_64-linux","meta":{}}`,
	"named":     `{"attr":"indirect_aggregate","attrPath":["indirect_aggregate"],"constituents":[],"namedConstituents":["anotherone"],"globConstituents":false,"drvPath":"/nix/store/jjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjj-indirect.drv","name":"indirect","outputs":{"out":"/nix/store/kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk-indirect"},"system":"x86_64-linux"}`,
	"plainjob":  `{"attr":"anotherone","attrPath":["anotherone"],"constituents":[],"namedConstituents":[],"drvPath":"/nix/store/gggggggggggggggggggggggggggggggg-anotherone.drv","name":"anotherone","outputs":{"out":"/nix/store/llllllllllllllllllllllllllllllll-anotherone"},"system":"x86_64-linux"}`,
	"broken":    `{"attr":"aggregate","attrPath":["aggregate"],"constituents":[],"drvPath":"/nix/store/mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm-aggregate.drv","name":"aggregate","outputs":{"out":"/nix/store/nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn-aggregate"},"system":"x86_64-linux","error":"\"doesntexist\": does not exist\n\"doesnteval\": \"error: derivation 'doesnteval' does not have valid outputs\"\n"}`,
	"ca":        `{"attr":"ca","attrPath":["ca"],"drvPath":"/nix/store/oooooooooooooooooooooooooooooooo-ca.drv","name":"ca","outputs":{"out":null},"system":"x86_64-linux"}`,
	"toplevel":  `{"error":"error: getting status of '/build/nope.nix': No such file or directory"}`,
}

func TestParseEvalJobsLine(t *testing.T) {
	t.Parallel()
	tests := []struct {
		line    string
		job     Job
		attrErr *AttrError
	}{
		{"readme", Job{Attr: "coverage", Name: "patchelf-coverage-0.18.0", System: "x86_64-linux",
			DrvPath: "/nix/store/fmbqzaq8mim1423879lhn9whs6imx5w4-patchelf-coverage-0.18.0.drv",
			Outputs: map[string]string{"out": "/nix/store/gfni9sbhhwhxxfqziq1fs3n82bvw962l-patchelf-coverage-0.18.0"}}, nil},
		{"old", Job{Attr: "build-sanitized-clang.aarch64-linux", Name: "patchelf-0.13.20210926.18a389b", System: "x86_64-linux",
			DrvPath: "/nix/store/361mr6bzzwcv65sp0bhbakaa21fj4p1b-patchelf-0.13.20210926.18a389b.drv", Outputs: map[string]string{}}, nil},
		{"dotted", Job{Attr: `"dotted.attr"`, Name: "job1", System: "x86_64-linux",
			DrvPath: "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-job1.drv",
			Outputs: map[string]string{"out": "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-job1"}}, nil},
		{"meta", Job{Attr: "pkgs.hello", Name: "hello-2.12", System: "x86_64-linux",
			DrvPath: "/nix/store/cccccccccccccccccccccccccccccccc-hello-2.12.drv",
			Outputs: map[string]string{"out": "/nix/store/dddddddddddddddddddddddddddddddd-hello-2.12", "man": "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-hello-2.12-man"},
			Meta: Meta{Description: "A program that produces a familiar, friendly greeting", License: "GPL-3.0-or-later",
				Homepage: "https://www.gnu.org/software/hello/", Timeout: 36000, MaxSilent: 7200, SchedulingPriority: 100}}, nil},
		{"error", Job{}, &AttrError{Attr: "brokenPackage", Message: "error:\n       … while evaluating the attribute 'brokenPackage'\n\n       error: this is an evaluation error"}},
		{"aggregate", Job{Attr: "mixed_aggregate", Name: "mixed-aggregate", System: "x86_64-linux",
			DrvPath:     "/nix/store/hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh-mixed-aggregate.drv",
			Outputs:     map[string]string{"out": "/nix/store/iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii-mixed-aggregate"},
			IsAggregate: true, Constituents: []string{"/nix/store/ffffffffffffffffffffffffffffffff-job1.drv", "/nix/store/gggggggggggggggggggggggggggggggg-anotherone.drv"}}, nil},
		{"named", Job{Attr: "indirect_aggregate", Name: "indirect", System: "x86_64-linux",
			DrvPath: "/nix/store/jjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjj-indirect.drv", Outputs: map[string]string{"out": "/nix/store/kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk-indirect"},
			IsAggregate: true, Constituents: []string{"anotherone"}}, nil},
		{"plainjob", Job{Attr: "anotherone", Name: "anotherone", System: "x86_64-linux",
			DrvPath: "/nix/store/gggggggggggggggggggggggggggggggg-anotherone.drv", Outputs: map[string]string{"out": "/nix/store/llllllllllllllllllllllllllllllll-anotherone"}}, nil},
		{"broken", Job{}, &AttrError{Attr: "aggregate", Message: "\"doesntexist\": does not exist\n\"doesnteval\": \"error: derivation 'doesnteval' does not have valid outputs\""}},
		{"ca", Job{Attr: "ca", Name: "ca", System: "x86_64-linux", DrvPath: "/nix/store/oooooooooooooooooooooooooooooooo-ca.drv", Outputs: map[string]string{"out": ""}}, nil},
		{"toplevel", Job{}, &AttrError{Attr: "", Message: "error: getting status of '/build/nope.nix': No such file or directory"}},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			job, attrErr, err := parseEvalJobsLine([]byte(recordedLines[tt.line]))
			if err != nil {
				t.Fatal(err)
			}
			if tt.attrErr != nil {
				if attrErr == nil || *attrErr != *tt.attrErr {
					t.Errorf("error = %+v, want %+v", attrErr, tt.attrErr)
				}
				return
			}
			if attrErr != nil {
				t.Fatalf("unexpected error %+v", attrErr)
			}
			tt.job.RequiredSystemFeatures = []string{}
			if !reflect.DeepEqual(job, tt.job) {
				t.Errorf("job =\n%+v\nwant\n%+v", job, tt.job)
			}
		})
	}
	for _, bad := range []string{`not json`, `[1,2]`, `{"attr":"x"}`, `{"attrPath":[{"a":1}],"drvPath":"/nix/store/x.drv"}`} {
		if _, _, err := parseEvalJobsLine([]byte(bad)); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

func TestFinish_ResolvesConstituents(t *testing.T) {
	t.Parallel()
	lines := []string{"aggregate", "named", "plainjob", "readme"}
	var r rawResult
	for _, l := range lines {
		job, _, err := parseEvalJobsLine([]byte(recordedLines[l]))
		if err != nil {
			t.Fatal(err)
		}
		r.jobs = append(r.jobs, rawJob{Job: job})
	}
	named := r.jobs[1].Job
	named.Attr, named.DrvPath, named.Constituents = "needs_missing", "/nix/store/pppppppppppppppppppppppppppppppp-x.drv", []string{"nope", "failed"}
	r.jobs = append(r.jobs, rawJob{Job: named})
	r.errors = append(r.errors, AttrError{Attr: "failed", Message: "error: boom"})
	res := r.finish()
	jobs := jobsByAttr(res)
	// Drv paths of jobs become job names; others stay drv paths.
	if got := jobs["mixed_aggregate"].Constituents; !reflect.DeepEqual(got, []string{"/nix/store/ffffffffffffffffffffffffffffffff-job1.drv", "anotherone"}) {
		t.Errorf("mixed constituents = %v", got)
	}
	if got := jobs["indirect_aggregate"].Constituents; !reflect.DeepEqual(got, []string{"anotherone"}) {
		t.Errorf("named constituents = %v", got)
	}
	if _, ok := jobs["needs_missing"]; ok {
		t.Errorf("an aggregate with broken constituents is a job")
	}
	msg := errorOf(res, "needs_missing")
	if !strings.Contains(msg, `"nope" does not exist`) || !strings.Contains(msg, `"failed" failed to evaluate`) {
		t.Errorf("broken aggregate error = %q", msg)
	}
}

// TestEvaluate_UsesNixEvalJobs runs Evaluate with a stand-in nix-eval-jobs on PATH
// that records its arguments and prints lines in the documented format for
// derivations nix-instantiate made.
// Not parallel: it puts a stand-in nix-eval-jobs on PATH for the whole test binary.
func TestEvaluate_UsesNixEvalJobs(t *testing.T) {
	needNix(t)
	ctx := testCtx(t)
	s := salt(t)
	dir := t.TempDir()
	release := fmt.Sprintf(`{ greeting ? "x" }: {
  plain = derivation { name = "plain"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo %[1]s > $out" ]; };
  kvm = derivation { name = "kvm"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo %[1]s > $out" ]; requiredSystemFeatures = [ "kvm" "big-parallel" ]; };
}`, s)
	if err := os.WriteFile(filepath.Join(dir, "release.nix"), []byte(release), 0o644); err != nil {
		t.Fatal(err)
	}
	// The derivations are in an eval store (--eval-store), where the features are read.
	root := t.TempDir()
	t.Cleanup(func() { _ = exec.Command("chmod", "-R", "u+w", root).Run() })
	drvs := strings.Fields(run(t, dir, "nix-instantiate", "--store", root, "--option", "substituters", "", "release.nix", "-A", "plain", "-A", "kvm"))
	outs := map[string]string{}
	for _, d := range drvs {
		outs[d] = run(t, "", "nix-store", "--store", root, "--query", "--outputs", d)
	}
	lines := fmt.Sprintf(`{"attr":"kvm","attrPath":["kvm"],"drvPath":%q,"name":"kvm","outputs":{"out":%q},"system":"x86_64-linux","meta":{},"constituents":[],"namedConstituents":[]}
{"attr":"plain","attrPath":["plain"],"drvPath":%q,"name":"plain","outputs":{"out":%q},"system":"x86_64-linux","meta":{"license":"MIT"},"constituents":[],"namedConstituents":[]}
{"attr":"broken","attrPath":["broken"],"error":"error: attribute 'nope' missing"}
`, drvs[1], outs[drvs[1]], drvs[0], outs[drvs[0]])

	bin := t.TempDir()
	argsFile := filepath.Join(t.TempDir(), "args")
	linesFile := filepath.Join(t.TempDir(), "lines")
	if err := os.WriteFile(linesFile, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf("#!/bin/sh\nfor a in \"$@\"; do printf '%%s\\n' \"$a\"; done > %s\ncat %s\n", argsFile, linesFile)
	if err := os.WriteFile(filepath.Join(bin, "nix-eval-jobs"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))

	var mu sync.Mutex
	seen := map[string]Job{}
	res, err := Evaluate(ctx, dir, Request{Workers: 3, MaxMemoryMB: 2048, RestrictEval: true, EvalStore: root,
		Inputs: []Input{{Name: "greeting", Type: "string", Value: "hi there"}, {Name: "flag", Type: "boolean", Value: "false"}},
		OnJob: func(j Job) {
			mu.Lock()
			defer mu.Unlock()
			seen[j.Attr] = j
		}})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(seen, jobsByAttr(res)) {
		t.Errorf("OnJob saw %+v, want the result's jobs, features included: %+v", seen, res.Jobs)
	}
	jobs := jobsByAttr(res)
	if len(jobs) != 2 || jobs["plain"].DrvPath != drvs[0] || jobs["kvm"].DrvPath != drvs[1] || jobs["plain"].Meta.License != "MIT" {
		t.Errorf("jobs = %+v", res.Jobs)
	}
	if got := jobs["kvm"].RequiredSystemFeatures; !reflect.DeepEqual(got, []string{"kvm", "big-parallel"}) {
		t.Errorf("features from the drv = %v", got)
	}
	if len(res.Errors) != 1 || res.Errors[0].Attr != "broken" {
		t.Errorf("errors = %+v", res.Errors)
	}
	args := strings.Split(strings.TrimSpace(readFile(t, argsFile)), "\n")
	joined := strings.Join(args, " ")
	for _, want := range []string{"--workers 3", "--max-memory-size 2048", "--meta", "--constituents", "--gc-roots-dir ",
		"--option substituters  --option restrict-eval true --option allow-import-from-derivation false",
		filepath.Join(dir, "release.nix"), "--argstr greeting hi there", "--arg flag false", "-I fc-checkout=" + dir,
		"--eval-store " + root} {
		if !strings.Contains(joined, want) {
			t.Errorf("nix-eval-jobs arguments %q lack %q", args, want)
		}
	}
	if strings.Contains(joined, "--force-recurse") {
		t.Errorf("a legacy file is evaluated with --force-recurse")
	}

	// A flake: --flake REF#hydraJobs (or checks), recursing like Hydra.
	repo, rev := gitRepo(t, map[string]string{"flake.nix": "{ outputs = { self }: { checks = { }; }; }\n"})
	if _, err := Evaluate(ctx, repo, Request{Revision: rev, FlakeMode: true, EvalStore: root}); err != nil {
		t.Fatal(err)
	}
	joined = strings.Join(strings.Split(strings.TrimSpace(readFile(t, argsFile)), "\n"), " ")
	if !strings.Contains(joined, "--force-recurse --flake git+file://"+repo+"?rev="+rev+"#checks") {
		t.Errorf("flake arguments: %s", joined)
	}
}

// Not parallel: it puts a stand-in nix-eval-jobs on PATH for the whole test binary.
func TestEvaluate_OldNixEvalJobsFallsBackToPlainNix(t *testing.T) {
	needNix(t)
	bin := t.TempDir()
	script := "#!/bin/sh\necho \"error: unrecognised flag '--constituents'\" >&2\nexit 1\n"
	if err := os.WriteFile(filepath.Join(bin, "nix-eval-jobs"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	dir := t.TempDir()
	release := fmt.Sprintf(`{ a = derivation { name = "a"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo %s > $out" ]; }; }`, salt(t))
	if err := os.WriteFile(filepath.Join(dir, "release.nix"), []byte(release), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := Evaluate(testCtx(t), dir, Request{})
	if err != nil || len(res.Jobs) != 1 {
		t.Errorf("res = %+v, err = %v", res, err)
	}
}
