package dashboard

import (
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"sync"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/storage"
)

// Helpers of the browsing pages (home, projects, project, jobset, job).

// listPage reads the page of one of several lists on a page from its own query
// parameter (?evals=2), as pageOf does for the page's one list.
func listPage(r *http.Request, param string, perPage int) storage.Page {
	n, err := strconv.Atoi(r.URL.Query().Get(param))
	if err != nil || n < 1 {
		n = 1
	}
	return storage.Page{Limit: perPage, Offset: (n - 1) * perPage}
}

// listPager is pagerOf for a list paged by param; its links keep the other lists'
// pages and jump to the list (#param, its section's id).
func listPager(r *http.Request, param string, p storage.Page, total int64) Pager {
	pg := Pager{Page: p.Offset/max(p.Limit, 1) + 1, Total: total}
	pg.Pages = int((total + int64(p.Limit) - 1) / int64(max(p.Limit, 1)))
	link := func(n int) string {
		q := r.URL.Query()
		q.Set(param, strconv.Itoa(n))
		return (&url.URL{Path: r.URL.Path, RawQuery: q.Encode(), Fragment: param}).String()
	}
	if pg.Page > 1 {
		pg.Prev = link(pg.Page - 1)
	}
	if pg.Page < pg.Pages {
		pg.Next = link(pg.Page + 1)
	}
	return pg
}

// morePager is listPager for a list that is not counted: it knows only whether
// another page follows (Pages and Total stay 0; the "more" template shows it).
func morePager(r *http.Request, param string, p storage.Page, more bool) Pager {
	total := int64(p.Offset + p.Limit)
	if more {
		total++
	}
	pg := listPager(r, param, p, total)
	pg.Pages, pg.Total = 0, 0
	return pg
}

// parallel runs the reads of a page's independent parts at once, each on its own
// pooled connection, so the page waits for the slowest rather than for their sum;
// it returns their errors joined.
func parallel(reads ...func() error) error {
	errs := make([]error, len(reads))
	var wg sync.WaitGroup
	for i, read := range reads {
		wg.Go(func() { errs[i] = read() })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// manages reports whether the signed-in principal manages project p (changes it,
// adds and changes its jobsets): the API's rule, asked with the project's owners.
func manages(r *http.Request, p storage.Project) bool {
	who, ok := auth.FromContext(r.Context())
	return ok && auth.ManagesProject(who, p.OwnerKeyID, p.OwnerUserID)
}

// userID is the signed-in person's user id; 0 for nobody or an API key.
func userID(r *http.Request) int64 {
	who, _ := auth.FromContext(r.Context())
	return who.UserID
}

// formGate lets a GET of a form page through only when the form would be allowed:
// someone not signed in is sent to /login first, someone not allowed gets 403.
func (d *Dashboard) formGate(w http.ResponseWriter, r *http.Request, allowed bool, what string) bool {
	if _, ok := auth.FromContext(r.Context()); !ok {
		http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.Path), http.StatusSeeOther)
		return false
	}
	if !allowed {
		d.refuse(w, r, http.StatusForbidden, "You may not "+what+".")
		return false
	}
	return true
}

// nameParam is the URL's {name} part decoded: chi gives it still escaped when the
// path holds an escaped '/' (r.URL.RawPath is set then), as a job's name may.
func nameParam(r *http.Request, name string) string {
	v := chi.URLParam(r, name)
	if r.URL.RawPath != "" {
		if u, err := url.PathUnescape(v); err == nil {
			return u
		}
	}
	return v
}

// projectURL, jobsetURL and jobURL are the pages of a project, a jobset and a job.
func projectURL(project string) string { return "/project/" + url.PathEscape(project) }

func jobsetURL(project, jobset string) string {
	return "/jobset/" + url.PathEscape(project) + "/" + url.PathEscape(jobset)
}

func jobURL(project, jobset, job string) string {
	return "/job/" + url.PathEscape(project) + "/" + url.PathEscape(jobset) + "/" + url.PathEscape(job)
}
