package projectapi

import (
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

type apiKeyJSON struct {
	ID         int64      `json:"id"`
	Name       string     `json:"name"`
	Role       string     `json:"role"`
	Key        string     `json:"key,omitempty"` // only in the answer to the create request
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	// Declared: the key is declared in the coordinator's config file (DeclaredIn),
	// and the API refuses to delete it (409).
	Declared   bool   `json:"declared"`
	DeclaredIn string `json:"declared_in,omitempty"`
}

func toAPIKeyJSON(k storage.APIKey) apiKeyJSON {
	return apiKeyJSON{ID: k.ID, Name: k.Name, Role: k.Role, CreatedAt: k.CreatedAt.UTC(), LastUsedAt: k.LastUsedAt,
		Declared: k.Declared != "", DeclaredIn: k.Declared}
}

func (a *API) listKeys(w http.ResponseWriter, r *http.Request) {
	page, err := httpkit.PageOf(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ks, total, err := a.db.ListAPIKeys(r.Context(), page)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := make([]apiKeyJSON, len(ks))
	for i, k := range ks {
		out[i] = toAPIKeyJSON(k)
	}
	httpkit.WriteJSON(w, http.StatusOK, httpkit.NewList(out, total, page))
}

func (a *API) createKey(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Name string `json:"name"`
		Role string `json:"role"`
	}
	if err := httpkit.Decode(r, &in); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := ValidName("name", in.Name); err != nil {
		a.fail(w, r, err)
		return
	}
	if !auth.ValidRole(in.Role) {
		a.fail(w, r, httpkit.Unprocessable("role", "role %q is not one of %v", in.Role, auth.RoleNames()))
		return
	}
	k, key, err := auth.CreateKey(r.Context(), a.db, in.Name, in.Role)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := toAPIKeyJSON(k)
	out.Key = key // the only place the key ever appears
	w.Header().Set("Location", "/api/v1/api-keys/"+strconv.FormatInt(k.ID, 10))
	httpkit.WriteJSON(w, http.StatusCreated, out)
}

func (a *API) deleteKey(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil {
		a.fail(w, r, storage.ErrNotFound)
		return
	}
	k, err := a.db.GetAPIKey(r.Context(), id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if k.Declared != "" {
		a.fail(w, r, httpkit.Declared("API key "+strconv.Quote(k.Name), k.Declared))
		return
	}
	if err := a.db.DeleteAPIKey(r.Context(), id); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
