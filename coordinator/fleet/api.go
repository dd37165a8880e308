package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// Routes registers the agent connection and the agents' API under /api/v1.
func (f *Fleet) Routes(r chi.Router) {
	r.Get("/agent/connect", f.connect)

	r.Get("/agents", f.listAgents)
	r.Get("/agents/{id}", f.getAgent)
	r.With(httpkit.Require(auth.PermAdmin)).Post("/agents", f.registerAgent)
	r.With(httpkit.Require(auth.PermAdmin)).Put("/agents/{id}", f.updateAgent)
	r.With(httpkit.Require(auth.PermAdmin)).Delete("/agents/{id}", f.revokeAgent)
	r.With(httpkit.Require(auth.PermAdmin)).Post("/agents/{id}/drain", f.setState(func(a storage.Agent) (bool, bool) { return a.Enabled, true }, false))
	r.With(httpkit.Require(auth.PermAdmin)).Post("/agents/{id}/enable", f.setState(func(storage.Agent) (bool, bool) { return true, false }, true))
	r.With(httpkit.Require(auth.PermAdmin)).Post("/agents/{id}/disable", f.setState(func(a storage.Agent) (bool, bool) { return false, a.Draining }, false))
	r.With(httpkit.Require(auth.PermAdmin)).Post("/agents/tokens", f.createToken)
}

// validAgentName checks an agent's name, or an enrollment token's (an agent may take
// it): protocol.CheckAgentName's rule, as a 422 naming the field.
func validAgentName(field, s string) error {
	if err := protocol.CheckAgentName(field, s); err != nil {
		return httpkit.Errorf(http.StatusUnprocessableEntity, field, "%v", err)
	}
	return nil
}

type agentJSON struct {
	ID                int64      `json:"id"`
	Name              string     `json:"name"`
	Fingerprint       string     `json:"fingerprint"`
	PublicKey         string     `json:"public_key"`
	Systems           []string   `json:"systems"`
	Features          []string   `json:"features"`
	MandatoryFeatures []string   `json:"mandatory_features"`
	Roles             []string   `json:"roles"`
	MaxJobs           int        `json:"max_jobs"`
	SpeedFactor       float64    `json:"speed_factor"`
	Running           int        `json:"running"`
	Connected         bool       `json:"connected"`
	Enabled           bool       `json:"enabled"`
	Draining          bool       `json:"draining"`
	ShuttingDown      bool       `json:"shutting_down"`
	Revoked           bool       `json:"revoked"`
	RevokedAt         *time.Time `json:"revoked_at"`
	Coordinator       string     `json:"coordinator"`
	LastSeen          *time.Time `json:"last_seen"`
	AgentVersion      string     `json:"agent_version"`
	NixVersion        string     `json:"nix_version"`
	Load              float64    `json:"load"`
	FreeDiskBytes     int64      `json:"free_disk_bytes"`
	// Push: the agent may upload any path to the cache, not only what its work made.
	Push      bool      `json:"push"`
	CreatedAt time.Time `json:"created_at"`
	// ConsecutiveFailures counts its steps' infrastructure failures in a row; while
	// DisabledUntil is ahead it takes no new step (queue_runner.agent_failure_threshold).
	ConsecutiveFailures int        `json:"consecutive_failures"`
	DisabledUntil       *time.Time `json:"disabled_until"`
	LastFailure         string     `json:"last_failure,omitempty"`
	// Declared: the agent's key is declared in the coordinator's config file
	// (DeclaredIn), and the API refuses to change its push permission or revoke it
	// (409); drain, enable and disable still work.
	Declared   bool   `json:"declared"`
	DeclaredIn string `json:"declared_in,omitempty"`
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

func toAgentJSON(a storage.Agent) agentJSON {
	return agentJSON{ID: a.ID, Name: a.Name, Fingerprint: a.Fingerprint, PublicKey: a.PublicKey,
		Systems: a.Systems, Features: a.Features, MandatoryFeatures: a.MandatoryFeatures, Roles: a.Roles,
		MaxJobs: a.MaxJobs, SpeedFactor: a.SpeedFactor, Running: a.Running, Connected: a.Connected,
		Enabled: a.Enabled, Draining: a.Draining || a.SelfDraining, ShuttingDown: a.SelfDraining,
		Revoked: a.RevokedAt != nil, RevokedAt: utc(a.RevokedAt), Coordinator: a.Coordinator,
		LastSeen: utc(a.LastSeenAt), AgentVersion: a.AgentVersion, NixVersion: a.NixVersion, Load: a.Load1,
		FreeDiskBytes: a.FreeDiskBytes, Push: a.Push, CreatedAt: a.CreatedAt.UTC(),
		ConsecutiveFailures: a.ConsecutiveFailures, DisabledUntil: utc(a.DisabledUntil), LastFailure: a.LastFailure,
		Declared: a.Declared != "", DeclaredIn: a.Declared}
}

func (f *Fleet) listAgents(w http.ResponseWriter, r *http.Request) {
	page, err := httpkit.PageOf(r)
	if err != nil {
		httpkit.Fail(f.log, w, r, err)
		return
	}
	as, total, err := f.db.ListAgents(r.Context(), page)
	if err != nil {
		httpkit.Fail(f.log, w, r, err)
		return
	}
	out := make([]agentJSON, len(as))
	for i, a := range as {
		out[i] = toAgentJSON(a)
	}
	httpkit.WriteJSON(w, http.StatusOK, httpkit.NewList(out, total, page))
}

func (f *Fleet) agentParam(ctx context.Context, r *http.Request) (storage.Agent, error) {
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil {
		return storage.Agent{}, storage.ErrNotFound
	}
	return f.db.GetAgent(ctx, id)
}

func (f *Fleet) getAgent(w http.ResponseWriter, r *http.Request) {
	a, err := f.agentParam(r.Context(), r)
	if err != nil {
		httpkit.Fail(f.log, w, r, err)
		return
	}
	httpkit.WriteJSON(w, http.StatusOK, toAgentJSON(a))
}

// registerAgent pins a public key an admin supplies (e.g. declaratively from NixOS).
func (f *Fleet) registerAgent(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Name      string `json:"name"`
		PublicKey string `json:"public_key"`
	}
	if err := httpkit.Decode(r, &in); err != nil {
		httpkit.Fail(f.log, w, r, err)
		return
	}
	k, err := protocol.ParseAgentKey(in.PublicKey)
	if err != nil {
		httpkit.Fail(f.log, w, r, httpkit.Unprocessable("public_key", "public_key must be one ssh-ed25519 authorized_keys line"))
		return
	}
	if in.Name == "" {
		in.Name = k.Comment
	}
	if err := validAgentName("name", in.Name); err != nil {
		httpkit.Fail(f.log, w, r, err)
		return
	}
	a, err := f.db.RegisterAgent(r.Context(), in.Name, k.Line, k.Fingerprint)
	var taken *storage.AgentNameTakenError
	if errors.As(err, &taken) {
		httpkit.Fail(f.log, w, r, httpkit.Errorf(http.StatusConflict, "name", "%v", taken))
		return
	}
	if err != nil {
		httpkit.Fail(f.log, w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/agents/"+strconv.FormatInt(a.ID, 10))
	httpkit.WriteJSON(w, http.StatusCreated, toAgentJSON(a))
}

// updateAgent changes what an admin may set on an agent: {"push": true} grants it the
// push permission (fc-agent push: any path into the cache), false withdraws it.
func (f *Fleet) updateAgent(w http.ResponseWriter, r *http.Request) {
	a, err := f.agentParam(r.Context(), r)
	if err != nil {
		httpkit.Fail(f.log, w, r, err)
		return
	}
	var in struct {
		Push *bool `json:"push"`
	}
	if err := httpkit.Decode(r, &in); err != nil {
		httpkit.Fail(f.log, w, r, err)
		return
	}
	if in.Push == nil {
		httpkit.Fail(f.log, w, r, httpkit.Unprocessable("push", "nothing to change: give push (true or false)"))
		return
	}
	if a.Declared != "" {
		httpkit.Fail(f.log, w, r, httpkit.Declared("agent "+strconv.Quote(a.Name), a.Declared))
		return
	}
	if a.RevokedAt != nil {
		httpkit.Fail(f.log, w, r, httpkit.Errorf(http.StatusConflict, "", "agent %d is revoked", a.ID))
		return
	}
	updated, err := f.db.SetAgentPush(r.Context(), a.ID, *in.Push)
	if err != nil {
		httpkit.Fail(f.log, w, r, err)
		return
	}
	f.log.Info("agent push permission changed", "agent", a.ID, "name", a.Name, "push", *in.Push)
	httpkit.WriteJSON(w, http.StatusOK, toAgentJSON(updated))
}

// revokeAgent cuts the agent off at once; its key can never connect or enroll again.
func (f *Fleet) revokeAgent(w http.ResponseWriter, r *http.Request) {
	a, err := f.agentParam(r.Context(), r)
	if err != nil {
		httpkit.Fail(f.log, w, r, err)
		return
	}
	if a.Declared != "" {
		httpkit.Fail(f.log, w, r, httpkit.Declared("agent "+strconv.Quote(a.Name), a.Declared))
		return
	}
	if err := f.db.RevokeAgent(r.Context(), a.ID); err != nil {
		httpkit.Fail(f.log, w, r, err)
		return
	}
	f.Disconnect(r.Context(), a.ID)
	f.log.Info("agent revoked", "agent", a.ID, "name", a.Name, "fingerprint", a.Fingerprint)
	w.WriteHeader(http.StatusNoContent)
}

// setState applies an admin's drain, enable or disable; resetHealth (enable) also
// forgets the agent's infrastructure failures and ends its backoff.
func (f *Fleet) setState(next func(storage.Agent) (enabled, draining bool), resetHealth bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a, err := f.agentParam(r.Context(), r)
		if err != nil {
			httpkit.Fail(f.log, w, r, err)
			return
		}
		if a.RevokedAt != nil {
			httpkit.Fail(f.log, w, r, httpkit.Errorf(http.StatusConflict, "", "agent %d is revoked", a.ID))
			return
		}
		enabled, draining := next(a)
		if resetHealth {
			if err := f.db.ResetAgentHealth(r.Context(), a.ID); err != nil {
				httpkit.Fail(f.log, w, r, err)
				return
			}
		}
		updated, err := f.db.SetAgentState(r.Context(), a.ID, enabled, draining)
		if err != nil {
			httpkit.Fail(f.log, w, r, err)
			return
		}
		if draining != a.Draining {
			go f.notifyDrain(context.WithoutCancel(r.Context()), a.ID, draining)
		}
		httpkit.WriteJSON(w, http.StatusOK, toAgentJSON(updated))
	}
}

// Enrollment token limits.
const (
	DefaultTokenTTL  = time.Hour
	MaxTokenTTL      = 30 * 24 * time.Hour
	DefaultTokenUses = 1
	MaxTokenUses     = 10_000
	TokenPrefix      = "fcagent_"
)

// CreateToken makes an enrollment token; the token is returned once, only its hash kept.
func CreateToken(ctx context.Context, db *storage.DB, name string, uses int, ttl time.Duration) (storage.EnrollmentToken, string, error) {
	b := make([]byte, 20)
	if _, err := rand.Read(b); err != nil {
		return storage.EnrollmentToken{}, "", fmt.Errorf("generate enrollment token: %w", err)
	}
	token := TokenPrefix + hex.EncodeToString(b)
	t, err := db.CreateEnrollmentToken(ctx, name, uses, time.Now().Add(ttl), auth.HashKey(token))
	if err != nil {
		return storage.EnrollmentToken{}, "", err
	}
	return t, token, nil
}

func (f *Fleet) createToken(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Name      string `json:"name"`
		Uses      *int   `json:"uses"`
		ExpiresIn *int64 `json:"expires_in"`
	}
	if err := httpkit.Decode(r, &in); err != nil {
		httpkit.Fail(f.log, w, r, err)
		return
	}
	// An agent without a name of its own takes its token's: the same rule applies.
	if err := validAgentName("name", in.Name); err != nil {
		httpkit.Fail(f.log, w, r, err)
		return
	}
	uses, ttl := DefaultTokenUses, DefaultTokenTTL
	if in.Uses != nil {
		if *in.Uses < 1 || *in.Uses > MaxTokenUses {
			httpkit.Fail(f.log, w, r, httpkit.Unprocessable("uses", "uses must be from 1 to %d", MaxTokenUses))
			return
		}
		uses = *in.Uses
	}
	if in.ExpiresIn != nil {
		if *in.ExpiresIn < 1 || *in.ExpiresIn > int64(MaxTokenTTL/time.Second) {
			httpkit.Fail(f.log, w, r, httpkit.Unprocessable("expires_in", "expires_in must be from 1 to %d seconds", int64(MaxTokenTTL/time.Second)))
			return
		}
		ttl = time.Duration(*in.ExpiresIn) * time.Second
	}
	t, token, err := CreateToken(r.Context(), f.db, in.Name, uses, ttl)
	if err != nil {
		httpkit.Fail(f.log, w, r, err)
		return
	}
	httpkit.WriteJSON(w, http.StatusCreated, map[string]any{
		"id": t.ID, "name": t.Name, "token": token, "expires_at": t.ExpiresAt.UTC(), "uses": t.UsesLeft,
	})
}
