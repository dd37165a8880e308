package dashboard

import "github.com/go-chi/chi/v5"

// loginRoutes serves /login and /logout.
func (d *Dashboard) loginRoutes(r chi.Router) {}
