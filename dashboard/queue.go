package dashboard

import "github.com/go-chi/chi/v5"

// queueRoutes serves /queue: queued and running steps by system.
func (d *Dashboard) queueRoutes(r chi.Router) {}
