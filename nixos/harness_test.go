package nixos_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/fc-ci/fc/storage/storagetest"
)

// libEnv names a nixpkgs lib snapshot (its root, or its lib directory) to use instead
// of the one beside the repository.
const libEnv = "FC_NIXPKGS_LIB"

// nixpkgsLib finds nixpkgs' lib (findLib), or fails naming every place it looked:
// the test never skips.
func nixpkgsLib(t *testing.T, repo string) string {
	t.Helper()
	lib, looked := findLib(repo, os.Getenv(libEnv))
	if lib == "" {
		t.Fatalf("nixpkgs' lib not found (a snapshot of nix-community/nixpkgs.lib; set %s to its directory); looked in:\n  %s",
			libEnv, strings.Join(looked, "\n  "))
	}
	return lib
}

// findLib looks for nixpkgs' lib (a directory lib with default.nix) in env's directory
// (FC_NIXPKGS_LIB: the snapshot or its lib), then in the snapshot the repository
// carries as test data (nixos/test/nixpkgs-lib, MIT, see its COPYING). It returns the
// lib directory, or "" and every place it looked.
func findLib(repo, env string) (string, []string) {
	var candidates []string
	if env != "" {
		candidates = append(candidates, env)
	}
	candidates = append(candidates, filepath.Join(repo, "nixos", "test", "nixpkgs-lib"))
	var looked []string
	for _, c := range candidates {
		for _, dir := range []string{filepath.Join(c, "lib"), c} {
			abs, _ := filepath.Abs(dir)
			if slices.Contains(looked, abs) {
				continue
			}
			looked = append(looked, abs)
			if _, err := os.Stat(filepath.Join(abs, "default.nix")); err == nil && filepath.Base(abs) == "lib" {
				return abs, nil
			}
		}
	}
	return "", looked
}

// Without the snapshot the test fails naming each place it looked; FC_NIXPKGS_LIB
// names one, as the snapshot's root or its lib directory.
func TestFindLib_NamesEveryPlaceItLooked(t *testing.T) {
	repo := filepath.Join(t.TempDir(), "fc")
	if err := os.MkdirAll(repo, 0o755); err != nil {
		t.Fatal(err)
	}
	lib, looked := findLib(repo, "/nowhere/nixpkgs-lib")
	want := []string{"/nowhere/nixpkgs-lib/lib", "/nowhere/nixpkgs-lib",
		filepath.Join(repo, "nixos/test/nixpkgs-lib/lib"), filepath.Join(repo, "nixos/test/nixpkgs-lib")}
	if lib != "" || !slices.Equal(looked, want) {
		t.Errorf("findLib in an empty place = %q, looked in %q; want none, looked in %q", lib, looked, want)
	}
	snapshot := filepath.Join(t.TempDir(), "snap")
	if err := os.MkdirAll(filepath.Join(snapshot, "lib"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(snapshot, "lib", "default.nix"), []byte("{ }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, env := range []string{snapshot, filepath.Join(snapshot, "lib")} {
		if lib, _ := findLib(repo, env); lib != filepath.Join(snapshot, "lib") {
			t.Errorf("FC_NIXPKGS_LIB=%s: found %q", env, lib)
		}
	}
}

// harness evaluates nixos/test/eval.nix: FC's flake with nixpkgs' lib and stand-ins.
type harness struct {
	repo, lib, root string
}

// summary is eval.nix's answer for one machine.
type summary struct {
	Units            map[string]unit            `json:"units"`
	Users            map[string]map[string]any  `json:"users"`
	Groups           []string                   `json:"groups"`
	TrustedUsers     []string                   `json:"trustedUsers"`
	TCPPorts         []int                      `json:"tcpPorts"`
	Tmpfiles         []string                   `json:"tmpfiles"`
	Etc              map[string]string          `json:"etc"` // environment.etc: name → source
	Nginx            nginx                      `json:"nginx"`
	Postgresql       map[string]json.RawMessage `json:"postgresql"`
	Scripts          []script                   `json:"scripts"`
	FailedAssertions []string                   `json:"failedAssertions"`
	Warnings         []string                   `json:"warnings"`
}

type unit struct {
	Description      string            `json:"description"`
	WantedBy         []string          `json:"wantedBy"`
	Wants            []string          `json:"wants"`
	Requires         []string          `json:"requires"`
	After            []string          `json:"after"`
	Before           []string          `json:"before"`
	Path             []string          `json:"path"`
	Environment      map[string]string `json:"environment"`
	ServiceConfig    map[string]any    `json:"serviceConfig"`
	UnitConfig       map[string]any    `json:"unitConfig"`
	RestartIfChanged bool              `json:"restartIfChanged"`
	ReloadTriggers   []string          `json:"reloadTriggers"`
	// ConfigFile is the file FC_CONFIG_FILE names, through environment.etc when it
	// names a file there (set by resolve).
	ConfigFile string `json:"-"`
}

// resolve sets each unit's ConfigFile.
func (s *summary) resolve() {
	for name, u := range s.Units {
		u.ConfigFile = u.Environment["FC_CONFIG_FILE"]
		if rest, ok := strings.CutPrefix(u.ConfigFile, "/etc/"); ok && s.Etc[rest] != "" {
			u.ConfigFile = s.Etc[rest]
		}
		s.Units[name] = u
	}
}

type nginx struct {
	Enable       bool `json:"enable"`
	VirtualHosts map[string]struct {
		Locations map[string]struct {
			ProxyPass       string `json:"proxyPass"`
			ProxyWebsockets bool   `json:"proxyWebsockets"`
			ExtraConfig     string `json:"extraConfig"`
		} `json:"locations"`
	} `json:"virtualHosts"`
}

type script struct {
	Name string `json:"name"`
	Text string `json:"text"`
}

// eval evaluates one machine: the flake's modules named in imports, plus the case module
// (Nix text). An evaluation error is returned with Nix's message.
func (h harness) eval(t *testing.T, imports []string, caseModule string) (summary, error) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "case.nix")
	if err := os.WriteFile(file, []byte(caseModule), 0o644); err != nil {
		t.Fatal(err)
	}
	quoted := make([]string, len(imports))
	for i, m := range imports {
		quoted[i] = fmt.Sprintf("%q", m)
	}
	var s summary
	err := h.nix(&s, "--arg", "case", file, "--arg", "imports", "[ "+strings.Join(quoted, " ")+" ]")
	s.resolve()
	return s, err
}

// nix runs eval.nix with args and decodes its JSON answer into v.
func (h harness) nix(v any, args ...string) error {
	all := append([]string{"--read-write-mode", "--eval", "--strict", "--json",
		filepath.Join(h.repo, "nixos", "test", "eval.nix"),
		"--arg", "lib", "import " + h.lib, "--argstr", "root", h.root, "--arg", "repo", h.repo,
		"--option", "substituters", ""}, args...)
	cmd := exec.Command("nix-instantiate", all...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nix-instantiate: %w\n%s", err, stderr.String())
	}
	if err := json.Unmarshal(stdout.Bytes(), v); err != nil {
		return fmt.Errorf("eval.nix answered %q: %w", stdout.String(), err)
	}
	return nil
}

// unitFile writes u as NixOS writes a service (dependencies space-separated, one
// Environment= per variable with PATH from `path`, a list value as one directive per
// element) so systemd-analyze can check it.
func unitFile(u unit) string {
	var b strings.Builder
	b.WriteString("[Unit]\n")
	fmt.Fprintf(&b, "Description=%s\n", u.Description)
	for _, d := range []struct {
		key  string
		list []string
	}{{"Wants", u.Wants}, {"Requires", u.Requires}, {"After", u.After}, {"Before", u.Before}} {
		if len(d.list) > 0 {
			fmt.Fprintf(&b, "%s=%s\n", d.key, strings.Join(d.list, " "))
		}
	}
	writeDirectives(&b, u.UnitConfig)
	b.WriteString("\n[Service]\n")
	env := map[string]string{}
	for k, v := range u.Environment {
		env[k] = v
	}
	var path []string
	for _, p := range u.Path {
		path = append(path, p+"/bin")
	}
	for _, p := range u.Path {
		path = append(path, p+"/sbin")
	}
	env["PATH"] = strings.Join(path, ":")
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(k + "=" + env[k])
		fmt.Fprintf(&b, "Environment=\"%s\"\n", v)
	}
	writeDirectives(&b, u.ServiceConfig)
	if len(u.WantedBy) > 0 {
		fmt.Fprintf(&b, "\n[Install]\nWantedBy=%s\n", strings.Join(u.WantedBy, " "))
	}
	return b.String()
}

func writeDirectives(b *strings.Builder, m map[string]any) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		values, ok := m[k].([]any)
		if !ok {
			values = []any{m[k]}
		}
		for _, v := range values {
			fmt.Fprintf(b, "%s=%v\n", k, v)
		}
	}
}

// verify runs systemd-analyze verify on the machine's units; anything it says (an
// unknown directive is only a warning to it) is an error here.
func verify(t *testing.T, s summary) error {
	t.Helper()
	dir := t.TempDir()
	var files []string
	for name, u := range s.Units {
		f := filepath.Join(dir, name+".service")
		if err := os.WriteFile(f, []byte(unitFile(u)), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	if len(files) == 0 {
		return nil
	}
	sort.Strings(files)
	out, err := exec.Command("systemd-analyze", append([]string{"verify", "--man=no"}, files...)...).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		return fmt.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	return nil
}

// configCheck feeds the unit's TOML (the file FC_CONFIG_FILE names) to the real binary's
// `config check`, in an empty directory and with no other FC_ variable.
func (h harness) configCheck(t *testing.T, u unit, binary string) (string, error) {
	t.Helper()
	file := u.ConfigFile
	if file == "" {
		t.Fatalf("the unit sets no FC_CONFIG_FILE: %v", u.Environment)
	}
	cmd := exec.Command(filepath.Join(h.root, "fc", "bin", binary), "config", "check")
	cmd.Env = []string{"PATH=/usr/bin:/bin", "FC_CONFIG_FILE=" + file}
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	if err != nil {
		toml, _ := os.ReadFile(file)
		return string(out), fmt.Errorf("%s config check: %w\n%s\nthe file:\n%s", binary, err, out, toml)
	}
	return string(out), nil
}

// binaries is where TestMain built fc-coordinator and fc-agent, once for every test
// (set before any test runs, never changed; left in the temporary directory).
var binaries string

func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "fc-nixos-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		for _, b := range []struct{ name, pkg string }{
			{"fc-coordinator", "./coordinator/cmd/fc-coordinator"},
			{"fc-agent", "./agent/cmd/fc-agent"},
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(dir, b.name), b.pkg)
			cmd.Dir = ".."
			if out, err := cmd.CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "go build %s: %v\n%s", b.pkg, err, out)
				return 1
			}
		}
		binaries = dir
		// The enrollment test runs a real coordinator on a throwaway PostgreSQL.
		storagetest.Main(m) // exits; the binaries stay behind, as coordtest's do
		return 0
	}())
}

// fixture puts the stand-in packages' files where the units and scripts name them:
// fc/bin holds the binaries TestMain built, git is the machine's; setpriv, id and
// chown are shims (the test runs as whoever it is, with no user fc).
func fixture(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, name := range []string{"fc-coordinator", "fc-agent"} {
		if err := os.MkdirAll(filepath.Join(root, "fc", "bin"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join(binaries, name), filepath.Join(root, "fc", "bin", name)); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"util-linux/bin/setpriv": "#!/bin/sh\nwhile [ \"$1\" != -- ]; do shift; done\nshift\nexec \"$@\"\n",
		"coreutils/bin/id":       "#!/bin/sh\necho 0\n",
		"coreutils/bin/chown":    "#!/bin/sh\n",
		"coreutils/bin/install":  "#!/bin/sh\nargs=\nwhile [ $# -gt 0 ]; do case $1 in -o|-g) shift 2;; *) args=\"$args $1\"; shift;; esac; done\nexec /usr/bin/install $args\n",
	}
	for name, text := range files {
		writeExec(t, filepath.Join(root, name), text)
	}
	for _, tool := range []string{"mktemp", "rm", "kill"} {
		writeExec(t, filepath.Join(root, "coreutils", "bin", tool), "#!/bin/sh\nexec /usr/bin/"+tool+" \"$@\"\n")
	}
	git, err := exec.LookPath("git")
	if err != nil {
		t.Fatalf("git is needed (apt-get install git): %v", err)
	}
	writeExec(t, filepath.Join(root, "git", "bin", "git"), "#!/bin/sh\nexec "+git+" \"$@\"\n")
	for _, dir := range []string{"nix/bin", "openssh/bin"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func writeExec(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o755); err != nil {
		t.Fatal(err)
	}
}

// runScript writes a script package (writeShellScriptBin) where its path says and
// runs it with args.
func (h harness) runScript(t *testing.T, s script, args ...string) (string, error) {
	t.Helper()
	path := filepath.Join(h.root, s.Name, "bin", s.Name)
	writeExec(t, path, "#!/bin/bash\n"+s.Text)
	cmd := exec.Command(path, args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}
