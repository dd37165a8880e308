package buildqueue

import (
	"context"

	"github.com/fc-ci/fc/protocol"
)

// Dispatcher is what the scheduler needs of the agent sessions connected to this
// coordinator (fleet.Fleet): which agents are here, what each can do, and a command
// pushed to one over its session.
type Dispatcher interface {
	AgentIDs() []int64
	Capabilities(agentID int64) (protocol.Capabilities, bool)
	Command(ctx context.Context, agentID int64, m protocol.Message) (protocol.Message, error)
}
