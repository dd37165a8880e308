package evaluator

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
)

// evaluatedJobset evaluates the common job set as a legacy file.
func evaluatedJobset(t *testing.T) Result {
	t.Helper()
	dir := t.TempDir()
	release := "{ greeting ? \"none\", flag ? false, src ? null }:\n" + jobsetNix(salt(t), "builtins.currentSystem", "recurseForDerivations = true;")
	for name, content := range map[string]string{"release.nix": release, "lib.nix": "{ }"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	res, err := Evaluate(testCtx(t), dir, Request{})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func drvsOnly(paths []string) []string {
	var out []string
	for _, p := range paths {
		if strings.HasSuffix(p, ".drv") {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

// recordingPresent answers from have and records the batch sizes it was asked.
type recordingPresent struct {
	mu      sync.Mutex
	have    map[string]bool
	batches []int
	asked   map[string]bool
}

func (r *recordingPresent) present(_ context.Context, paths []string) (map[string]bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, len(paths))
	if r.asked == nil {
		r.asked = map[string]bool{}
	}
	out := map[string]bool{}
	for _, p := range paths {
		r.asked[p] = true
		if r.have[p] {
			out[p] = true
		}
	}
	return out, nil
}

func TestGraph_NothingCachedIsTheDrvClosure(t *testing.T) {
	t.Parallel()
	needNix(t)
	res := evaluatedJobset(t)
	var roots []string
	for _, j := range res.Jobs {
		roots = append(roots, j.DrvPath)
	}
	want := drvsOnly(strings.Fields(run(t, "", "nix-store", append([]string{"--query", "--requisites"}, roots...)...)))

	p := &recordingPresent{}
	nodes, err := Graph(testCtx(t), res.Jobs, p.present)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	byDrv := map[string]Node{}
	for _, n := range nodes {
		got = append(got, n.DrvPath)
		byDrv[n.DrvPath] = n
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("nodes:\n%v\nnix-store -qR:\n%v", got, want)
	}
	for _, n := range nodes {
		refs := drvsOnly(strings.Fields(run(t, "", "nix-store", "--query", "--references", n.DrvPath)))
		if refs == nil {
			refs = []string{}
		}
		if !reflect.DeepEqual(n.Inputs, refs) {
			t.Errorf("%s: inputs %v, nix-store --references %v", n.DrvPath, n.Inputs, refs)
		}
	}
	jobs := jobsByAttr(res)
	if n := byDrv[jobs["arm"].DrvPath]; n.System != "aarch64-linux" {
		t.Errorf("arm node = %+v", n)
	}
	if n := byDrv[jobs["kvm"].DrvPath]; !reflect.DeepEqual(n.RequiredFeatures, []string{"kvm"}) || n.System != "x86_64-linux" {
		t.Errorf("kvm node = %+v", n)
	}
	if n := byDrv[jobs["local"].DrvPath]; !n.PreferLocalBuild {
		t.Errorf("local node = %+v", n)
	}
	if n := byDrv[jobs["success"].DrvPath]; n.PreferLocalBuild || len(n.RequiredFeatures) != 0 || n.RequiredFeatures == nil {
		t.Errorf("success node = %+v", n)
	}
	if n := byDrv[jobs["multi"].DrvPath]; !reflect.DeepEqual(n.Outputs, jobs["multi"].Outputs) {
		t.Errorf("multi node outputs = %v, job outputs %v", n.Outputs, jobs["multi"].Outputs)
	}
	if n := byDrv[jobs["diamond.top"].DrvPath]; !reflect.DeepEqual(n.Inputs, sorted(jobs["diamond.left"].DrvPath, jobs["diamond.right"].DrvPath)) {
		t.Errorf("diamond top inputs = %v", n.Inputs)
	}
	for _, b := range p.batches {
		if b > presentBatch || b == 0 {
			t.Errorf("asked the cache about %d paths at once", b)
		}
	}
}

func sorted(s ...string) []string { sort.Strings(s); return s }

func TestGraph_CachedOutputsAreNotNodesNorDescended(t *testing.T) {
	t.Parallel()
	needNix(t)
	res := evaluatedJobset(t)
	jobs := jobsByAttr(res)
	chain := jobs["chain"].DrvPath
	closure := drvsOnly(strings.Fields(run(t, "", "nix-store", "--query", "--requisites", chain)))
	var base, middle string
	for _, d := range closure {
		switch {
		case strings.HasSuffix(d, "-chain-base.drv"):
			base = d
		case strings.HasSuffix(d, "-chain-middle.drv"):
			middle = d
		}
	}
	if base == "" || middle == "" {
		t.Fatalf("chain closure %v", closure)
	}
	outputsOf := func(drv string) []string {
		return strings.Fields(run(t, "", "nix-store", "--query", "--outputs", drv))
	}

	// The chain's base is cached: not a node, and the middle has no edge to it.
	p := &recordingPresent{have: map[string]bool{}}
	for _, o := range outputsOf(base) {
		p.have[o] = true
	}
	nodes, err := Graph(testCtx(t), []Job{jobs["chain"]}, p.present)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 2 || nodes[0].DrvPath == base || nodes[1].DrvPath == base {
		t.Fatalf("nodes = %+v, want chain-middle and chain-top", nodes)
	}
	for _, n := range nodes {
		for _, in := range n.Inputs {
			if in == base {
				t.Errorf("%s has an edge to the cached base", n.DrvPath)
			}
		}
		if n.DrvPath == chain && !reflect.DeepEqual(n.Inputs, []string{middle}) {
			t.Errorf("chain top inputs = %v, want [%s]", n.Inputs, middle)
		}
	}

	// The middle is cached: the base is neither a node nor even asked about.
	p = &recordingPresent{have: map[string]bool{}}
	for _, o := range outputsOf(middle) {
		p.have[o] = true
	}
	nodes, err = Graph(testCtx(t), []Job{jobs["chain"]}, p.present)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 || nodes[0].DrvPath != chain || len(nodes[0].Inputs) != 0 {
		t.Errorf("nodes = %+v, want only chain-top without edges", nodes)
	}
	for _, o := range outputsOf(base) {
		if p.asked[o] {
			t.Errorf("asked about %s below a cached derivation", o)
		}
	}

	// Everything cached: nothing to build.
	p = &recordingPresent{have: map[string]bool{}}
	for _, o := range outputsOf(chain) {
		p.have[o] = true
	}
	if nodes, err = Graph(testCtx(t), []Job{jobs["chain"]}, p.present); err != nil || len(nodes) != 0 {
		t.Errorf("nodes = %+v, err = %v", nodes, err)
	}

	// A multi-output derivation with one output missing must be built.
	multi := jobs["multi"]
	p = &recordingPresent{have: map[string]bool{multi.Outputs["out"]: true, multi.Outputs["dev"]: true}}
	if nodes, err = Graph(testCtx(t), []Job{multi}, p.present); err != nil || len(nodes) != 1 {
		t.Errorf("multi with doc missing: nodes = %+v, err = %v", nodes, err)
	}
}

func TestGraph_PresentErrorFails(t *testing.T) {
	t.Parallel()
	needNix(t)
	res := evaluatedJobset(t)
	_, err := Graph(testCtx(t), res.Jobs, func(context.Context, []string) (map[string]bool, error) {
		return nil, os.ErrDeadlineExceeded
	})
	if err == nil {
		t.Fatal("no error")
	}
}

// The evaluating agent walks the graph a few jobs at a time while the evaluator runs,
// in whatever order the jobs come: the graph must be the same as one walk of them all,
// and each node must be found by exactly one Add.
func TestGrapher_JobsAddedInPiecesGiveTheSameGraph(t *testing.T) {
	t.Parallel()
	needNix(t)
	res := evaluatedJobset(t)
	p := &recordingPresent{have: map[string]bool{}}
	want, err := Graph(testCtx(t), res.Jobs, p.present)
	if err != nil {
		t.Fatal(err)
	}
	if len(want) < 3 {
		t.Fatalf("the job set has only %d nodes", len(want))
	}
	// Last job first, one at a time, each job twice (a walker that restarts reports
	// jobs again), and an empty drv path (an aggregate without a derivation).
	g := NewGrapher("", p.present)
	found := map[string]int{}
	for i := len(res.Jobs) - 1; i >= 0; i-- {
		for range 2 {
			nodes, err := g.Add(testCtx(t), []string{res.Jobs[i].DrvPath, ""})
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range nodes {
				found[n]++
			}
		}
	}
	if got := g.Nodes(); !reflect.DeepEqual(got, want) {
		t.Fatalf("graph added in pieces:\n%+v\nwalked at once:\n%+v", got, want)
	}
	for _, n := range want {
		if found[n.DrvPath] != 1 {
			t.Errorf("%s found by %d Adds, want 1", n.DrvPath, found[n.DrvPath])
		}
	}
	if len(found) != len(want) {
		t.Errorf("Add found %d nodes, the graph has %d", len(found), len(want))
	}
	// A job the evaluator reported and then dropped (an aggregate whose constituents
	// failed): what the others need is the graph of the others alone.
	var kept []Job
	var keptDrvs []string
	for _, j := range res.Jobs {
		if j.Attr != "diamond.top" {
			kept = append(kept, j)
			keptDrvs = append(keptDrvs, j.DrvPath)
		}
	}
	wantKept, err := Graph(testCtx(t), kept, p.present)
	if err != nil {
		t.Fatal(err)
	}
	if len(wantKept) >= len(want) {
		t.Fatalf("dropping diamond.top leaves %d of %d nodes: the job set changed?", len(wantKept), len(want))
	}
	if got := g.NodesFrom(keptDrvs); !reflect.DeepEqual(got, wantKept) {
		t.Errorf("graph of the kept jobs:\n%+v\nwalked from them alone:\n%+v", got, wantKept)
	}
}

// A fixed-output derivation's node declares each output's content address, written
// as Nix writes it for the built path; input-addressed outputs declare none.
func TestGraph_FixedOutputsDeclareTheirContentAddress(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := salt(t)
	file := filepath.Join(dir, "default.nix")
	expr := `let fod = name: mode: algo: hash: script: derivation { name = "${name}-` + s + `"; system = builtins.currentSystem;
    builder = "/bin/sh"; args = [ "-c" script ]; outputHashMode = mode; outputHashAlgo = algo; outputHash = hash; };
in {
  flat = fod "flat" "flat" "sha512" (builtins.hashString "sha512" "hello\n") "echo hello > $out";
  plain = derivation { name = "plain-` + s + `"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; };
}`
	if err := os.WriteFile(file, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	drvs := map[string]string{}
	for _, attr := range []string{"flat", "plain"} {
		out, err := exec.Command("nix-instantiate", file, "-A", attr).Output()
		if err != nil {
			t.Fatal(err)
		}
		drvs[attr] = strings.TrimSpace(string(out))
	}
	nodes, err := Graph(testCtx(t), []Job{{DrvPath: drvs["flat"]}, {DrvPath: drvs["plain"]}},
		func(context.Context, []string) (map[string]bool, error) { return map[string]bool{}, nil })
	if err != nil {
		t.Fatal(err)
	}
	built, err := exec.Command("nix-build", file, "-A", "flat", "--no-out-link", "--option", "substituters", "").Output()
	if err != nil {
		t.Fatal(err)
	}
	info, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "path-info", "--json", strings.TrimSpace(string(built))).Output()
	if err != nil {
		t.Fatal(err)
	}
	var pis []struct {
		CA string `json:"ca"`
	}
	if err := json.Unmarshal(info, &pis); err != nil || len(pis) != 1 || pis[0].CA == "" {
		t.Fatalf("nix path-info: %s (%v)", info, err)
	}
	for _, n := range nodes {
		switch n.DrvPath {
		case drvs["flat"]:
			if n.OutputCA["out"] != pis[0].CA {
				t.Errorf("flat output's content address %q, Nix says %q", n.OutputCA["out"], pis[0].CA)
			}
		case drvs["plain"]:
			if len(n.OutputCA) != 0 {
				t.Errorf("input-addressed output declares %v", n.OutputCA)
			}
		}
	}
}
