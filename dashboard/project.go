package dashboard

import (
	"fmt"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/storage"
)

// projectRoutes serves /projects, /project/{name}, and the forms that create and
// change projects and add jobsets (sent to the projects API as the signed-in person).
func (d *Dashboard) projectRoutes(r chi.Router) {
	r.Get("/projects", d.projects)
	r.Get("/projects/new", d.projectNew)
	r.With(d.forms).Post("/projects/new", d.projectCreate)
	r.Get("/project/{project}", d.project)
	r.Get("/project/{project}/edit", d.projectEdit)
	r.With(d.forms).Post("/project/{project}/edit", d.projectUpdate)
	r.Get("/project/{project}/jobsets/new", d.jobsetNew)
	r.With(d.forms).Post("/project/{project}/jobsets/new", d.jobsetCreate)
}

const (
	projectsPerPage = 25
	jobsetsPerPage  = 25
)

func (d *Dashboard) projects(w http.ResponseWriter, r *http.Request) {
	p := pageOf(r, projectsPerPage)
	ps, total, err := d.db.DashProjects(r.Context(), p, 0)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	d.render(w, r, http.StatusOK, "projects", view{"Title": "Projects",
		"Crumbs":   []Crumb{{Name: "Home", URL: "/"}, {Name: "Projects"}},
		"Projects": ps, "Pager": pagerOf(r, p, total), "CanCreate": can(r, auth.PermCreateProjects)})
}

func (d *Dashboard) project(w http.ResponseWriter, r *http.Request) {
	p, err := d.db.GetProjectByName(r.Context(), nameParam(r, "project"))
	if err != nil {
		d.fail(w, r, err)
		return
	}
	pg := pageOf(r, jobsetsPerPage)
	js, total, err := d.db.DashJobsets(r.Context(), p.ID, pg)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	title := p.Name
	if p.DisplayName != "" {
		title = p.DisplayName
	}
	d.render(w, r, http.StatusOK, "project", view{"Title": title,
		"Crumbs":  []Crumb{{Name: "Home", URL: "/"}, {Name: "Projects", URL: "/projects"}, {Name: p.Name}},
		"Project": p, "Jobsets": js, "Pager": pagerOf(r, pg, total), "Manages": manages(r, p)})
}

// projectForm is the project form's fields as typed.
type projectForm struct {
	Name, DisplayName, Description, RepositoryURL, WebhookSecret string
	Enabled                                                      bool
}

func projectFormOf(p storage.Project) projectForm {
	return projectForm{Name: p.Name, DisplayName: p.DisplayName, Description: p.Description,
		RepositoryURL: p.RepositoryURL, Enabled: p.Enabled}
}

func projectFormFrom(r *http.Request) projectForm {
	return projectForm{Name: r.PostFormValue("name"), DisplayName: r.PostFormValue("display_name"),
		Description: r.PostFormValue("description"), RepositoryURL: r.PostFormValue("repository_url"),
		WebhookSecret: r.PostFormValue("webhook_secret"), Enabled: r.PostFormValue("enabled") != ""}
}

// body is the API request the form stands for; an empty webhook secret leaves the
// project's as it is (the API never shows it, so the form cannot either).
func (f projectForm) body() map[string]any {
	b := map[string]any{"name": f.Name, "display_name": f.DisplayName, "description": f.Description,
		"repository_url": f.RepositoryURL, "enabled": f.Enabled}
	if f.WebhookSecret != "" {
		b["webhook_secret"] = f.WebhookSecret
	}
	return b
}

func (d *Dashboard) renderProjectForm(w http.ResponseWriter, r *http.Request, status int, f projectForm, old *storage.Project, msg string) {
	v := view{"Form": f, "Action": r.URL.Path}
	if msg != "" {
		v["Error"] = msg
	}
	if old == nil {
		v["Title"] = "New project"
		v["Crumbs"] = []Crumb{{Name: "Home", URL: "/"}, {Name: "Projects", URL: "/projects"}, {Name: "New"}}
	} else {
		v["Title"], v["Editing"], v["Old"] = "Edit project "+old.Name, true, old
		v["Crumbs"] = []Crumb{{Name: "Home", URL: "/"}, {Name: "Projects", URL: "/projects"},
			{Name: old.Name, URL: projectURL(old.Name)}, {Name: "Edit"}}
	}
	d.render(w, r, status, "project_form", v)
}

func (d *Dashboard) projectNew(w http.ResponseWriter, r *http.Request) {
	if d.formGate(w, r, can(r, auth.PermCreateProjects), "create projects") {
		d.renderProjectForm(w, r, http.StatusOK, projectForm{Enabled: true}, nil, "")
	}
}

func (d *Dashboard) projectCreate(w http.ResponseWriter, r *http.Request) {
	f := projectFormFrom(r)
	res := d.submit(r, http.MethodPost, "/api/v1/projects", f.body())
	if !res.OK() {
		d.renderProjectForm(w, r, res.Status, f, nil, res.Message())
		return
	}
	var p struct{ Name string }
	if err := res.Decode(&p); err != nil {
		d.fail(w, r, fmt.Errorf("read the created project: %w", err))
		return
	}
	http.Redirect(w, r, projectURL(p.Name), http.StatusSeeOther)
}

func (d *Dashboard) projectEdit(w http.ResponseWriter, r *http.Request) {
	p, err := d.db.GetProjectByName(r.Context(), nameParam(r, "project"))
	if err != nil {
		d.fail(w, r, err)
		return
	}
	if d.formGate(w, r, manages(r, p), "change project "+p.Name) {
		d.renderProjectForm(w, r, http.StatusOK, projectFormOf(p), &p, "")
	}
}

func (d *Dashboard) projectUpdate(w http.ResponseWriter, r *http.Request) {
	p, err := d.db.GetProjectByName(r.Context(), nameParam(r, "project"))
	if err != nil {
		d.fail(w, r, err)
		return
	}
	f := projectFormFrom(r)
	res := d.submit(r, http.MethodPut, fmt.Sprintf("/api/v1/projects/%d", p.ID), f.body())
	if !res.OK() {
		d.renderProjectForm(w, r, res.Status, f, &p, res.Message())
		return
	}
	var out struct{ Name string }
	if err := res.Decode(&out); err != nil {
		d.fail(w, r, fmt.Errorf("read the changed project: %w", err))
		return
	}
	http.Redirect(w, r, projectURL(out.Name), http.StatusSeeOther)
}

func (d *Dashboard) jobsetNew(w http.ResponseWriter, r *http.Request) {
	p, err := d.db.GetProjectByName(r.Context(), nameParam(r, "project"))
	if err != nil {
		d.fail(w, r, err)
		return
	}
	if d.formGate(w, r, manages(r, p), "add jobsets to project "+p.Name) {
		d.renderJobsetForm(w, r, http.StatusOK, newJobsetForm(), p, nil, "")
	}
}

func (d *Dashboard) jobsetCreate(w http.ResponseWriter, r *http.Request) {
	p, err := d.db.GetProjectByName(r.Context(), nameParam(r, "project"))
	if err != nil {
		d.fail(w, r, err)
		return
	}
	f := jobsetFormFrom(r)
	body, msg := f.body()
	if msg != "" {
		d.renderJobsetForm(w, r, http.StatusUnprocessableEntity, f, p, nil, msg)
		return
	}
	res := d.submit(r, http.MethodPost, fmt.Sprintf("/api/v1/projects/%d/jobsets", p.ID), body)
	if !res.OK() {
		d.renderJobsetForm(w, r, res.Status, f, p, nil, res.Message())
		return
	}
	var j struct{ Name string }
	if err := res.Decode(&j); err != nil {
		d.fail(w, r, fmt.Errorf("read the created jobset: %w", err))
		return
	}
	http.Redirect(w, r, jobsetURL(p.Name, j.Name), http.StatusSeeOther)
}
