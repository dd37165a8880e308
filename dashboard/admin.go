package dashboard

import "github.com/go-chi/chi/v5"

// adminRoutes serves /admin: users, API keys, enrollment tokens, the cache key.
func (d *Dashboard) adminRoutes(r chi.Router) {}
