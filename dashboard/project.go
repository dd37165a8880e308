package dashboard

import "github.com/go-chi/chi/v5"

// projectRoutes serves /projects and /project/{name}: projects, their jobsets, create and edit forms.
func (d *Dashboard) projectRoutes(r chi.Router) {}
