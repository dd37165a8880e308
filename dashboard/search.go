package dashboard

import "github.com/go-chi/chi/v5"

// searchRoutes serves /search: projects, jobsets, jobs and builds by name or store path.
func (d *Dashboard) searchRoutes(r chi.Router) {}
