package protocol

import (
	"errors"
	"strings"

	"golang.org/x/crypto/ssh"
)

// ErrNotAgentKey: a public key that is not one ssh-ed25519 authorized_keys line,
// the only kind an agent has (fc-agent keygen writes it to key.pub).
var ErrNotAgentKey = errors.New("not one ssh-ed25519 authorized_keys line")

// AgentKey is an agent's public key as the coordinator pins it, wherever it comes
// from (enrolment, POST /api/v1/agents, a declaration, an SSH install).
type AgentKey struct {
	Key ssh.PublicKey
	// Line is the authorized_keys line without its comment, as stored.
	Line string
	// Fingerprint is the key's SHA256 fingerprint (SHA256:…), how agents are found.
	Fingerprint string
	// Comment is the line's comment (keygen puts the agent's name there).
	Comment string
}

// ParseAgentKey reads an agent's public key line.
func ParseAgentKey(line string) (AgentKey, error) {
	pub, comment, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil || pub.Type() != ssh.KeyAlgoED25519 {
		return AgentKey{}, ErrNotAgentKey
	}
	return AgentKey{Key: pub, Line: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))),
		Fingerprint: ssh.FingerprintSHA256(pub), Comment: comment}, nil
}
