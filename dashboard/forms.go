package dashboard

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
)

// csrfField is the name of the hidden input every form carries.
const csrfField = "csrf"

// forms guards the dashboard's POST routes: the request must come from a signed-in
// session and carry that session's CSRF token (csrfField); otherwise 403, and nothing
// is done. Someone not signed in is sent to /login first.
func (d *Dashboard) forms(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := auth.FromContext(r.Context())
		if !ok {
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.Path), http.StatusSeeOther)
			return
		}
		if p.CSRF == "" || subtle.ConstantTimeCompare([]byte(r.PostFormValue(csrfField)), []byte(p.CSRF)) != 1 {
			d.refuse(w, r, http.StatusForbidden, "This form's security token is missing or stale: reload the page and send it again.")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// apiResult is the API's answer to a submitted form.
type apiResult struct {
	Status int
	Body   []byte
}

// OK reports a 2xx answer.
func (a apiResult) OK() bool { return a.Status >= 200 && a.Status < 300 }

// Message is the API's error message (with the field it names), for the page.
func (a apiResult) Message() string {
	var e struct {
		Error string `json:"error"`
		Field string `json:"field"`
	}
	if json.Unmarshal(a.Body, &e) != nil || e.Error == "" {
		return fmt.Sprintf("the request failed (%d %s)", a.Status, http.StatusText(a.Status))
	}
	if e.Field != "" && !strings.Contains(e.Error, e.Field) {
		return e.Field + ": " + e.Error
	}
	return e.Error
}

// Decode reads the API's JSON answer into v.
func (a apiResult) Decode(v any) error { return json.Unmarshal(a.Body, v) }

// submit sends the API request a form stands for (body as JSON, nil for none) to the
// API in-process, as the principal of r, and returns its answer.
func (d *Dashboard) submit(r *http.Request, method, apiPath string, body any) apiResult {
	if d.cfg.API == nil {
		return apiResult{Status: http.StatusServiceUnavailable, Body: []byte(`{"error":"the dashboard cannot write here"}`)}
	}
	var buf bytes.Buffer
	if body != nil {
		if err := json.NewEncoder(&buf).Encode(body); err != nil {
			return apiResult{Status: http.StatusInternalServerError, Body: []byte(`{"error":"cannot encode the form"}`)}
		}
	}
	// Without the page's chi routing context: chi would route the API request along
	// the page's route instead of its own path.
	ctx := context.WithValue(context.WithoutCancel(r.Context()), chi.RouteCtxKey, (*chi.Context)(nil))
	if p, ok := auth.FromContext(r.Context()); ok {
		ctx = auth.WithPrincipal(ctx, p)
	}
	req := httptest.NewRequestWithContext(ctx, method, apiPath, &buf)
	req.RemoteAddr = r.RemoteAddr
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	rec := httptest.NewRecorder()
	d.cfg.API.ServeHTTP(rec, req)
	return apiResult{Status: rec.Code, Body: rec.Body.Bytes()}
}

// formValues returns the submitted form's values, without the CSRF token, as the
// fields a page re-renders after an error.
func formValues(r *http.Request) map[string]string {
	out := map[string]string{}
	keys := make([]string, 0, len(r.PostForm))
	for k := range r.PostForm {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k != csrfField {
			out[k] = r.PostForm.Get(k)
		}
	}
	return out
}
