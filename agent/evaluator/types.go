// Package evaluator evaluates jobsets on this agent: it checks a repository out at
// an exact revision, evaluates a flake (hydraJobs, falling back to checks) or a
// legacy file (release.nix) into jobs with per-attribute errors, and walks the
// derivation graph to find what must be built, asking the coordinator's cache what it
// already holds. It runs Nix and git only (git through internal/gitcmd);
// agent/work.EvalRunner takes an evaluation from the coordinator and reports it.
// Not to be confused with coordinator/evalqueue, which decides on the coordinator
// when a jobset is evaluated and on which agent, and stores what agents report.
package evaluator

import "github.com/fc-ci/fc/protocol"

// Request says what to evaluate.
type Request struct {
	RepoURL  string // as the project gives it: URL or absolute path
	Revision string // the exact commit to evaluate
	Branch   string
	// FlakeMode evaluates <checkout>#<Expression> (hydraJobs by default, checks as a
	// fallback); otherwise Expression is a file in the checkout (release.nix).
	FlakeMode  bool
	Expression string
	Inputs     []Input
	// Tuning, from the coordinator's [evaluator] section.
	Workers      int
	MaxMemoryMB  int
	RestrictEval bool
	AllowIFD     bool
	// AllowedInputPaths (agent.allowed_input_paths) are the directories path inputs
	// may name, symlinks resolved; empty: path inputs are refused. ProtectedPaths
	// (the agent's state directory and key) are never read by one, whatever
	// AllowedInputPaths says.
	AllowedInputPaths []string
	ProtectedPaths    []string
	// SSHKey or HTTPSToken fetch private repositories (never logged). They are used
	// only for URLs with the scheme, host and port of RepoURL.
	SSHKey     string
	HTTPSToken string
	// EvalStore is the root directory of a local Nix store that evaluation writes
	// .drv files and sources to (nix --eval-store), rather than Nix's own store:
	// they go to the coordinator's cache, from which every builder realises them, so
	// they need not be in this machine's store too, and a store of the agent's own
	// on tmpfs writes them several times faster. Leave it empty with AllowIFD:
	// nix-eval-jobs would build imported derivations in it. Empty: Nix's own store.
	EvalStore string
	// CacheDir keeps the mirrors of git inputs (see Checkout); default: a directory
	// under os.TempDir().
	CacheDir string
	// OnDrv, when set, is called with each job's drv path as soon as the evaluator
	// has written it, while the evaluation goes on (from several goroutines), so the
	// caller can walk the graph and upload derivations meanwhile. Every job of the
	// result has been passed to it by the time Evaluate returns, and maybe some more.
	OnDrv func(drvPath string)
	// OnJob, when set, is called with each job that is not an aggregate as soon as
	// it is as it will be in the result (from several goroutines, after OnDrv of its
	// drv path), so the caller can report it while the evaluation goes on. Every such
	// job of the result has been passed to it, once, by the time Evaluate returns.
	// Aggregates are in the result only: their constituents are resolved at the end,
	// and one whose constituents failed becomes an error.
	OnJob func(Job)
}

// Input is a jobset input passed to a legacy expression as Hydra passes it: string
// and boolean inputs as values; git inputs as { outPath, rev, shortRev, revCount }.
type Input struct {
	Name  string
	Type  string // string, boolean, git, path
	Value string
}

// The evaluation's results travel to the coordinator as they are: these are the wire
// protocol's types.
type (
	// Meta is the part of meta FC uses.
	Meta = protocol.EvalMeta
	// Job is one evaluated job; Attr is its dotted attribute path.
	Job = protocol.EvalJob
	// AttrError is an attribute that failed to evaluate.
	AttrError = protocol.EvalAttrError
	// Node is a derivation that must be built: its outputs are in neither the
	// coordinator's cache nor an upstream; Inputs are its edges to other nodes.
	Node = protocol.EvalNode
)

// Result is an evaluation's outcome.
type Result struct {
	Jobs            []Job       `json:"jobs"`
	Errors          []AttrError `json:"errors"`
	CheckoutSeconds float64     `json:"checkout_seconds"`
	EvalSeconds     float64     `json:"eval_seconds"`
}
