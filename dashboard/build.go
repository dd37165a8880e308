package dashboard

import (
	"fmt"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/storage"
)

func (d *Dashboard) buildRoutes(r chi.Router) {
	r.Get("/build/{id}", d.build)
}

func (d *Dashboard) build(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil {
		d.fail(w, r, storage.ErrNotFound)
		return
	}
	b, err := d.db.GetBuild(r.Context(), id)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	steps, err := d.db.BuildSteps(r.Context(), id)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	data := view{"Title": fmt.Sprintf("Build %d: %s", b.ID, b.Job), "Build": b, "Steps": steps}
	// The log shown is the build's own step's (listed first), or the ?step= asked for.
	if len(steps) > 0 {
		step, own := &steps[0], true
		if s := r.URL.Query().Get("step"); s != "" {
			for i := range steps {
				if strconv.FormatInt(steps[i].ID, 10) == s {
					step, own = &steps[i], i == 0
				}
			}
		}
		raw := fmt.Sprintf("/api/v1/builds/%d/log", b.ID)
		if !own {
			raw += fmt.Sprintf("?step=%d", step.ID)
		}
		data["Step"], data["OwnStep"], data["RawLog"] = step, own, raw
	}
	d.render(w, r, http.StatusOK, "build", data)
}
