package dashboard

import "github.com/go-chi/chi/v5"

// jobRoutes serves /job/{project}/{jobset}/{job}: history, charts, latest, badge.
func (d *Dashboard) jobRoutes(r chi.Router) {}
