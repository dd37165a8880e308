package evaluator

import (
	"fmt"
	"path/filepath"
	"strings"
)

// AllowedInputPathsKey is the agent's setting that lists the directories path inputs
// may name.
const AllowedInputPathsKey = "agent.allowed_input_paths"

// checkPathInput decides whether a path input may be read, on this machine: value must
// be absolute; with "..", "//" and every symlink resolved it must lie at or below one
// of allowed (themselves resolved), and, whatever allowed says, neither lie inside nor
// contain any of protected (the agent's state directory, its key: what the agent
// must never hand to an expression). It returns the resolved path, which is what
// the evaluation reads. Refusals wrap ErrEvalFailed: the same inputs fail the same way.
func checkPathInput(name, value string, allowed, protected []string) (string, error) {
	refuse := func(format string, args ...any) (string, error) {
		return "", fmt.Errorf("%w: path input %q: %s", ErrEvalFailed, name, fmt.Sprintf(format, args...))
	}
	if !filepath.IsAbs(value) {
		return refuse("%q is not an absolute path", value)
	}
	if len(allowed) == 0 {
		return refuse("path inputs are disabled on this agent; its %s lists the directories they may name", AllowedInputPathsKey)
	}
	clean := filepath.Clean(value)
	guarded := resolvedForms(protected)
	if overlaps(clean, guarded) {
		return refuse("%q reaches the agent's own state (its state directory or key), which no input may read", clean)
	}
	resolved, err := filepath.EvalSymlinks(clean)
	if err != nil {
		return refuse("%q cannot be read: %v", clean, err)
	}
	if overlaps(resolved, guarded) {
		return refuse("%q (%q with symlinks resolved) reaches the agent's own state (its state directory or key), which no input may read", clean, resolved)
	}
	for _, root := range resolvedForms(allowed) {
		if within(resolved, root) {
			return resolved, nil
		}
	}
	if resolved != clean {
		return refuse("%q (%q with symlinks resolved) is not under a directory of the agent's %s", clean, resolved, AllowedInputPathsKey)
	}
	return refuse("%q is not under a directory of the agent's %s", clean, AllowedInputPathsKey)
}

// resolvedForms is every path both as written (absolute, cleaned) and with its
// symlinks resolved (when it exists).
func resolvedForms(paths []string) []string {
	var out []string
	for _, p := range paths {
		if p == "" {
			continue
		}
		abs, err := filepath.Abs(p)
		if err != nil {
			continue
		}
		out = append(out, abs)
		if r, err := filepath.EvalSymlinks(abs); err == nil && r != abs {
			out = append(out, r)
		}
	}
	return out
}

// within reports whether p is root or lies below it (both clean and absolute).
func within(p, root string) bool {
	return root == "/" || p == root || strings.HasPrefix(p, root+"/")
}

// overlaps reports whether p lies inside, or contains, any of guarded.
func overlaps(p string, guarded []string) bool {
	for _, g := range guarded {
		if within(p, g) || within(g, p) {
			return true
		}
	}
	return false
}
