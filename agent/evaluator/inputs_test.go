package evaluator

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// pathInputTree is a directory tree like an agent's machine: inputs the agent allows,
// its state directory with its key, something outside both, and symlinks between.
type pathInputTree struct {
	base, allowed, state, key, outside string
}

func newPathInputTree(t *testing.T) pathInputTree {
	t.Helper()
	base, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	tr := pathInputTree{base: base, allowed: filepath.Join(base, "allowed"), state: filepath.Join(base, "state"),
		outside: filepath.Join(base, "outside")}
	tr.key = filepath.Join(tr.state, "agent_key")
	for _, d := range []string{filepath.Join(tr.allowed, "data"), tr.state, tr.outside} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for p, body := range map[string]string{
		filepath.Join(tr.allowed, "data", "hello.txt"): "hello\n",
		tr.key:                             "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n-----END OPENSSH PRIVATE KEY-----\n",
		filepath.Join(tr.outside, "x.txt"): "outside\n",
	} {
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for link, target := range map[string]string{
		filepath.Join(tr.allowed, "link-key"):   tr.key,
		filepath.Join(tr.allowed, "link-state"): tr.state,
		filepath.Join(tr.allowed, "link-out"):   tr.outside,
		filepath.Join(tr.allowed, "link-rel"):   "../state/agent_key",
		filepath.Join(base, "alias"):            tr.allowed,
		filepath.Join(base, "state-alias"):      tr.state,
	} {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	return tr
}

func TestCheckPathInput_AllowedDirectoriesOnlyAndNeverTheAgentsState(t *testing.T) {
	t.Parallel()
	tr := newPathInputTree(t)
	j := filepath.Join
	cases := []struct {
		name      string
		value     string
		allowed   []string
		protected []string
		want      string // the resolved path; "" for a refusal
		why       string // part of the refusal's message
	}{
		{"an allowed directory", j(tr.allowed, "data"), []string{tr.allowed}, []string{tr.state}, j(tr.allowed, "data"), ""},
		{"the allowed directory itself", tr.allowed, []string{tr.allowed}, []string{tr.state}, tr.allowed, ""},
		{"a file with .. inside the allowed directory", j(tr.allowed, "data", "..", "data", "hello.txt"), []string{tr.allowed},
			[]string{tr.state}, j(tr.allowed, "data", "hello.txt"), ""},
		{"through an allowed directory that is a symlink", j(tr.base, "alias", "data"), []string{j(tr.base, "alias")},
			[]string{tr.state}, j(tr.allowed, "data"), ""},
		{"no allowed directories", j(tr.allowed, "data"), nil, []string{tr.state}, "", AllowedInputPathsKey},
		{"relative", "allowed/data", []string{tr.allowed}, []string{tr.state}, "", "absolute"},
		{"outside", j(tr.outside, "x.txt"), []string{tr.allowed}, []string{tr.state}, "", AllowedInputPathsKey},
		{"climbing out with ..", j(tr.allowed, "..", "outside", "x.txt"), []string{tr.allowed}, []string{tr.state}, "", AllowedInputPathsKey},
		{"a symlink out", j(tr.allowed, "link-out", "x.txt"), []string{tr.allowed}, []string{tr.state}, "", "symlinks resolved"},
		{"missing", j(tr.allowed, "nope"), []string{tr.allowed}, []string{tr.state}, "", "cannot be read"},
		// Whatever the agent's list says, its state stays out of reach.
		{"the key, allowed by a careless list", tr.key, []string{tr.base}, []string{tr.state}, "", "own state"},
		{"the key with ..", j(tr.allowed, "..", "state", "agent_key"), []string{tr.base}, []string{tr.state}, "", "own state"},
		{"the state directory", tr.state, []string{tr.base}, []string{tr.state}, "", "own state"},
		{"a directory holding the state", tr.base, []string{tr.base}, []string{tr.state}, "", "own state"},
		{"the root", "/", []string{"/"}, []string{tr.state}, "", "own state"},
		{"a symlink to the key", j(tr.allowed, "link-key"), []string{tr.allowed}, []string{tr.state}, "", "own state"},
		{"a relative symlink to the key", j(tr.allowed, "link-rel"), []string{tr.allowed}, []string{tr.state}, "", "own state"},
		{"the key through a symlink to the state", j(tr.allowed, "link-state", "agent_key"), []string{tr.allowed, tr.base},
			[]string{tr.state}, "", "own state"},
		{"the key when the state directory is named through a symlink", tr.key, []string{tr.base},
			[]string{j(tr.base, "state-alias")}, "", "own state"},
		{"a key file kept elsewhere", j(tr.outside, "x.txt"), []string{tr.base}, []string{tr.state, j(tr.outside, "x.txt")}, "", "own state"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := checkPathInput("src", c.value, c.allowed, c.protected)
			if c.want != "" {
				if err != nil || got != c.want {
					t.Fatalf("checkPathInput(%q) = %q, %v; want %q", c.value, got, err, c.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("checkPathInput(%q) = %q, want a refusal", c.value, got)
			}
			if !errors.Is(err, ErrEvalFailed) || !strings.Contains(err.Error(), c.why) || !strings.Contains(err.Error(), `"src"`) {
				t.Errorf("refusal %q: want ErrEvalFailed naming the input and saying %q", err, c.why)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("the refusal shows the key: %v", err)
			}
		})
	}
}

// Through the evaluator with real Nix: an allowed path input reaches the expression
// (and a derivation), and one that names the agent's key is refused before Nix reads
// it, so no message shows it.
func TestEvaluate_PathInputs(t *testing.T) {
	t.Parallel()
	needNix(t)
	ctx := testCtx(t)
	tr := newPathInputTree(t)
	s := salt(t)
	release := fmt.Sprintf(`{ src }: {
  data = derivation { name = "data-%s-${builtins.replaceStrings ["\n"] [""] (builtins.readFile (src + "/hello.txt"))}";
    system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "export PATH=/bin:/usr/bin; cat ${src}/hello.txt > $out" ]; };
  leak = throw (builtins.readFile src);
}
`, s)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "release.nix"), []byte(release), 0o644); err != nil {
		t.Fatal(err)
	}
	req := func(value string) Request {
		return Request{Expression: "release.nix", RestrictEval: true, Inputs: []Input{{Name: "src", Type: "path", Value: value}},
			AllowedInputPaths: []string{tr.base}, ProtectedPaths: []string{tr.state}}
	}
	res, err := Evaluate(ctx, dir, req(filepath.Join(tr.allowed, "data")))
	if err != nil {
		t.Fatal(err)
	}
	jobs := jobsByAttr(res)
	if jobs["data"].Name != "data-"+s+"-hello" {
		t.Errorf("the allowed path input did not reach the expression: jobs %+v errors %+v", res.Jobs, res.Errors)
	}
	out := run(t, dir, "nix-store", "--realise", "--option", "substituters", "", jobs["data"].DrvPath)
	if got := readFile(t, out); got != "hello\n" {
		t.Errorf("the path input's content in the build: %q", got)
	}
	for _, v := range []string{tr.key, filepath.Join(tr.allowed, "link-key"), filepath.Join(tr.allowed, "link-state", "agent_key")} {
		res, err := Evaluate(ctx, dir, req(v))
		if err == nil {
			t.Errorf("path input %s evaluated: %+v", v, res)
			continue
		}
		if !errors.Is(err, ErrEvalFailed) || strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), "PRIVATE KEY") {
			t.Errorf("path input %s: %v", v, err)
		}
	}
}
