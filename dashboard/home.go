package dashboard

import (
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/storage"
)

func (d *Dashboard) homeRoutes(r chi.Router) {
	r.Get("/", d.home)
}

func (d *Dashboard) home(w http.ResponseWriter, r *http.Request) {
	recent, _, err := d.db.ListBuilds(r.Context(), storage.BuildFilter{}, storage.Page{Limit: 50})
	if err != nil {
		d.fail(w, r, err)
		return
	}
	stats, err := d.db.GetBuildStats(r.Context())
	if err != nil {
		d.fail(w, r, err)
		return
	}
	d.render(w, r, http.StatusOK, "home", view{"Title": "Recent builds", "Builds": recent, "Stats": stats})
}
