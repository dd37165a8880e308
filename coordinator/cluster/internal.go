package cluster

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/protocol"
)

// InternalPrefix is where members serve each other, outside the public API: every
// request there needs the cluster secret.
const InternalPrefix = "/internal/cluster"

const authScheme = "FC-Cluster "

// Local is this coordinator's own sessions, as the internal API serves them.
type Local interface {
	// CommandHere sends a command to an agent with a session here; ok false if none.
	CommandHere(ctx context.Context, agentID int64, m protocol.Message) (reply protocol.Message, ok bool, err error)
	// DisconnectHere closes an agent's sessions here.
	DisconnectHere(agentID int64)
}

type agentsJSON struct {
	Version uint64  `json:"version"`
	Agents  []int64 `json:"agents"`
}

type commandJSON struct {
	AgentID int64            `json:"agent_id"`
	Message protocol.Message `json:"message"`
}

// Handler serves the internal API: this member's agent list, commands to its agents
// and disconnecting them (revocation).
func (c *Cluster) Handler(local Local) http.Handler {
	r := chi.NewRouter()
	r.Use(c.authenticate)
	r.Get("/agents", func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		body := agentsJSON{Version: c.local.Version, Agents: c.agents}
		c.mu.Unlock()
		httpkit.WriteJSON(w, http.StatusOK, body)
	})
	r.Post("/command", func(w http.ResponseWriter, r *http.Request) {
		var in commandJSON
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&in); err != nil {
			httpkit.WriteError(w, r, http.StatusBadRequest, "bad command: "+err.Error())
			return
		}
		reply, ok, err := local.CommandHere(r.Context(), in.AgentID, in.Message)
		switch {
		case !ok:
			httpkit.WriteError(w, r, http.StatusNotFound, fmt.Sprintf("agent %d has no session here", in.AgentID))
		case err != nil:
			httpkit.WriteError(w, r, http.StatusBadGateway, err.Error())
		default:
			httpkit.WriteJSON(w, http.StatusOK, reply)
		}
	})
	r.Post("/disconnect", func(w http.ResponseWriter, r *http.Request) {
		var in commandJSON
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&in); err != nil {
			httpkit.WriteError(w, r, http.StatusBadRequest, "bad request: "+err.Error())
			return
		}
		local.DisconnectHere(in.AgentID)
		w.WriteHeader(http.StatusNoContent)
	})
	return r
}

func (c *Cluster) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), authScheme)
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(c.secret)) != 1 {
			httpkit.WriteError(w, r, http.StatusUnauthorized, "the cluster's internal API needs the cluster secret")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// ErrNoHolder: no alive member holds a session of the agent.
var ErrNoHolder = errors.New("no coordinator of the cluster holds a session of the agent")

// Command sends a command to an agent connected to another member: the member its
// gossip names first, then the others (its list may lag a reconnect).
func (c *Cluster) Command(ctx context.Context, agentID int64, m protocol.Message) (protocol.Message, error) {
	body, err := json.Marshal(commandJSON{AgentID: agentID, Message: m})
	if err != nil {
		return protocol.Message{}, err
	}
	for _, api := range c.others(agentID) {
		resp, err := c.post(ctx, api+InternalPrefix+"/command", body)
		if err != nil {
			c.log.Debug("forward a command", "member", api, "err", err)
			continue
		}
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			var reply protocol.Message
			if err := json.Unmarshal(data, &reply); err != nil {
				return protocol.Message{}, fmt.Errorf("reply forwarded by %s: %w", api, err)
			}
			return reply, nil
		case http.StatusNotFound:
			continue
		default:
			return protocol.Message{}, fmt.Errorf("command forwarded to %s: %s: %s", api, resp.Status, bytes.TrimSpace(data))
		}
	}
	return protocol.Message{}, fmt.Errorf("agent %d: %w", agentID, ErrNoHolder)
}

// Disconnect closes an agent's sessions on every other member (revocation).
func (c *Cluster) Disconnect(ctx context.Context, agentID int64) {
	body, _ := json.Marshal(commandJSON{AgentID: agentID})
	for _, api := range c.others(agentID) {
		resp, err := c.post(ctx, api+InternalPrefix+"/disconnect", body)
		if err != nil {
			c.log.Warn("forward a disconnect", "member", api, "agent", agentID, "err", err)
			continue
		}
		resp.Body.Close()
	}
}

func (c *Cluster) post(ctx context.Context, url string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", authScheme+c.secret)
	req.Header.Set("Content-Type", "application/json")
	return c.client.Do(req)
}

// Routes serves GET /api/v1/cluster: the members with their status, API address
// and agent count (this one marked self). Admins only: it names internal addresses.
func (c *Cluster) Routes(r chi.Router) {
	r.With(httpkit.Require(auth.PermAdmin)).Get("/cluster", func(w http.ResponseWriter, r *http.Request) {
		httpkit.WriteJSON(w, http.StatusOK, map[string]any{"enabled": true, "name": c.cfg.Name, "members": c.Members()})
	})
}

// Off serves GET /api/v1/cluster on a coordinator that runs alone ([cluster] is not
// enabled): the route exists everywhere, so a script can ask before it assumes.
type Off struct{}

// Routes mounts the answer {"enabled": false, "name": "", "members": []}.
func (Off) Routes(r chi.Router) {
	r.With(httpkit.Require(auth.PermAdmin)).Get("/cluster", func(w http.ResponseWriter, r *http.Request) {
		httpkit.WriteJSON(w, http.StatusOK, map[string]any{"enabled": false, "name": "", "members": []Member{}})
	})
}
