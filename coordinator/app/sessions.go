package app

import (
	"context"
	"net/http"

	"github.com/fc-ci/fc/coordinator/fleet"
	"github.com/fc-ci/fc/protocol"
)

// sessions is the fleet as both schedulers see it (their Dispatcher), bound late
// because the fleet is built after them: it takes their session hooks and stream
// handlers. New sets fleet before anything can call it.
type sessions struct{ fleet *fleet.Fleet }

func (s *sessions) AgentIDs() []int64 { return s.fleet.AgentIDs() }

func (s *sessions) Capabilities(agentID int64) (protocol.Capabilities, bool) {
	return s.fleet.Capabilities(agentID)
}

func (s *sessions) Command(ctx context.Context, agentID int64, m protocol.Message) (protocol.Message, error) {
	return s.fleet.Command(ctx, agentID, m)
}

// handlerRef is an http.Handler bound after it is handed out: the dashboard's way to
// the API, which New sets to the server's handler before anything serves.
type handlerRef struct{ h http.Handler }

func (h *handlerRef) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.h.ServeHTTP(w, r) }
