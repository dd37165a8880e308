// Package eval is the agent's evaluator: it checks a repository out at an exact
// revision, evaluates a flake (hydraJobs, falling back to checks) or a legacy file
// (release.nix) into jobs with per-attribute errors, and walks the derivation graph to
// find what must be built, asking the coordinator's cache what it already holds.
package eval

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
	// SSHKey or HTTPSToken fetch private repositories (never logged).
	SSHKey     string
	HTTPSToken string
}

// Input is a jobset input passed to a legacy expression as Hydra passes it: string
// and boolean inputs as values; git inputs as { outPath, rev, shortRev, revCount }.
type Input struct {
	Name  string
	Type  string // string, boolean, git, path
	Value string
}

// Meta is the part of meta FC uses.
type Meta struct {
	Description        string `json:"description,omitempty"`
	License            string `json:"license,omitempty"`
	Homepage           string `json:"homepage,omitempty"`
	Timeout            int    `json:"timeout,omitempty"`
	MaxSilent          int    `json:"max_silent,omitempty"`
	SchedulingPriority int    `json:"scheduling_priority,omitempty"`
}

// Job is one evaluated job.
type Job struct {
	Attr                   string            `json:"attr"` // dotted attribute path
	Name                   string            `json:"name"`
	DrvPath                string            `json:"drv_path"`
	Outputs                map[string]string `json:"outputs"`
	System                 string            `json:"system"`
	RequiredSystemFeatures []string          `json:"required_system_features"`
	Meta                   Meta              `json:"meta"`
	IsAggregate            bool              `json:"is_aggregate"`
	// Constituents of an aggregate: job names (dotted) or drv paths.
	Constituents []string `json:"constituents,omitempty"`
}

// AttrError is an attribute that failed to evaluate.
type AttrError struct {
	Attr    string `json:"attr"`
	Message string `json:"message"`
}

// Result is an evaluation's outcome.
type Result struct {
	Jobs            []Job       `json:"jobs"`
	Errors          []AttrError `json:"errors"`
	CheckoutSeconds float64     `json:"checkout_seconds"`
	EvalSeconds     float64     `json:"eval_seconds"`
}

// Node is a derivation that must be built: its outputs are not in the coordinator's
// cache (nor upstream).
type Node struct {
	DrvPath          string            `json:"drv_path"`
	System           string            `json:"system"`
	RequiredFeatures []string          `json:"required_features"`
	PreferLocalBuild bool              `json:"prefer_local_build"`
	Outputs          map[string]string `json:"outputs"`
	// Inputs are the drv paths of input derivations that are also nodes (edges).
	Inputs []string `json:"inputs"`
}
