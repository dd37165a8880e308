package evaluator

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/nix-community/go-nix/pkg/derivation"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

// presentBatch is how many output paths one question to the cache carries.
const presentBatch = 1000

// drvInfo is the part of a .drv the graph needs.
type drvInfo struct {
	system      string
	features    []string
	preferLocal bool
	outputs     map[string]string
	outputCA    map[string]string // fixed outputs' content addresses
	inputs      []string          // input derivations, sorted
}

// readDrv parses a .drv file from the store whose root directory is root ("" for
// Nix's own store).
func readDrv(root, path string) (*drvInfo, error) {
	f, err := os.Open(root + path)
	if err != nil {
		return nil, fmt.Errorf("read derivation: %w", err)
	}
	defer f.Close()
	d, err := derivation.ReadDerivation(f)
	if err != nil {
		return nil, fmt.Errorf("parse derivation %s: %w", path, err)
	}
	info := &drvInfo{
		system:      d.Platform,
		features:    strings.Fields(d.Env["requiredSystemFeatures"]),
		preferLocal: d.Env["preferLocalBuild"] == "1",
		outputs:     make(map[string]string, len(d.Outputs)),
		inputs:      make([]string, 0, len(d.InputDerivations)),
	}
	if s, ok := d.Env["__json"]; ok {
		// Structured attributes: the settings are in the JSON, not the environment.
		var attrs struct {
			RequiredSystemFeatures []string `json:"requiredSystemFeatures"`
			PreferLocalBuild       bool     `json:"preferLocalBuild"`
		}
		if err := json.Unmarshal([]byte(s), &attrs); err == nil {
			info.features = attrs.RequiredSystemFeatures
			info.preferLocal = attrs.PreferLocalBuild
		}
	}
	if info.features == nil {
		info.features = []string{}
	}
	for name, o := range d.Outputs {
		info.outputs[name] = o.Path
		if o.Hash != "" {
			ca, err := fixedOutputCA(o.HashAlgorithm, o.Hash)
			if err != nil {
				return nil, fmt.Errorf("derivation %s, output %s: %w", path, name, err)
			}
			if info.outputCA == nil {
				info.outputCA = map[string]string{}
			}
			info.outputCA[name] = ca
		}
	}
	for in := range d.InputDerivations {
		info.inputs = append(info.inputs, in)
	}
	sort.Strings(info.inputs)
	return info, nil
}

// fixedOutputCA is the content address, as narinfos write it, of a fixed output whose
// derivation declares outputHashAlgo algo ("r:sha256", "sha256", …) and hash (base16).
func fixedOutputCA(algo, hash string) (string, error) {
	method := "fixed:"
	if a, ok := strings.CutPrefix(algo, "r:"); ok {
		method, algo = "fixed:r:", a
	}
	a, err := nixhash.ParseAlgorithm(algo)
	if err != nil {
		return "", fmt.Errorf("output hash algorithm %q: %w", algo, err)
	}
	digest, err := hex.DecodeString(hash)
	if err != nil {
		return "", fmt.Errorf("output hash %q is not base16: %w", hash, err)
	}
	h, err := nixhash.NewHash(a, digest)
	if err != nil {
		return "", fmt.Errorf("output hash %q: %w", hash, err)
	}
	return method + h.Format(nixhash.NixBase32, true), nil
}

// Graph walks the .drv closure of the jobs and returns the derivations that must be
// built: those with an output the coordinator's cache does not hold. present answers,
// for up to presentBatch output paths at a time, which the cache holds. A derivation
// whose outputs are all present is not a node and its inputs are not visited (they
// need not be built for it). Each node's Inputs are its input derivations that are
// nodes too. Nodes are sorted by drv path.
func Graph(ctx context.Context, jobs []Job, present func(ctx context.Context, outputPaths []string) (map[string]bool, error)) ([]Node, error) {
	g := NewGrapher("", present)
	drvs := make([]string, 0, len(jobs))
	for _, j := range jobs {
		drvs = append(drvs, j.DrvPath)
	}
	if _, err := g.Add(ctx, drvs); err != nil {
		return nil, err
	}
	return g.Nodes(), nil
}

// Grapher builds the graph of Graph a few jobs at a time, so that it can follow an
// evaluation while it runs: Add walks from new jobs' derivations (those already seen
// are skipped) and returns the nodes it found; Nodes is the graph of everything
// added, the same as Graph of all those jobs.
type Grapher struct {
	root    string // the store's root directory ("" for Nix's own store)
	present func(ctx context.Context, outputPaths []string) (map[string]bool, error)
	seen    map[string]bool
	infos   map[string]*drvInfo
	nodes   []string
	isNode  map[string]bool
}

// NewGrapher starts an empty graph of the derivations in the store whose root
// directory is root (Request.EvalStore; "" for Nix's own store); present is as for
// Graph.
func NewGrapher(root string, present func(ctx context.Context, outputPaths []string) (map[string]bool, error)) *Grapher {
	return &Grapher{root: root, present: present, seen: map[string]bool{}, infos: map[string]*drvInfo{}, isNode: map[string]bool{}}
}

// Add walks from the derivations drvs (jobs' drv paths; empty ones are skipped) and
// returns the nodes it found.
func (g *Grapher) Add(ctx context.Context, drvs []string) ([]string, error) {
	var frontier []string
	for _, d := range drvs {
		if d != "" && !g.seen[d] {
			g.seen[d] = true
			frontier = append(frontier, d)
		}
	}
	var found []string
	// Breadth first, a level at a time: read the level's derivations, ask the cache
	// about all their outputs in batches, and descend only from those that must be built.
	for len(frontier) > 0 {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		level, err := readDrvs(ctx, g.root, frontier)
		if err != nil {
			return nil, err
		}
		var outs []string
		for i, p := range frontier {
			g.infos[p] = level[i]
			for _, o := range level[i].outputs {
				if o != "" {
					outs = append(outs, o)
				}
			}
		}
		have := make(map[string]bool, len(outs))
		for start := 0; start < len(outs); start += presentBatch {
			batch := outs[start:min(start+presentBatch, len(outs))]
			ans, err := g.present(ctx, batch)
			if err != nil {
				return nil, fmt.Errorf("ask the cache which outputs it holds: %w", err)
			}
			for _, o := range batch {
				if ans[o] {
					have[o] = true
				}
			}
		}
		var next []string
		for _, p := range frontier {
			info := g.infos[p]
			build := false
			for _, o := range info.outputs {
				if o == "" || !have[o] {
					build = true
					break
				}
			}
			if !build {
				continue
			}
			g.isNode[p] = true
			g.nodes = append(g.nodes, p)
			found = append(found, p)
			for _, in := range info.inputs {
				if !g.seen[in] {
					g.seen[in] = true
					next = append(next, in)
				}
			}
		}
		frontier = next
	}
	return found, nil
}

// Nodes is the graph of everything added so far, sorted by drv path.
func (g *Grapher) Nodes() []Node { return g.nodesOf(slices.Clone(g.nodes)) }

// NodesFrom is the part of the graph the derivations drvs need: the nodes among them
// and the nodes those depend on. The evaluator reports jobs it later drops (an
// aggregate whose constituents failed): their derivations must not become steps.
func (g *Grapher) NodesFrom(drvs []string) []Node {
	reached := map[string]bool{}
	var stack []string
	for _, d := range drvs {
		if g.isNode[d] && !reached[d] {
			reached[d] = true
			stack = append(stack, d)
		}
	}
	for len(stack) > 0 {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, in := range g.infos[d].inputs {
			if g.isNode[in] && !reached[in] {
				reached[in] = true
				stack = append(stack, in)
			}
		}
	}
	return g.nodesOf(slices.Collect(maps.Keys(reached)))
}

// NodesFromExcept is NodesFrom for a graph reported in parts: without the nodes in
// sent, nor below them (a part holds whole closures, so what a sent node needs was
// sent with it).
func (g *Grapher) NodesFromExcept(drvs []string, sent map[string]bool) []Node {
	reached := map[string]bool{}
	var out, stack []string
	for _, d := range drvs {
		if g.isNode[d] && !sent[d] && !reached[d] {
			reached[d] = true
			stack = append(stack, d)
		}
	}
	for len(stack) > 0 {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		out = append(out, d)
		for _, in := range g.infos[d].inputs {
			if g.isNode[in] && !sent[in] && !reached[in] {
				reached[in] = true
				stack = append(stack, in)
			}
		}
	}
	return g.nodesOf(out)
}

// Walked reports whether the derivation drv has been walked (by an Add that returned).
func (g *Grapher) Walked(drv string) bool { return g.infos[drv] != nil }

// nodesOf is the given nodes, with their edges to other nodes, sorted by drv path.
func (g *Grapher) nodesOf(paths []string) []Node {
	sort.Strings(paths)
	out := make([]Node, 0, len(paths))
	for _, p := range paths {
		info := g.infos[p]
		n := Node{DrvPath: p, System: info.system, RequiredFeatures: info.features,
			PreferLocalBuild: info.preferLocal, Outputs: info.outputs, OutputCA: info.outputCA, Inputs: []string{}}
		for _, in := range info.inputs {
			if g.isNode[in] {
				n.Inputs = append(n.Inputs, in)
			}
		}
		out = append(out, n)
	}
	return out
}

// readDrvs reads derivations side by side.
func readDrvs(ctx context.Context, root string, paths []string) ([]*drvInfo, error) {
	out := make([]*drvInfo, len(paths))
	errs := make([]error, len(paths))
	var wg sync.WaitGroup
	workers := min(8, len(paths))
	per := (len(paths) + workers - 1) / workers
	for w := range workers {
		wg.Go(func() {
			for i := w * per; i < min((w+1)*per, len(paths)); i++ {
				if ctx.Err() != nil {
					errs[i] = ctx.Err()
					return
				}
				out[i], errs[i] = readDrv(root, paths[i])
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
