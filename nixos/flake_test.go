package nixos_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// flakeSummary is eval.nix's answer with checks = true.
type flakeSummary struct {
	VM          map[string]summary `json:"vm"`
	Packages    map[string]string  `json:"packages"`
	FCGoVersion string             `json:"fcGoVersion"`
	FCBuild     struct {
		SubPackages []string `json:"subPackages"`
	} `json:"fcBuild"`
	Formatter string   `json:"formatter"`
	DevShell  []string `json:"devShell"`
	Modules   []string `json:"modules"`
	VMScript  string   `json:"vmScript"`
}

// goModVersion is go.mod's go line.
func goModVersion(t *testing.T, repo string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+(?:\.\d+)?)$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod has no go line")
	}
	return string(m[1])
}

// The flake's outputs evaluate with stand-in nixpkgs: packages, modules, devShell,
// formatter, and the VM test's machines (evaluated like any machine here: their units
// verified, their TOML loaded). The VMs themselves need nixpkgs and KVM.
func TestFlake_OutputsAndVMTestMachinesEvaluate(t *testing.T) {
	h := newHarness(t)
	goVersion := goModVersion(t, h.repo)
	var f flakeSummary
	if err := h.nix(&f, "--arg", "checks", "true", "--argstr", "goVersion", goVersion); err != nil {
		t.Fatal(err)
	}
	if f.Packages["fc"] != "fc" || f.Packages["default"] != "fc" || f.FCGoVersion != goVersion || f.Formatter == "" ||
		!slices.Contains(f.DevShell, "go") || !slices.Equal(f.Modules, []string{"agent", "coordinator", "default"}) {
		t.Errorf("flake outputs: %+v", f)
	}
	for _, cmd := range []string{"coordinator/cmd/fc-coordinator", "agent/cmd/fc-agent", "coordinator/cmd/fc"} {
		if !slices.Contains(f.FCBuild.SubPackages, cmd) {
			t.Errorf("packages.fc does not build %s: %v", cmd, f.FCBuild.SubPackages)
		}
	}
	for _, want := range []string{"fc-coordinator-admin admin create-agent-token", "nix-store -r", "/nix-cache"} {
		if !strings.Contains(f.VMScript, want) {
			t.Errorf("the VM test's script lacks %q", want)
		}
	}
	checkPython(t, f.VMScript)
	for name, units := range map[string][]string{"coordinator": {"fc-coordinator", "example-git"}, "builder": {"fc-agent"}, "client": nil} {
		s, ok := f.VM[name]
		s.resolve()
		if !ok {
			t.Errorf("the VM test has no machine %s: %v", name, f.VM)
			continue
		}
		if len(s.FailedAssertions) > 0 {
			t.Errorf("machine %s: assertions failed: %q", name, s.FailedAssertions)
		}
		for _, u := range units {
			if _, ok := s.Units[u]; !ok {
				t.Errorf("machine %s has no unit %s", name, u)
			}
		}
		if err := verify(t, s); err != nil {
			t.Errorf("machine %s: %v", name, err)
		}
		for binary := range map[string]bool{"fc-coordinator": true, "fc-agent": true} {
			if u, ok := s.Units[binary]; ok {
				if _, err := h.configCheck(t, u, binary); err != nil {
					t.Errorf("machine %s: %v", name, err)
				}
			}
		}
	}

	// The flake refuses a nixpkgs whose Go is older than go.mod's go line.
	older := olderVersion(t, goVersion)
	err := h.nix(&f, "--arg", "checks", "true", "--argstr", "goVersion", older)
	if err == nil || !strings.Contains(err.Error(), "FC needs Go >= "+goVersion) {
		t.Errorf("the flake with Go %s: %v", older, err)
	}
}

// checkPython parses the VM test's script (Python, run by NixOS's test driver) and
// checks that every name it uses at the top is the driver's, a machine's, or its own.
func checkPython(t *testing.T, script string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "testScript.py")
	if err := os.WriteFile(file, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	const check = `
import ast, builtins, sys
tree = ast.parse(open(sys.argv[1]).read(), sys.argv[1])
known = set(dir(builtins)) | {"start_all", "retry", "coordinator", "builder", "client"}
for node in ast.walk(tree):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        known |= {a.asname or a.name for a in node.names}
    elif isinstance(node, (ast.FunctionDef, ast.Lambda)):
        known |= {a.arg for a in node.args.args}
        if isinstance(node, ast.FunctionDef):
            known.add(node.name)
    elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
        known.add(node.id)
unknown = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in known})
if unknown:
    sys.exit("unknown names: " + ", ".join(unknown))
`
	if out, err := exec.Command("python3", "-c", check, file).CombinedOutput(); err != nil {
		t.Errorf("the VM test's script: %v\n%s\n%s", err, out, script)
	}
}

// olderVersion is v with its last number one lower (1.26.8 → 1.26.7, 1.26.0 → 1.25.99).
func olderVersion(t *testing.T, v string) string {
	t.Helper()
	parts := strings.Split(v, ".")
	for i := len(parts) - 1; i >= 0; i-- {
		n, err := strconv.Atoi(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			parts[i] = strconv.Itoa(n - 1)
			for j := i + 1; j < len(parts); j++ {
				parts[j] = "99"
			}
			return strings.Join(parts, ".")
		}
	}
	t.Fatalf("no version older than %s", v)
	return fmt.Sprint(v)
}
