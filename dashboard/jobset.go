package dashboard

import "github.com/go-chi/chi/v5"

// jobsetRoutes serves /jobset/{project}/{jobset}: evaluations, the jobs × evaluations grid, trigger.
func (d *Dashboard) jobsetRoutes(r chi.Router) {}
