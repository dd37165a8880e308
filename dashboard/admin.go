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
	r.With(d.forms).Post("/admin/users", d.createUser)
	r.Get("/admin/users/{id}", d.adminOnly(d.userPage))
	r.With(d.forms).Post("/admin/users/{id}", d.updateUser)
	r.With(d.forms).Post("/admin/users/{id}/{state:enable|disable}", d.setUserEnabled)
	r.Get("/admin/users/{id}/delete", d.adminOnly(d.deleteUserPage))
	r.With(d.forms).Post("/admin/users/{id}/delete", d.deleteUser)
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
	// DeclaredIn is the config file declaring the key ("": none): not deletable here.
	DeclaredIn string `json:"declared_in"`
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
	usersPage, keysPage := pageFor(r, "users", adminPerPage), pageFor(r, "keys", adminPerPage)
	var users listOf[userItem]
	var keys listOf[apiKeyItem]
	if err := d.apiList(r, "/api/v1/users", usersPage, &users); err != nil {
		d.fail(w, r, err)
		return
	}
	if err := d.apiList(r, "/api/v1/api-keys", keysPage, &keys); err != nil {
		d.fail(w, r, err)
		return
	}
	me, _ := auth.FromContext(r.Context())
	v := view{"Title": "Admin", "Crumbs": []Crumb{{Name: "Home", URL: "/"}, {Name: "Admin"}}, "MyID": me.UserID,
		"Users": users.Items, "UsersPager": pagerFor(r, "/admin", "users", usersPage, users.Total),
		"Keys": keys.Items, "KeysPager": pagerFor(r, "/admin", "keys", keysPage, keys.Total), "Roles": auth.RoleNames(),
		"MinPassword": auth.MinPasswordLength,
		"CacheKey":    d.cfg.CachePublicKey, "CacheURL": d.cacheURL(r), "Form": map[string]string{}}
	for k, val := range extra {
		v[k] = val
	}
	d.render(w, r, status, "admin", v)
}

// apiList reads a page of a list from the API (as the signed-in person) into out.
func (d *Dashboard) apiList(r *http.Request, path string, page storage.Page, out any) error {
	res := d.submit(r, http.MethodGet, fmt.Sprintf("%s?limit=%d&offset=%d", path, page.Limit, page.Offset), nil)
	if !res.OK() {
		return fmt.Errorf("GET %s: %d %s", path, res.Status, res.Message())
	}
	if err := res.Decode(out); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
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

// userItem is an account as the users API shows it.
type userItem struct {
	ID          int64      `json:"id"`
	Username    string     `json:"username"`
	Email       string     `json:"email"`
	FullName    string     `json:"full_name"`
	Role        string     `json:"role"`
	Enabled     bool       `json:"enabled"`
	CreatedAt   time.Time  `json:"created_at"`
	LastLoginAt *time.Time `json:"last_login_at"`
	// DeclaredIn is the config file declaring the account ("": none): not editable here.
	DeclaredIn string `json:"declared_in"`
}

// createUser makes an account (POST /api/v1/users).
func (d *Dashboard) createUser(w http.ResponseWriter, r *http.Request) {
	body := map[string]string{"username": strings.TrimSpace(r.PostFormValue("username")), "password": r.PostFormValue("password"),
		"role": r.PostFormValue("role"), "email": strings.TrimSpace(r.PostFormValue("email"))}
	res := d.submit(r, http.MethodPost, "/api/v1/users", body)
	if !res.OK() {
		form := formValues(r)
		delete(form, "password") // never sent back to the browser
		d.adminPage(w, r, res.Status, view{"Error": "Cannot create the user: " + res.Message(), "Form": form})
		return
	}
	http.Redirect(w, r, "/admin#users", http.StatusSeeOther)
}

// userOf reads the account of the route's {id} from the API.
func (d *Dashboard) userOf(r *http.Request) (userItem, apiResult) {
	var u userItem
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil {
		return u, apiResult{Status: http.StatusNotFound, Body: []byte(`{"error":"not found"}`)}
	}
	res := d.submit(r, http.MethodGet, fmt.Sprintf("/api/v1/users/%d", id), nil)
	if res.OK() {
		if err := res.Decode(&u); err != nil {
			return u, apiResult{Status: http.StatusInternalServerError, Body: []byte(`{"error":"cannot read the user"}`)}
		}
	}
	return u, res
}

// userView is the page of one account: its edit form (or, with del, the
// confirmation of deleting it).
func userView(u userItem, del bool) view {
	v := view{"Title": "User " + u.Username, "User": u, "Roles": auth.RoleNames(), "Form": map[string]string{},
		"MinPassword": auth.MinPasswordLength,
		"Crumbs":      []Crumb{{Name: "Home", URL: "/"}, {Name: "Admin", URL: "/admin"}, {Name: u.Username}}}
	if del {
		v["Title"], v["DeleteUser"] = "Delete user "+u.Username, true
	}
	return v
}

// userPageOr renders the page of the route's account, or the API's refusal.
func (d *Dashboard) userPageOr(w http.ResponseWriter, r *http.Request, status int, del bool, extra view) {
	u, res := d.userOf(r)
	if !res.OK() {
		d.userRefused(w, r, res)
		return
	}
	v := userView(u, del)
	for k, val := range extra {
		v[k] = val
	}
	d.render(w, r, status, "admin", v)
}

// userRefused shows the API's refusal to read an account: 404, 403 or another error.
func (d *Dashboard) userRefused(w http.ResponseWriter, r *http.Request, res apiResult) {
	switch res.Status {
	case http.StatusNotFound:
		d.fail(w, r, storage.ErrNotFound)
	case http.StatusUnauthorized, http.StatusForbidden:
		d.refuse(w, r, http.StatusForbidden, res.Message())
	default:
		d.fail(w, r, fmt.Errorf("read user: %d %s", res.Status, res.Message()))
	}
}

func (d *Dashboard) userPage(w http.ResponseWriter, r *http.Request) {
	d.userPageOr(w, r, http.StatusOK, false, nil)
}

func (d *Dashboard) deleteUserPage(w http.ResponseWriter, r *http.Request) {
	d.userPageOr(w, r, http.StatusOK, true, nil)
}

// updateUser changes an account's role, email and, when one is typed, password
// (PUT /api/v1/users/{id}).
func (d *Dashboard) updateUser(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	body := map[string]any{"role": r.PostFormValue("role"), "email": strings.TrimSpace(r.PostFormValue("email"))}
	if pw := r.PostFormValue("password"); pw != "" {
		body["password"] = pw
	}
	res := d.submit(r, http.MethodPut, "/api/v1/users/"+id, body)
	if !res.OK() {
		d.userFormFailed(w, r, res, false, "Cannot change the user: ")
		return
	}
	http.Redirect(w, r, "/admin#user-"+id, http.StatusSeeOther)
}

// userFormFailed re-renders a user's page after the API refused its form.
func (d *Dashboard) userFormFailed(w http.ResponseWriter, r *http.Request, res apiResult, del bool, what string) {
	if res.Status == http.StatusUnauthorized || res.Status == http.StatusForbidden {
		d.refuse(w, r, http.StatusForbidden, res.Message())
		return
	}
	form := formValues(r)
	delete(form, "password")
	d.userPageOr(w, r, res.Status, del, view{"Error": what + res.Message(), "Form": form})
}

// setUserEnabled enables or disables an account (PUT /api/v1/users/{id}).
func (d *Dashboard) setUserEnabled(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "id")
	res := d.submit(r, http.MethodPut, "/api/v1/users/"+id, map[string]bool{"enabled": chi.URLParam(r, "state") == "enable"})
	if !res.OK() {
		d.adminPage(w, r, res.Status, view{"Error": "Cannot change the user: " + res.Message()})
		return
	}
	http.Redirect(w, r, "/admin#user-"+id, http.StatusSeeOther)
}

// deleteUser deletes an account (DELETE /api/v1/users/{id}) once the box saying so
// is ticked.
func (d *Dashboard) deleteUser(w http.ResponseWriter, r *http.Request) {
	if r.PostFormValue("confirm") != "yes" {
		d.userFormFailed(w, r, apiResult{Status: http.StatusUnprocessableEntity,
			Body: []byte(`{"error":"Tick the box to confirm: deleting cannot be undone."}`)}, true, "")
		return
	}
	res := d.submit(r, http.MethodDelete, "/api/v1/users/"+chi.URLParam(r, "id"), nil)
	if !res.OK() {
		d.userFormFailed(w, r, res, true, "Cannot delete the user: ")
		return
	}
	http.Redirect(w, r, "/admin#users", http.StatusSeeOther)
}
