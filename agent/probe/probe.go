// Package probe finds out what this machine can build (from Nix's own configuration)
// and how busy it is.
package probe

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// Nix is what the local Nix says about itself.
type Nix struct {
	Version  string
	Systems  []string // system, then extra-platforms
	Features []string // system-features
	// NetrcFile is Nix's netrc-file: the credentials it presents to binary caches.
	NetrcFile string
}

type setting struct {
	Value json.RawMessage `json:"value"`
}

// ProbeNix runs `nix show-config --json` (Nix 2.8 needs the nix-command feature; newer
// Nix also has `nix config show`) and `nix --version`.
func ProbeNix(ctx context.Context) (Nix, error) {
	var out []byte
	var err error
	for _, args := range [][]string{
		{"--extra-experimental-features", "nix-command", "show-config", "--json"},
		{"--extra-experimental-features", "nix-command", "config", "show", "--json"},
	} {
		out, err = exec.CommandContext(ctx, "nix", args...).Output()
		if err == nil {
			break
		}
	}
	if err != nil {
		return Nix{}, fmt.Errorf("read Nix configuration (nix show-config): %w", err)
	}
	var conf map[string]setting
	if err := json.Unmarshal(out, &conf); err != nil {
		return Nix{}, fmt.Errorf("parse nix show-config output: %w", err)
	}
	n := Nix{}
	var system string
	if err := json.Unmarshal(conf["system"].Value, &system); err != nil || system == "" {
		return Nix{}, fmt.Errorf("nix show-config has no system")
	}
	n.Systems = append(n.Systems, system)
	n.Systems = appendUnique(n.Systems, stringList(conf["extra-platforms"].Value)...)
	n.Features = stringList(conf["system-features"].Value)
	_ = json.Unmarshal(conf["netrc-file"].Value, &n.NetrcFile)
	v, err := exec.CommandContext(ctx, "nix", "--version").Output()
	if err != nil {
		return Nix{}, fmt.Errorf("nix --version: %w", err)
	}
	n.Version = ParseVersion(string(v))
	return n, nil
}

// ParseVersion takes "nix (Nix) 2.8.0" and returns "2.8.0".
func ParseVersion(s string) string {
	f := strings.Fields(strings.TrimSpace(s))
	if len(f) == 0 {
		return ""
	}
	return f[len(f)-1]
}

// stringList reads a setting that is a list, or a space-separated string (older Nix).
func stringList(raw json.RawMessage) []string {
	var l []string
	if json.Unmarshal(raw, &l) == nil {
		return l
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return strings.Fields(s)
	}
	return nil
}

func appendUnique(dst []string, items ...string) []string {
	for _, it := range items {
		if it != "" && !slices.Contains(dst, it) {
			dst = append(dst, it)
		}
	}
	return dst
}

// Load1 is the one-minute load average.
func Load1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// FreeDisk is the space available at path (the Nix store), measured on the nearest
// existing directory: a fresh machine has no /nix/store before its first build.
func FreeDisk(path string) int64 {
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		var st syscall.Statfs_t
		if err := syscall.Statfs(p, &st); err == nil {
			return int64(st.Bavail) * int64(st.Bsize)
		}
		if p == filepath.Dir(p) {
			return 0
		}
	}
}
