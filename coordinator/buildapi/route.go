package buildapi

import (
	"net/http"
	"net/http/httputil"
	"net/url"

	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

// hopHeader marks a request another coordinator of the cluster forwarded: it is
// served where it arrives, never forwarded again (gossip may lag a reconnect).
const hopHeader = "X-FC-Cluster-Hop"

// forward serves a running step's log through the coordinator its agent is
// connected to, when that is another one: the log is written there as the agent
// streams it, and its hub wakes the viewers, so a viewer there gets every byte
// once, live, with that log's offsets. The request goes as it came (the same
// credentials, checked there against the same database). It reports whether it
// served the request.
func (b *Builds) forward(w http.ResponseWriter, r *http.Request, step storage.StepInfo) bool {
	if b.cfg.Route == nil || step.Status != "running" || step.AgentID == nil || r.Header.Get(hopHeader) != "" {
		return false
	}
	api, ok := b.cfg.Route(*step.AgentID)
	if !ok {
		return false
	}
	target, err := url.Parse(api)
	if err != nil {
		return false
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = target.Host
			pr.Out.Header.Set(hopHeader, "1")
			pr.SetXForwarded()
		},
		FlushInterval: -1, // a live log: every write at once
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			b.log.Warn("forward a live log", "step", step.ID, "to", api, "err", err)
			httpkit.WriteError(w, r, http.StatusBadGateway, "the coordinator building this step does not answer: "+err.Error())
		},
	}
	b.log.Debug("live log served through the agent's coordinator", "step", step.ID, "to", api)
	proxy.ServeHTTP(w, r)
	return true
}
