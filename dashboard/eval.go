package dashboard

import "github.com/go-chi/chi/v5"

// evalRoutes serves /eval/{id}: an evaluation and its comparison with the previous one.
func (d *Dashboard) evalRoutes(r chi.Router) {}
