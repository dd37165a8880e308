package protocol

// Stream kinds for evaluation, opened by the agent.
const (
	// StreamPresent asks which output paths the coordinator's cache (or an upstream)
	// holds: one PresentRequest, one PresentAnswer.
	StreamPresent = "present"
	// StreamEvalReport reports an evaluation: an EvalReport, then EvalBatch frames
	// until one has Done, then the coordinator's EvalVerdict.
	StreamEvalReport = "eval-report"
	// StreamEvalStream reports an evaluation while it runs (an addition: no version
	// change). The agent opens it when the evaluation starts and sends an EvalReport
	// of which only Work counts; the coordinator answers an EvalVerdict (Accepted: the
	// lease is current, go on), then stores the EvalBatch frames that follow as they
	// arrive, out of sight, until one has Done and Outcome: only then does the
	// evaluation become visible, whole, and the coordinator answers its EvalVerdict.
	// An empty EvalBatch keeps the stream alive. A stream that ends before Done
	// leaves nothing stored. A coordinator that does not know this kind closes the
	// stream before answering: the agent then reports on StreamEvalReport instead.
	StreamEvalStream = "eval-stream"
)

// Work kinds.
const (
	WorkEval = "eval"
	WorkStep = "step"
)

// EvalTask is an evaluation assigned to an agent (Assign.Eval).
type EvalTask struct {
	EvaluationID int64       `json:"evaluation_id"`
	RepoURL      string      `json:"repo_url"`
	Revision     string      `json:"revision"`
	Branch       string      `json:"branch"`
	FlakeMode    bool        `json:"flake_mode"`
	Expression   string      `json:"expression"`
	Inputs       []EvalInput `json:"inputs"`
	Workers      int         `json:"workers"`
	MaxMemoryMB  int         `json:"max_memory_mb"`
	RestrictEval bool        `json:"restrict_eval"`
	AllowIFD     bool        `json:"allow_ifd"`
	TimeoutSecs  int         `json:"timeout_seconds"`
	// Fetch credentials of a private repository: sent only to the evaluating agent.
	SSHKey     string `json:"ssh_key,omitempty"`
	HTTPSToken string `json:"https_token,omitempty"`
}

// EvalInput is a jobset input; git inputs carry the revision the coordinator resolved.
type EvalInput struct {
	Name     string `json:"name"`
	Type     string `json:"type"`
	Value    string `json:"value"`
	Revision string `json:"revision,omitempty"`
}

// PresentRequest asks about output paths.
type PresentRequest struct {
	Paths []string `json:"paths"`
}

// PresentAnswer lists those the cache or an upstream holds.
type PresentAnswer struct {
	Present []string `json:"present"`
	Error   string   `json:"error,omitempty"`
}

// EvalMeta is the part of a job's meta FC uses.
type EvalMeta struct {
	Description        string `json:"description,omitempty"`
	License            string `json:"license,omitempty"`
	Homepage           string `json:"homepage,omitempty"`
	Timeout            int    `json:"timeout,omitempty"`
	MaxSilent          int    `json:"max_silent,omitempty"`
	SchedulingPriority int    `json:"scheduling_priority,omitempty"`
}

// EvalJob is one evaluated job.
type EvalJob struct {
	Attr                   string            `json:"attr"` // dotted attribute path
	Name                   string            `json:"name"`
	DrvPath                string            `json:"drv_path"`
	Outputs                map[string]string `json:"outputs"`
	System                 string            `json:"system"`
	RequiredSystemFeatures []string          `json:"required_system_features"`
	Meta                   EvalMeta          `json:"meta"`
	IsAggregate            bool              `json:"is_aggregate"`
	// Constituents of an aggregate: job names (dotted) or drv paths.
	Constituents []string `json:"constituents,omitempty"`
}

// EvalAttrError is an attribute that failed to evaluate.
type EvalAttrError struct {
	Attr    string `json:"attr"`
	Message string `json:"message"`
}

// EvalNode is a derivation that must be built (its outputs are not cached).
type EvalNode struct {
	DrvPath          string            `json:"drv_path"`
	System           string            `json:"system"`
	RequiredFeatures []string          `json:"required_features"`
	PreferLocalBuild bool              `json:"prefer_local_build"`
	Outputs          map[string]string `json:"outputs"`
	// OutputCA is the content address of each fixed output ("fixed:r:sha256:<nixbase32>",
	// "fixed:sha256:…"), as the derivation declares it; input-addressed outputs are
	// absent. The coordinator accepts an upload of such an output only with exactly
	// that content.
	OutputCA map[string]string `json:"output_ca,omitempty"`
	// Inputs are the drv paths of input derivations that are also nodes (edges).
	Inputs []string `json:"inputs"`
}

// EvalReport opens a report.
type EvalReport struct {
	Work   WorkRef `json:"work"`
	Failed bool    `json:"failed"`
	Error  string  `json:"error,omitempty"`
	// Retry marks a failure of the infrastructure rather than of the expression: the
	// evaluation is queued again (with backoff, up to max_attempts).
	Retry           bool    `json:"retry,omitempty"`
	CheckoutSeconds float64 `json:"checkout_seconds"`
	EvalSeconds     float64 `json:"eval_seconds"`
}

// EvalBatch carries part of a report; large evaluations come in many batches.
type EvalBatch struct {
	Jobs   []EvalJob       `json:"jobs,omitempty"`
	Errors []EvalAttrError `json:"errors,omitempty"`
	Nodes  []EvalNode      `json:"nodes,omitempty"`
	Done   bool            `json:"done"`
	// Outcome is the report's outcome on StreamEvalStream, sent with Done (Work is
	// not repeated; the rest is as in an EvalReport). StreamEvalReport ignores it.
	Outcome *EvalReport `json:"outcome,omitempty"`
}

// EvalVerdict is the coordinator's answer to a report.
type EvalVerdict struct {
	Accepted bool   `json:"accepted"`
	Error    string `json:"error,omitempty"`
}
