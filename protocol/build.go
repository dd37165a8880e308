package protocol

import "time"

// Stream kinds for builds, opened by the agent.
const (
	// StreamLog carries one step's log: a LogOpen frame, the coordinator's LogAck with
	// the offset it already holds, then LogChunk frames from that offset on; a chunk
	// with Done asks for a final LogAck. Chunks at an offset already stored are
	// ignored and a gap is refused, so a stream reopened after a reconnect resumes
	// where the coordinator's copy ends.
	StreamLog = "log"
	// StreamStepReport reports a finished step: a StepReport, then the coordinator's
	// StepVerdict. The agent sends it only after the log is complete and, on success,
	// after every output path is in the cache.
	StreamStepReport = "step-report"
)

// Step statuses an agent reports; the coordinator sets the others (queued, running,
// dependency_failed, cancelled, aborted, cached_failure, unsupported_system). Their
// Hydra status codes are storage.StatusCodes.
const (
	StepSucceeded           = "succeeded"
	StepFailed              = "failed"
	StepTimedOut            = "timed_out"
	StepFailedWithOutput    = "failed_with_output"
	StepLogLimitExceeded    = "log_limit_exceeded"
	StepOutputLimitExceeded = "output_limit_exceeded"
)

// StepTask is a build step assigned to an agent (Assign.Step).
type StepTask struct {
	StepID  int64             `json:"step_id"`
	DrvPath string            `json:"drv_path"`
	Outputs map[string]string `json:"outputs"` // output name → store path
	// Limits: 0 means none.
	TimeoutSecs   int   `json:"timeout_seconds"`
	MaxSilentSecs int   `json:"max_silent_seconds"`
	MaxLogSize    int64 `json:"max_log_size"`
	MaxOutputSize int64 `json:"max_output_size"`
	// Substituters beyond the coordinator's own cache (the agent derives that URL from
	// the coordinator URL it dialled), and the keys to trust: the coordinator's cache
	// key first, then the upstream caches' keys.
	Substituters []string `json:"substituters"`
	TrustedKeys  []string `json:"trusted_keys"`
}

// LogOpen starts or resumes a step's log stream.
type LogOpen struct {
	Work WorkRef `json:"work"`
}

// LogAck says how many bytes of the log the coordinator holds; Error refuses the stream.
type LogAck struct {
	Offset int64  `json:"offset"`
	Error  string `json:"error,omitempty"`
}

// LogChunk is log bytes at an offset. Done marks the end of the log.
type LogChunk struct {
	Offset int64  `json:"offset"`
	Data   []byte `json:"data,omitempty"`
	Done   bool   `json:"done,omitempty"`
}

// BuildProduct is one line of $out/nix-support/hydra-build-products.
type BuildProduct struct {
	Type        string `json:"type"`
	Subtype     string `json:"subtype"`
	Path        string `json:"path"`
	Name        string `json:"name"`
	DefaultPath string `json:"default_path,omitempty"`
	FileSize    int64  `json:"file_size,omitempty"` // regular files only
	SHA256      string `json:"sha256,omitempty"`    // hex, regular files only
}

// BuildMetric is one line of $out/nix-support/hydra-metrics.
type BuildMetric struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit,omitempty"`
}

// StepReport is the outcome of a step.
type StepReport struct {
	Work WorkRef `json:"work"`
	// Status is one of the Step* names. Empty with Retry set: an infrastructure
	// failure (the cache was unreachable, the disk filled up), retried under the lease
	// rules; build failures are never retried.
	Status      string         `json:"status"`
	Retry       bool           `json:"retry,omitempty"`
	Error       string         `json:"error,omitempty"`
	ExitCode    int            `json:"exit_code"`
	Outputs     []PathInfo     `json:"outputs,omitempty"` // on success: the outputs' path infos
	Products    []BuildProduct `json:"products,omitempty"`
	Metrics     []BuildMetric  `json:"metrics,omitempty"`
	ReleaseName string         `json:"release_name,omitempty"`
	LogSize     int64          `json:"log_size"`
	StartedAt   time.Time      `json:"started_at"`
	FinishedAt  time.Time      `json:"finished_at"`
}

// StepVerdict is the coordinator's answer to a report.
type StepVerdict struct {
	Accepted bool   `json:"accepted"`
	Error    string `json:"error,omitempty"`
}
