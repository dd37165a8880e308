package protocol

import (
	"fmt"
	"time"
)

// Version is the wire protocol's version. A coordinator accepts agents whose version
// lies in [MinVersion, Version]; anything else fails the handshake with both numbers.
//
// Version 2: evaluation reports declare the content address of fixed outputs
// (EvalNode.OutputCA), which the coordinator needs to check uploads of them, so
// version 1 agents are refused.
const (
	Version    = 2
	MinVersion = 2
)

// Stream kinds: the first frame of every yamux stream is a StreamHeader naming one.
const (
	// StreamControl is opened by the agent first: handshake, then heartbeats and
	// status for the session's life.
	StreamControl = "control"
	// StreamCommand is opened by the coordinator: one command, one reply.
	StreamCommand = "command"
)

// StreamIdleTimeout bounds how long a stream may go without a byte moving.
const StreamIdleTimeout = 2 * time.Minute

// StreamHeader opens every stream.
type StreamHeader struct {
	Kind string `json:"kind"`
}

// Message types.
const (
	TypeHello        = "hello"
	TypeChallenge    = "challenge"
	TypeSignature    = "signature"
	TypeWelcome      = "welcome"
	TypeRefused      = "refused"
	TypeHeartbeat    = "heartbeat"
	TypeHeartbeatAck = "heartbeat_ack"
	TypeCapabilities = "capabilities"
	TypeDraining     = "draining"
	TypeAssign       = "assign"
	TypeAccept       = "accept"
	TypeReject       = "reject"
	TypeCancel       = "cancel"
	TypeDrain        = "drain"
	TypeShutdown     = "shutdown"
	TypeAck          = "ack"
)

// Message is every frame after a stream's header. Type says which field is set.
type Message struct {
	Type         string        `json:"type"`
	Hello        *Hello        `json:"hello,omitempty"`
	Challenge    *Challenge    `json:"challenge,omitempty"`
	Signature    *Signature    `json:"signature,omitempty"`
	Welcome      *Welcome      `json:"welcome,omitempty"`
	Refused      *Refused      `json:"refused,omitempty"`
	Heartbeat    *Heartbeat    `json:"heartbeat,omitempty"`
	Capabilities *Capabilities `json:"capabilities,omitempty"`
	Assign       *Assign       `json:"assign,omitempty"`
	Reject       *Reject       `json:"reject,omitempty"`
	Cancel       *Cancel       `json:"cancel,omitempty"`
	Drain        *Drain        `json:"drain,omitempty"`
	Shutdown     *Shutdown     `json:"shutdown,omitempty"`
}

// Capabilities say what an agent can do.
type Capabilities struct {
	Systems           []string `json:"systems"`
	Features          []string `json:"features"`
	MandatoryFeatures []string `json:"mandatory_features"`
	MaxJobs           int      `json:"max_jobs"` // builds Nix runs at once
	// Slots is how many steps the agent takes at once (>= MaxJobs: it realises
	// several runnable steps in one Nix process); 0 means MaxJobs.
	Slots       int      `json:"slots,omitempty"`
	SpeedFactor float64  `json:"speed_factor"`
	Roles       []string `json:"roles"`
	NixVersion  string   `json:"nix_version"`
}

// StepSlots is how many steps the agent takes at once.
func (c Capabilities) StepSlots() int {
	if c.Slots > 0 {
		return c.Slots
	}
	return max(c.MaxJobs, 1)
}

// Roles an agent may take.
const (
	RoleBuild = "build"
	RoleEval  = "eval"
)

// WorkRef names a piece of leased work: an evaluation or a step, with its lease epoch.
type WorkRef struct {
	Kind  string `json:"kind"` // "step" or "eval"
	ID    int64  `json:"id"`
	Epoch int64  `json:"epoch"`
}

// Hello is the agent's first message on the control stream.
type Hello struct {
	ProtocolVersion int    `json:"protocol_version"`
	AgentVersion    string `json:"agent_version"`
	// Name is the agent's agent.name, or its host name when it has none; the
	// coordinator uses it only when the agent enrolls.
	Name string `json:"name"`
	// NameFromHost says Name is the host name, not a name of the agent's own: an
	// enrollment token's name goes first then.
	NameFromHost    bool         `json:"name_from_host,omitempty"`
	PublicKey       string       `json:"public_key"` // authorized_keys line
	EnrollmentToken string       `json:"enrollment_token,omitempty"`
	Capabilities    Capabilities `json:"capabilities"`
	Running         []WorkRef    `json:"running"`
	Draining        bool         `json:"draining"`
	// Purpose is "" for the agent daemon, PurposePush for a one-off client such as
	// fc-agent push: it authenticates the same way but never replaces the daemon's
	// session or its presence.
	Purpose string `json:"purpose,omitempty"`
}

// PurposePush marks a session opened only to upload store paths.
const PurposePush = "push"

// Challenge carries the nonce the agent must sign.
type Challenge struct {
	Nonce []byte `json:"nonce"`
}

// Signature is an SSH signature (format and blob) over ChallengeMessage(nonce).
type Signature struct {
	Format string `json:"format"`
	Blob   []byte `json:"blob"`
}

// ChallengeMessage is what the agent signs: a domain-separated nonce, so a signature
// made for FC can never be replayed as anything else.
func ChallengeMessage(nonce []byte) []byte {
	return append([]byte("fc-agent-challenge-v1\x00"), nonce...)
}

// Welcome accepts the agent.
type Welcome struct {
	AgentID            int64  `json:"agent_id"`
	Name               string `json:"name"`
	Coordinator        string `json:"coordinator"`
	HeartbeatSeconds   int    `json:"heartbeat_seconds"`
	Enrolled           bool   `json:"enrolled"` // true when this connection enrolled the key
	ProtocolVersion    int    `json:"protocol_version"`
	CoordinatorVersion string `json:"coordinator_version"`
	// CacheToken is this session's read credential for the coordinator's binary cache
	// (a private cache refuses readers without one): the agent's Nix presents it as
	// the password of HTTP basic authentication, from a netrc file. The next session's
	// token replaces it. Optional, so no version change: an older agent ignores it, an
	// older coordinator sends none, and push sessions get none.
	CacheToken string `json:"cache_token,omitempty"`
}

// Refusal codes: an agent exits on the permanent ones instead of retrying forever.
const (
	RefusedVersion      = "incompatible_version" // permanent
	RefusedUnauthorized = "unauthorized"         // permanent: unknown key without a valid token, bad signature
	RefusedRevoked      = "revoked"              // permanent
	RefusedInvalidName  = "invalid_name"         // permanent: an enrolling agent's name breaks the rule of names
	RefusedNameTaken    = "name_taken"           // permanent: another agent (not revoked) has the name
	RefusedUnavailable  = "unavailable"          // temporary: retry with backoff
)

// Refused ends a handshake.
type Refused struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Permanent reports whether retrying cannot help.
func (r *Refused) Permanent() bool { return r.Code != RefusedUnavailable }

func (r *Refused) Error() string {
	return fmt.Sprintf("coordinator refused the agent (%s): %s", r.Code, r.Message)
}

// Heartbeat is the agent's periodic ping with a small resource report.
type Heartbeat struct {
	Running       []WorkRef `json:"running"`
	Load1         float64   `json:"load1"`
	FreeDiskBytes int64     `json:"free_disk_bytes"`
	Draining      bool      `json:"draining"`
	// Released is work the agent stopped without finishing (it was stopped by force):
	// the coordinator requeues it now instead of waiting for the lease to expire.
	Released []WorkRef `json:"released,omitempty"`
	// LowDisk: free disk is below the agent's min_free_disk; it takes no new steps.
	LowDisk bool      `json:"low_disk,omitempty"`
	SentAt  time.Time `json:"sent_at"`
}

// Assign offers work to the agent; the field of its kind says what to do.
type Assign struct {
	Work WorkRef   `json:"work"`
	Eval *EvalTask `json:"eval,omitempty"`
	Step *StepTask `json:"step,omitempty"`
}

// Reject declines an assignment.
type Reject struct {
	Reason string `json:"reason"`
}

// Cancel asks the agent to stop a piece of work.
type Cancel struct {
	Work WorkRef `json:"work"`
}

// Drain tells the agent an admin drained it (On) or enabled it again: while drained
// it is given no new work and finishes what it runs.
type Drain struct {
	On bool `json:"on"`
}

// Shutdown tells the agent its coordinator is going away; it reconnects with backoff.
type Shutdown struct {
	Reason string `json:"reason"`
}

// CheckVersion says whether a coordinator speaking this package's version accepts an
// agent speaking v, with a message naming both when it does not.
func CheckVersion(v int) error {
	if v < MinVersion || v > Version {
		return fmt.Errorf("agent speaks protocol version %d, coordinator speaks %d (accepts %d to %d): upgrade the older side", v, Version, MinVersion, Version)
	}
	return nil
}
