package dashboard

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/storage"
)

// jobRoutes serves /job/{project}/{jobset}/{job}: history, charts, latest, badge.
func (d *Dashboard) jobRoutes(r chi.Router) {
	r.Get("/job/{project}/{jobset}/{job}", d.job)
	r.Get("/job/{project}/{jobset}/{job}/latest", d.jobLatest(false))
	r.Get("/job/{project}/{jobset}/{job}/latest-finished", d.jobLatest(true))
	r.Get("/job/{project}/{jobset}/{job}/badge.svg", d.jobBadge)
	r.With(d.forms).Post("/job/{project}/{jobset}/{job}/star", d.jobStar)
}

const (
	jobBuildsPerPage = 25
	chartBuilds      = 100
)

func (d *Dashboard) job(w http.ResponseWriter, r *http.Request) {
	d.jobPage(w, r, http.StatusOK, view{})
}

// jobPage renders the job page with status and what v adds (an error).
func (d *Dashboard) jobPage(w http.ResponseWriter, r *http.Request, status int, v view) {
	ctx := r.Context()
	p, j, err := d.lookupJobset(r)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	job := nameParam(r, "job")
	pg := pageOf(r, jobBuildsPerPage)
	builds, total, err := d.db.DashJobBuilds(ctx, j.ID, job, pg)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	if total == 0 {
		d.refuse(w, r, http.StatusNotFound, fmt.Sprintf("Jobset %s:%s has no job %q.", p.Name, j.Name, job))
		return
	}
	points, err := d.db.DashJobChart(ctx, j.ID, job, chartBuilds)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	if uid := userID(r); uid != 0 {
		starred, err := d.db.JobStarred(ctx, uid, j.ID, job)
		if err != nil {
			d.fail(w, r, err)
			return
		}
		v["CanStar"], v["Starred"] = true, starred
	}
	base := jobURL(p.Name, j.Name, job)
	v["Title"] = "Job " + p.Name + ":" + j.Name + ":" + job
	v["Crumbs"] = []Crumb{{Name: "Home", URL: "/"}, {Name: "Projects", URL: "/projects"},
		{Name: p.Name, URL: projectURL(p.Name)}, {Name: j.Name, URL: jobsetURL(p.Name, j.Name)}, {Name: job}}
	v["Project"], v["Jobset"], v["Job"], v["Base"] = p, j, job, base
	v["BadgeURL"] = d.siteURL(r) + base + "/badge.svg"
	v["Builds"], v["Pager"] = builds, pagerOf(r, pg, total)
	v["Durations"], v["Sizes"] = durationChart(points), sizeChart(points)
	d.render(w, r, status, "job", v)
}

// siteURL is where people reach the coordinator, for addresses they copy: the
// configured public URL, else the request's own host.
func (d *Dashboard) siteURL(r *http.Request) string {
	if d.cfg.PublicURL != "" {
		return strings.TrimSuffix(d.cfg.PublicURL, "/")
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// jobLatest redirects to the job's newest succeeded build, or with anyFinished to
// its newest finished one; 404 when there is none.
func (d *Dashboard) jobLatest(anyFinished bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, j, err := d.lookupJobset(r)
		if err != nil {
			d.fail(w, r, err)
			return
		}
		job := nameParam(r, "job")
		id, _, err := d.db.LatestJobBuild(r.Context(), j.ID, job, anyFinished)
		if errors.Is(err, storage.ErrNotFound) {
			what := "succeeded"
			if anyFinished {
				what = "finished"
			}
			d.refuse(w, r, http.StatusNotFound, fmt.Sprintf("Job %s:%s:%s has no %s build.", p.Name, j.Name, job, what))
			return
		}
		if err != nil {
			d.fail(w, r, err)
			return
		}
		http.Redirect(w, r, "/build/"+strconv.FormatInt(id, 10), http.StatusFound)
	}
}

// jobBadge is an SVG status badge of the job's latest finished build, for READMEs.
func (d *Dashboard) jobBadge(w http.ResponseWriter, r *http.Request) {
	status, word := http.StatusOK, "unknown"
	_, j, err := d.lookupJobset(r)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		status = http.StatusNotFound
	case err != nil:
		d.log.Error("job badge", "path", r.URL.Path, "err", err)
		status = http.StatusInternalServerError
	default:
		_, last, err := d.db.LatestJobBuild(r.Context(), j.ID, nameParam(r, "job"), true)
		switch {
		case err == nil && last == "succeeded":
			word = "passing"
		case err == nil:
			word = "failing"
		case !errors.Is(err, storage.ErrNotFound):
			d.log.Error("job badge", "path", r.URL.Path, "err", err)
			status = http.StatusInternalServerError
		}
	}
	w.Header().Set("Content-Type", "image/svg+xml")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(status)
	_, _ = w.Write(badge("build", word))
}

// jobStar stars or unstars (star=0) the job for the signed-in person, through the
// starred-jobs API.
func (d *Dashboard) jobStar(w http.ResponseWriter, r *http.Request) {
	p, j, err := d.lookupJobset(r)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	method := http.MethodPost
	if r.PostFormValue("star") == "0" {
		method = http.MethodDelete
	}
	job := nameParam(r, "job")
	res := d.submit(r, method, "/api/v1/me/starred-jobs", map[string]any{"jobset_id": j.ID, "job": job})
	if !res.OK() {
		d.jobPage(w, r, res.Status, view{"Error": "Cannot change the star: " + res.Message()})
		return
	}
	http.Redirect(w, r, jobURL(p.Name, j.Name, job), http.StatusSeeOther)
}
