package realise

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/fc-ci/fc/protocol"
)

// Metadata is what a build declares about itself in its outputs' nix-support
// directories, as Hydra reads it.
type Metadata struct {
	Products    []protocol.BuildProduct
	Metrics     []protocol.BuildMetric
	ReleaseName string
}

// maxMetaFile bounds how much of one nix-support file is read.
const maxMetaFile = 1 << 20

// productLine is Hydra's: type, subtype, a path (quoted when it has spaces), and an
// optional default path.
var productLine = regexp.MustCompile(`^([a-zA-Z0-9_-]+)\s+([a-zA-Z0-9_-]+)\s+("[^"]+"|[^\s"]+)(\s+(\S+))?$`)

var metricName = regexp.MustCompile(`^[a-zA-Z0-9._-]+$`)

// ReadMetadata reads nix-support/hydra-build-products, hydra-metrics and
// hydra-release-name of each output (by name, out first; a later release name does
// not replace an earlier one). Malformed lines and products outside the store are
// skipped, as Hydra does. An output without hydra-build-products is a "nix-build"
// product itself (Hydra adds those for undeclared outputs).
func ReadMetadata(outs map[string]string) (Metadata, error) {
	var m Metadata
	names := make(map[string]string, len(outs))
	for name, path := range outs {
		names[path] = name
	}
	for _, out := range orderedOutputs(outs) {
		dir := filepath.Join(out, "nix-support")
		if _, err := os.Lstat(filepath.Join(dir, "hydra-build-products")); err != nil {
			if p, ok, err := outputProduct(names[out], out); err != nil {
				return m, err
			} else if ok {
				m.Products = append(m.Products, p)
			}
		}
		lines, err := readLines(filepath.Join(dir, "hydra-build-products"))
		if err != nil {
			return m, err
		}
		for _, l := range lines {
			p, ok, err := parseProduct(l)
			if err != nil {
				return m, err
			}
			if ok {
				m.Products = append(m.Products, p)
			}
		}
		if lines, err = readLines(filepath.Join(dir, "hydra-metrics")); err != nil {
			return m, err
		}
		for _, l := range lines {
			if metric, ok := parseMetric(l); ok {
				m.Metrics = append(m.Metrics, metric)
			}
		}
		if lines, err = readLines(filepath.Join(dir, "hydra-release-name")); err != nil {
			return m, err
		}
		if m.ReleaseName == "" && len(lines) > 0 {
			m.ReleaseName = lines[0]
		}
	}
	return m, nil
}

// readLines returns the non-empty, trimmed lines of a file; none if it is missing.
func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) { // an output that is a file
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(io.LimitReader(f, maxMetaFile))
	sc.Buffer(make([]byte, 0, 4096), maxMetaFile)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return lines, nil
}

// parseProduct reads one hydra-build-products line; ok is false for a line Hydra
// would skip (malformed, outside the store, missing).
func parseProduct(line string) (protocol.BuildProduct, bool, error) {
	m := productLine.FindStringSubmatch(line)
	if m == nil {
		return protocol.BuildProduct{}, false, nil
	}
	path := strings.Trim(m[3], `"`)
	if !strings.HasPrefix(path, "/") {
		return protocol.BuildProduct{}, false, nil
	}
	path = filepath.Clean(path)
	if !inStore(path) {
		return protocol.BuildProduct{}, false, nil
	}
	return statProduct(protocol.BuildProduct{Type: m[1], Subtype: m[2], Path: path, Name: filepath.Base(path), DefaultPath: m[5]})
}

// outputProduct is Hydra's automatic product of an output that declares none:
// nix-build, subtype the output's name ("" for out), named as the store path
// without its hash.
func outputProduct(name, path string) (protocol.BuildProduct, bool, error) {
	if !inStore(path) {
		return protocol.BuildProduct{}, false, nil
	}
	base := filepath.Base(path)
	if i := strings.IndexByte(base, '-'); i >= 0 {
		base = base[i+1:]
	}
	if name == "out" {
		name = ""
	}
	return statProduct(protocol.BuildProduct{Type: "nix-build", Subtype: name, Path: path, Name: base})
}

// statProduct checks a product exists within the store and sizes and hashes it when
// it is a regular file.
func statProduct(p protocol.BuildProduct) (protocol.BuildProduct, bool, error) {
	path := p.Path
	// Follow symlinks only within the store: a product never reads outside it.
	real, err := filepath.EvalSymlinks(path)
	if err != nil || !inStore(real) {
		return protocol.BuildProduct{}, false, nil
	}
	st, err := os.Stat(real)
	if err != nil {
		return protocol.BuildProduct{}, false, nil
	}
	if st.Mode().IsRegular() {
		f, err := os.Open(real)
		if err != nil {
			return p, false, fmt.Errorf("hash build product %s: %w", path, err)
		}
		defer f.Close()
		h := sha256.New()
		n, err := io.Copy(h, f)
		if err != nil {
			return p, false, fmt.Errorf("hash build product %s: %w", path, err)
		}
		p.FileSize, p.SHA256 = n, hex.EncodeToString(h.Sum(nil))
	}
	return p, true, nil
}

func inStore(path string) bool {
	rest, ok := strings.CutPrefix(path, StoreDir+"/")
	return ok && rest != "" && !strings.HasPrefix(rest, ".")
}

// parseMetric reads one hydra-metrics line: name, value and an optional unit.
func parseMetric(line string) (protocol.BuildMetric, bool) {
	f := strings.Fields(line)
	if len(f) < 2 || !metricName.MatchString(f[0]) {
		return protocol.BuildMetric{}, false
	}
	v, err := strconv.ParseFloat(f[1], 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) { // JSON has neither
		return protocol.BuildMetric{}, false
	}
	m := protocol.BuildMetric{Name: f[0], Value: v}
	if len(f) >= 3 {
		m.Unit = f[2]
	}
	return m, true
}
