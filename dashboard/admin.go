package dashboard

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/storage"
)

// adminPerPage is how many rows each list of the admin page shows.
const adminPerPage = 50

// adminRoutes serves /admin: users, API keys, enrollment tokens, the cache key.
// Every list is read from the API as the signed-in admin, and every form is the
// API request it stands for.
func (d *Dashboard) adminRoutes(r chi.Router) {
	r.Get("/admin", d.adminOnly(d.admin))
	r.With(d.forms).Post("/admin/api-keys", d.createKey)
	r.With(d.forms).Post("/admin/api-keys/{id}/delete", d.deleteKey)
	r.With(d.forms).Post("/admin/agent-tokens", d.createToken)
}

// adminOnly lets admins through; anybody else signed in gets the 403 page, and
// somebody not signed in is sent to sign in first.
func (d *Dashboard) adminOnly(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, ok := auth.FromContext(r.Context())
		if !ok {
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		if !auth.Allows(p.Role, auth.PermAdmin) {
			d.refuse(w, r, http.StatusForbidden, "Only admins may open this page.")
			return
		}
		next(w, r)
	}
}

func (d *Dashboard) admin(w http.ResponseWriter, r *http.Request) {
	d.adminPage(w, r, http.StatusOK, nil)
}

// apiKeyItem is an API key as GET /api/v1/api-keys lists it.
type apiKeyItem struct {
	ID         int64      `json:"id"`
	Name       string     `json:"name"`
	Role       string     `json:"role"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
}

// listOf is the API's list envelope.
type listOf[T any] struct {
	Items []T   `json:"items"`
	Total int64 `json:"total"`
}

// secret is a key or token shown once, on the page that answers its creation.
type secret struct {
	What, Value, Hint string
}

// adminPage renders the admin page with the lists (read from the API as the
// signed-in person) and extra (an error, a secret, a form's values). A refusal by
// the API (someone not an admin who posted a form anyway) is the 403 page.
func (d *Dashboard) adminPage(w http.ResponseWriter, r *http.Request, status int, extra view) {
	if !can(r, auth.PermAdmin) {
		msg := "Only admins may do this."
		if e, ok := extra["Error"].(string); ok && e != "" {
			msg = e
		}
		d.refuse(w, r, http.StatusForbidden, msg)
		return
	}
	keysPage := pageFor(r, "keys", adminPerPage)
	res := d.submit(r, http.MethodGet, fmt.Sprintf("/api/v1/api-keys?limit=%d&offset=%d", keysPage.Limit, keysPage.Offset), nil)
	var keys listOf[apiKeyItem]
	if !res.OK() {
		d.fail(w, r, fmt.Errorf("list api keys: %s", res.Message()))
		return
	}
	if err := res.Decode(&keys); err != nil {
		d.fail(w, r, fmt.Errorf("list api keys: %w", err))
		return
	}
	v := view{"Title": "Admin", "Crumbs": []Crumb{{Name: "Home", URL: "/"}, {Name: "Admin"}},
		"Keys": keys.Items, "KeysPager": pagerFor(r, "/admin", "keys", keysPage, keys.Total), "Roles": auth.RoleNames(),
		"CacheKey": d.cfg.CachePublicKey, "CacheURL": d.baseURL(r) + "/nix-cache", "Form": map[string]string{}}
	for k, val := range extra {
		v[k] = val
	}
	d.render(w, r, status, "admin", v)
}

// baseURL is where people reach the coordinator: Config.PublicURL, else this
// request's scheme and host.
func (d *Dashboard) baseURL(r *http.Request) string {
	if d.cfg.PublicURL != "" {
		return strings.TrimRight(d.cfg.PublicURL, "/")
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// createKey makes an API key (POST /api/v1/api-keys) and shows it, once.
func (d *Dashboard) createKey(w http.ResponseWriter, r *http.Request) {
	name, role := strings.TrimSpace(r.PostFormValue("name")), r.PostFormValue("role")
	res := d.submit(r, http.MethodPost, "/api/v1/api-keys", map[string]string{"name": name, "role": role})
	if !res.OK() {
		d.adminPage(w, r, res.Status, view{"Error": "Cannot create the API key: " + res.Message(), "Form": formValues(r)})
		return
	}
	var k struct {
		Name string `json:"name"`
		Role string `json:"role"`
		Key  string `json:"key"`
	}
	if err := res.Decode(&k); err != nil || k.Key == "" {
		d.fail(w, r, fmt.Errorf("create api key: an answer without the key: %v", err))
		return
	}
	d.adminPage(w, r, http.StatusCreated, view{"Secret": secret{What: fmt.Sprintf("API key %s (%s)", k.Name, k.Role), Value: k.Key,
		Hint: "Send it as “Authorization: Bearer <key>”, or sign in with it. Copy it now: it is not stored and will not be shown again."}})
}

// deleteKey deletes an API key (DELETE /api/v1/api-keys/{id}).
func (d *Dashboard) deleteKey(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil {
		d.fail(w, r, storage.ErrNotFound)
		return
	}
	res := d.submit(r, http.MethodDelete, fmt.Sprintf("/api/v1/api-keys/%d", id), nil)
	if !res.OK() {
		d.adminPage(w, r, res.Status, view{"Error": "Cannot delete the API key: " + res.Message()})
		return
	}
	http.Redirect(w, r, "/admin#api-keys", http.StatusSeeOther)
}

// createToken makes an agent enrollment token (POST /api/v1/agents/tokens) and
// shows it, once. Uses and hours left empty take the API's defaults.
func (d *Dashboard) createToken(w http.ResponseWriter, r *http.Request) {
	body := map[string]any{"name": strings.TrimSpace(r.PostFormValue("token_name"))}
	bad := func(msg string) {
		d.adminPage(w, r, http.StatusUnprocessableEntity, view{"Error": msg, "Form": formValues(r)})
	}
	if s := strings.TrimSpace(r.PostFormValue("uses")); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			bad("Uses must be a whole number.")
			return
		}
		body["uses"] = n
	}
	if s := strings.TrimSpace(r.PostFormValue("hours")); s != "" {
		h, err := strconv.ParseFloat(s, 64)
		if err != nil {
			bad("Valid for must be a number of hours.")
			return
		}
		body["expires_in"] = int64(h * 3600)
	}
	res := d.submit(r, http.MethodPost, "/api/v1/agents/tokens", body)
	if !res.OK() {
		d.adminPage(w, r, res.Status, view{"Error": "Cannot create the enrollment token: " + res.Message(), "Form": formValues(r)})
		return
	}
	var t struct {
		Name      string    `json:"name"`
		Token     string    `json:"token"`
		Uses      int       `json:"uses"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	if err := res.Decode(&t); err != nil || t.Token == "" {
		d.fail(w, r, fmt.Errorf("create enrollment token: an answer without the token: %v", err))
		return
	}
	d.adminPage(w, r, http.StatusCreated, view{"Secret": secret{
		What:  fmt.Sprintf("Enrollment token %s (%d %s, until %s)", t.Name, t.Uses, plural(t.Uses, "use", "uses"), exact(t.ExpiresAt)),
		Value: t.Token,
		Hint: "Give it to the agent once, in its configuration: enrollment_token = \"…\" (or enrollment_token_file) under [coordinator]. " +
			"It pins its key on first connect and needs no token after. Copy it now: it will not be shown again."}})
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// pageFor is pageOf for a list paged by its own parameter (param=N), so two lists
// on one page page independently.
func pageFor(r *http.Request, param string, perPage int) storage.Page {
	n, err := strconv.Atoi(r.URL.Query().Get(param))
	if err != nil || n < 1 {
		n = 1
	}
	return storage.Page{Limit: perPage, Offset: (n - 1) * perPage}
}

// pagerFor is pagerOf for a list of the page at path paged by param (the page may
// answer a form posted elsewhere).
func pagerFor(r *http.Request, path, param string, p storage.Page, total int64) Pager {
	pg := Pager{Page: p.Offset/max(p.Limit, 1) + 1, Total: total}
	pg.Pages = int((total + int64(p.Limit) - 1) / int64(max(p.Limit, 1)))
	link := func(n int) string {
		q := r.URL.Query()
		q.Set(param, strconv.Itoa(n))
		return (&url.URL{Path: path, RawQuery: q.Encode()}).String()
	}
	if pg.Page > 1 {
		pg.Prev = link(pg.Page - 1)
	}
	if pg.Page < pg.Pages {
		pg.Next = link(pg.Page + 1)
	}
	return pg
}
