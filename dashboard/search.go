package dashboard

import (
	"errors"
	"net/http"
	"net/url"
	"slices"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/storage"
)

// Search shows searchPreview hits of each kind, and searchPerPage on a kind's own
// pages (?in=jobs).
const (
	searchPreview = 10
	searchPerPage = 50
)

// searchRoutes serves /search?q=: projects, jobsets, jobs, and builds by .drv or
// output path (GET /api/v1/search answers the same in JSON).
func (d *Dashboard) searchRoutes(r chi.Router) {
	r.Get("/search", d.search)
}

// searchSection is one kind of hit on the page.
type searchSection struct {
	Kind  string
	Title string
	Total int64
	More  string // the kind's own pages, when it has more hits than shown
}

var searchTitles = map[string]string{storage.SearchProjects: "Projects", storage.SearchJobsets: "Jobsets",
	storage.SearchJobs: "Jobs", storage.SearchBuilds: "Builds"}

func (d *Dashboard) search(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query().Get("q")
	in := r.URL.Query().Get("in")
	if !slices.Contains(storage.SearchKinds, in) {
		in = ""
	}
	v := view{"Title": "Search", "Crumbs": []Crumb{{Name: "Home", URL: "/"}, {Name: "Search"}}, "Query": q, "In": in}
	if q == "" {
		d.render(w, r, http.StatusOK, "search", v)
		return
	}
	terms, err := storage.ParseSearch(q)
	if errors.Is(err, storage.ErrSearchTooShort) {
		v["Error"] = "Type at least 2 characters to search."
		d.render(w, r, http.StatusUnprocessableEntity, "search", v)
		return
	}
	kinds, page := storage.SearchKinds, storage.Page{Limit: searchPreview}
	if in != "" {
		kinds, page = []string{in}, pageOf(r, searchPerPage)
	}
	res, err := d.db.Search(r.Context(), terms, page, kinds...)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	var sections []searchSection
	var found int64
	for _, k := range kinds {
		s := searchSection{Kind: k, Title: searchTitles[k], Total: res.Totals[k]}
		if in == "" && s.Total > int64(hitCount(res, k)) {
			s.More = "/search?" + url.Values{"q": {q}, "in": {k}}.Encode()
		}
		found += s.Total
		sections = append(sections, s)
	}
	v["Title"] = "Search: " + terms.Text
	v["Results"], v["Sections"], v["Found"], v["Terms"] = res, sections, found, terms
	if in != "" {
		v["Crumbs"] = []Crumb{{Name: "Home", URL: "/"}, {Name: "Search", URL: "/search?" + url.Values{"q": {q}}.Encode()}, {Name: searchTitles[in]}}
		v["Title"] = searchTitles[in] + " matching " + terms.Text
		v["Pager"] = pagerOf(r, page, res.Totals[in])
	}
	d.render(w, r, http.StatusOK, "search", v)
}

// hitCount is the number of hits of kind k on the page.
func hitCount(res storage.SearchResults, k string) int {
	switch k {
	case storage.SearchProjects:
		return len(res.Projects)
	case storage.SearchJobsets:
		return len(res.Jobsets)
	case storage.SearchJobs:
		return len(res.Jobs)
	}
	return len(res.Builds)
}
