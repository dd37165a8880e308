package dashboard

import "github.com/go-chi/chi/v5"

// agentRoutes serves /agents: the fleet, with admin actions.
func (d *Dashboard) agentRoutes(r chi.Router) {}
