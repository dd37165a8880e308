package client_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fc-ci/fc/coordinator/client"
)

// TestHelp: fc help names every command and the exit codes; fc CMD -h its flags.
func TestHelp(t *testing.T) {
	fc := newEnv(t, nil)
	out := fc.ok("help")
	for _, want := range []string{"login [URL] [--key KEY]", "logout", "projects [NAME]", "jobsets PROJECT [JOBSET]",
		"evals PROJECT/JOBSET", "eval ID | trigger PROJECT/JOBSET", "builds [--jobset P/J]", "build ID | restart ID | cancel ID | bump ID",
		"log [-f] ID", "agents [NAME|ID]", "completion bash|zsh|fish",
		"exit codes:", "3  not found (HTTP 404)", "4  fc log -f: the build ended without succeeding", "5  not logged in"} {
		if !strings.Contains(out, want) {
			t.Errorf("fc help does not say %q:\n%s", want, out)
		}
	}
	if out2 := fc.ok("--help"); out2 != out {
		t.Errorf("fc --help differs from fc help")
	}
	out = fc.ok("builds", "-h")
	if !strings.Contains(out, "usage: fc builds") || !strings.Contains(out, "--status") || !strings.Contains(out, "--limit") {
		t.Errorf("fc builds -h:\n%s", out)
	}
	if out := fc.ok("help", "log"); !strings.Contains(out, "-f\tfollow the log") {
		t.Errorf("fc help log:\n%s", out)
	}
	fc.fails(client.ExitUsage, `unknown command "nope"`, "help", "nope")
	if out := fc.ok("version"); out != "dev\n" {
		t.Errorf("fc version: %q", out)
	}
}

// TestCompletion: the scripts parse in their shells, and bash's completes commands
// and flags.
func TestCompletion(t *testing.T) {
	fc := newEnv(t, nil)
	dir := t.TempDir()
	for _, sh := range []string{"bash", "zsh", "fish"} {
		script := fc.ok("completion", sh)
		file := filepath.Join(dir, "fc."+sh)
		if err := os.WriteFile(file, []byte(script), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := exec.LookPath(sh); err != nil {
			t.Logf("%s is not installed: its script is not parsed", sh)
			continue
		}
		check := []string{"-n", file}
		if sh == "fish" {
			check = []string{"--no-execute", file}
		}
		if out, err := exec.Command(sh, check...).CombinedOutput(); err != nil {
			t.Errorf("%s %v: %v\n%s", sh, check, err, out)
		}
	}
	complete := func(words ...string) string {
		script := `source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _fc; echo "${COMPREPLY[*]}"`
		out, err := exec.Command("bash", append([]string{"-c", script, "bash", filepath.Join(dir, "fc.bash")}, words...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("bash completion of %q: %v\n%s", words, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for words, want := range map[string]string{
		"fc bu":          "builds build",
		"fc build r":     "restart",
		"fc log -":       "-f --follow --json",
		"fc builds --st": "--status",
		"fc completion ": "bash zsh fish",
		"fc eval t":      "trigger",
	} {
		if got := complete(strings.Split(words, " ")...); got != want {
			t.Errorf("bash completes %q to %q, want %q", words, got, want)
		}
	}
	if _, err := exec.LookPath("fish"); err == nil {
		script := `source $argv[1]; complete -C "fc bu"; complete -C "fc build "; complete -C "fc builds --st"`
		out, err := exec.Command("fish", "-c", script, filepath.Join(dir, "fc.fish")).CombinedOutput()
		got := strings.Fields(string(out))
		want := "build show a build, or restart, cancel or bump it builds list builds bump cancel restart --status"
		if err != nil || strings.Join(got, " ") != want {
			t.Errorf("fish completes to %q (%v), want %q", got, err, want)
		}
	}
	if _, err := exec.LookPath("zsh"); err == nil {
		script := `autoload -Uz compinit && compinit -u -d "$2"; source "$1"; print -r -- ${_comps[fc]}`
		out, err := exec.Command("zsh", "-c", script, "zsh", filepath.Join(dir, "fc.zsh"), filepath.Join(dir, "zcompdump")).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "_fc" {
			t.Errorf("zsh does not complete fc with _fc after sourcing the script: %q %v", out, err)
		}
	}
	fc.fails(client.ExitUsage, `no completion for "tcsh"`, "completion", "tcsh")
}
