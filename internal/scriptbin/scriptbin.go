// Package scriptbin gives tests the real servers they run (mailpit, SeaweedFS): each
// is installed by a script under scripts/ into a cache kept between runs, which
// prints the binary's path. A test that needs one fails, never skips, when it cannot
// be had.
package scriptbin

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Path runs scripts/<name> (found above the working directory, since go test runs
// in the package's directory) and returns the path it prints; what says what the
// binary is for in a failure.
func Path(t testing.TB, name, what string) string {
	t.Helper()
	script := ""
	for dir, _ := os.Getwd(); dir != filepath.Dir(dir); dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "scripts", name)); err == nil {
			script = filepath.Join(dir, "scripts", name)
			break
		}
	}
	if script == "" {
		t.Fatalf("scripts/%s not found above the working directory", name)
	}
	out, err := exec.Command("bash", script).Output()
	if err != nil {
		var stderr string
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("install %s with scripts/%s: %v\n%s", what, name, err, stderr)
	}
	return strings.TrimSpace(string(out))
}
