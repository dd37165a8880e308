package app

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/fc-ci/fc/coordinator/cluster"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/fleet"
	"github.com/fc-ci/fc/coordinator/server"
)

// newCluster builds this coordinator's membership when [cluster] is enabled (nil
// otherwise: everything stays local, as with one coordinator).
func newCluster(s config.Config, addr string, agents *sessions, log *slog.Logger) (*cluster.Cluster, error) {
	if !s.Cluster.Enabled {
		return nil, nil
	}
	key, err := s.Cluster.ClusterKey()
	if err != nil {
		return nil, err
	}
	for _, n := range s.LocalStoresNotes() {
		log.Warn("cluster: " + n)
	}
	api := s.ClusterAPIAddress()
	if s.Cluster.APIAddress == "" && s.Server.PublicURL == "" && addr != "" {
		api = "http://" + addr // the address actually listened on (port 0 in tests)
	}
	return cluster.New(cluster.Config{Name: s.ClusterName(), Bind: s.Cluster.Bind, Advertise: s.Cluster.Advertise,
		Join: s.Cluster.Join, Key: key, APIAddress: api, Logger: log,
		ProbeInterval: time.Duration(s.Cluster.ProbeIntervalMS) * time.Millisecond,
		Agents: func() []int64 {
			if agents.fleet == nil {
				return nil
			}
			return agents.fleet.AgentIDs()
		}})
}

// clusterHooks publish this coordinator's agents as their sessions come and go.
func clusterHooks(cl *cluster.Cluster) fleet.Hooks {
	if cl == nil {
		return fleet.Hooks{}
	}
	return fleet.Hooks{Connected: func(int64) { cl.AgentsChanged() }, Disconnected: func(int64) { cl.AgentsChanged() }}
}

// remote is the fleet's way to agents on other coordinators (nil, not a nil
// *cluster.Cluster, when off).
func remote(cl *cluster.Cluster) fleet.Remote {
	if cl == nil {
		return nil
	}
	return cl
}

// logRoute is where a live log of an agent connected elsewhere is served from.
func logRoute(cl *cluster.Cluster, fl *fleet.Fleet) func(int64) (string, bool) {
	if cl == nil {
		return nil
	}
	return func(agentID int64) (string, bool) {
		if _, ok := fl.Session(agentID); ok {
			return "", false
		}
		return cl.Holder(agentID)
	}
}

// clusterRoutes are GET /api/v1/cluster and the members' internal API.
func clusterRoutes(cl *cluster.Cluster, fl *fleet.Fleet) ([]server.Routes, map[string]http.Handler) {
	if cl == nil {
		return []server.Routes{cluster.Off{}}, map[string]http.Handler{}
	}
	return []server.Routes{cl}, map[string]http.Handler{cluster.InternalPrefix: cl.Handler(fl)}
}
