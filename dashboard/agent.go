package dashboard

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/storage"
)

// agentsPerPage is how many agents a page lists.
const agentsPerPage = 50

// agentActions are the agents page's buttons and the API route each one submits to
// (POST /api/v1/agents/{id}/<action>).
var agentActions = map[string]bool{"drain": true, "enable": true, "disable": true}

// agentRoutes serves /agents: every agent, the revoked ones on their own tab, and
// for admins the drain, enable, disable and revoke controls. Revoking asks for a
// confirmation on a page of its own, so it works without scripts.
func (d *Dashboard) agentRoutes(r chi.Router) {
	r.Get("/agents", d.agents)
	r.Get("/agents/{id}/revoke", d.adminOnly(d.revokeAgentPage))
	r.With(d.forms).Post("/agents/{id}/revoke", d.revokeAgent)
	r.With(d.forms).Post("/agents/{id}/{action}", d.agentAction)
}

func (d *Dashboard) agents(w http.ResponseWriter, r *http.Request) {
	d.agentsPage(w, r, http.StatusOK, nil)
}

// agentsPage renders the list; with data (an error to show), it adds data.
func (d *Dashboard) agentsPage(w http.ResponseWriter, r *http.Request, status int, data view) {
	revoked := r.URL.Query().Get("revoked") == "1"
	active, nRevoked, err := d.db.AgentCounts(r.Context())
	if err != nil {
		d.fail(w, r, err)
		return
	}
	page := pageOf(r, agentsPerPage)
	agents, err := d.db.AgentsPage(r.Context(), revoked, page)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	total := active
	if revoked {
		total = nRevoked
	}
	v := view{"Title": "Agents", "Crumbs": []Crumb{{Name: "Home", URL: "/"}, {Name: "Agents"}},
		"Agents": agents, "Revoked": revoked, "Active": active, "RevokedCount": nRevoked,
		"Admin": can(r, auth.PermAdmin), "Pager": pagerOf(r, page, total), "Now": time.Now()}
	for k, val := range data {
		v[k] = val
	}
	d.render(w, r, status, "agents", v)
}

// agentOf reads the {id} of the route and finds the agent.
func (d *Dashboard) agentOf(r *http.Request) (storage.Agent, error) {
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil {
		return storage.Agent{}, storage.ErrNotFound
	}
	return d.db.GetAgent(r.Context(), id)
}

// agentAction submits drain, enable or disable.
func (d *Dashboard) agentAction(w http.ResponseWriter, r *http.Request) {
	action := chi.URLParam(r, "action")
	if !agentActions[action] {
		d.fail(w, r, storage.ErrNotFound)
		return
	}
	id := chi.URLParam(r, "id")
	res := d.submit(r, http.MethodPost, "/api/v1/agents/"+id+"/"+action, nil)
	if !res.OK() {
		d.agentsPage(w, r, res.Status, view{"Error": fmt.Sprintf("Cannot %s agent %s: %s", action, id, res.Message())})
		return
	}
	http.Redirect(w, r, "/agents#agent-"+id, http.StatusSeeOther)
}

// revokeView is the confirmation page of revoking a.
func revokeView(a storage.Agent) view {
	return view{"Title": "Revoke agent " + a.Name, "Agent": a, "Confirm": true,
		"Crumbs": []Crumb{{Name: "Home", URL: "/"}, {Name: "Agents", URL: "/agents"}, {Name: "Revoke " + a.Name}}}
}

func (d *Dashboard) revokeAgentPage(w http.ResponseWriter, r *http.Request) {
	a, err := d.agentOf(r)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	if a.RevokedAt != nil {
		d.refuse(w, r, http.StatusConflict, "Agent "+a.Name+" is revoked already.")
		return
	}
	d.render(w, r, http.StatusOK, "agents", revokeView(a))
}

// revokeAgent revokes (DELETE /api/v1/agents/{id}) once the box saying so is ticked.
func (d *Dashboard) revokeAgent(w http.ResponseWriter, r *http.Request) {
	a, err := d.agentOf(r)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	if r.PostFormValue("confirm") != "yes" {
		v := revokeView(a)
		v["Error"] = "Tick the box to confirm: revoking cannot be undone."
		d.render(w, r, http.StatusUnprocessableEntity, "agents", v)
		return
	}
	res := d.submit(r, http.MethodDelete, fmt.Sprintf("/api/v1/agents/%d", a.ID), nil)
	if !res.OK() {
		v := revokeView(a)
		v["Error"] = "Cannot revoke: " + res.Message()
		d.render(w, r, res.Status, "agents", v)
		return
	}
	http.Redirect(w, r, "/agents?revoked=1#agent-"+strconv.FormatInt(a.ID, 10), http.StatusSeeOther)
}
