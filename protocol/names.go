package protocol

import (
	"fmt"
	"regexp"
)

// nameRE is the one rule for names (projects, jobsets, API keys, enrollment tokens,
// agents): they start with a letter or '_' (as in Hydra), so that a name never reads as
// an id in URLs that accept both, and hold only letters, digits, '.', '_' and '-'.
var nameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9._-]*$`)

// MaxAgentNameLen bounds an agent's name (and an enrollment token's, which an agent
// may take): a name is often a host name, and 63 is the length of a DNS label.
const MaxAgentNameLen = 63

// CheckName says why s is not a valid name of at most maxLen characters; what names
// the field or setting in the message ("name", "agent.name").
func CheckName(what, s string, maxLen int) error {
	switch {
	case s == "":
		return fmt.Errorf("%s is required", what)
	case len(s) > maxLen:
		return fmt.Errorf("%s must be at most %d characters (it has %d)", what, maxLen, len(s))
	case !nameRE.MatchString(s):
		return fmt.Errorf("%s %q must start with a letter or '_' and contain only letters, digits, '.', '_' and '-'", what, s)
	}
	return nil
}

// CheckAgentName says why s is not a valid agent name.
func CheckAgentName(what, s string) error { return CheckName(what, s, MaxAgentNameLen) }
