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
	ctx := r.Context()
	p, err := d.db.GetProjectByName(ctx, nameParam(r, "project"))
	if err != nil {
		d.fail(w, r, err)
		return
	}
	pg, all := pageOf(r, jobsetsPerPage), showAll(r)
	var (
		js    storage.JobsetList
		parts projectParts
	)
	err = parallel(func() (err error) {
		js, err = d.db.DashProjectJobsets(ctx, p.ID, all, pg)
		return err
	}, func() (err error) {
		parts, err = d.loadParts(ctx, p.ID)
		return err
	})
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
		"Project": p, "Jobsets": js.Rows, "Pager": pagerOf(r, pg, js.Total), "Manages": manages(r, p),
		"Forge": parts.Forge, "Notify": parts.Notify, "All": all, "NrHidden": js.Hidden})
}

// showAll reads ?all=1: lists show hidden jobsets (closed pull requests') too.
func showAll(r *http.Request) bool {
	switch r.URL.Query().Get("all") {
	case "1", "true":
		return true
	}
	return false
}

// projectForm is the project form's fields as typed. The secrets (WebhookSecret and
// those of the parts) are write-only: a blank one keeps the stored value.
type projectForm struct {
	Name, DisplayName, Description, RepositoryURL string
	Enabled                                       bool
	WebhookSecret                                 string
	ClearWebhookSecret                            bool
	Creds                                         credsForm
	Forge                                         forgeForm
	Notify                                        notifyForm
	// hasForge and hasNotify: the post carried those parts' fields; one without
	// leaves them alone.
	hasForge, hasNotify bool
}

func projectFormOf(p storage.Project, pp projectParts) projectForm {
	return projectForm{Name: p.Name, DisplayName: p.DisplayName, Description: p.Description,
		RepositoryURL: p.RepositoryURL, Enabled: p.Enabled, Forge: forgeFormOf(pp.forge), Notify: notifyFormOf(pp.notify),
		hasForge: true, hasNotify: true}
}

func projectFormFrom(r *http.Request) projectForm {
	f := projectForm{Name: r.PostFormValue("name"), DisplayName: r.PostFormValue("display_name"),
		Description: r.PostFormValue("description"), RepositoryURL: r.PostFormValue("repository_url"),
		WebhookSecret: r.PostFormValue("webhook_secret"), ClearWebhookSecret: r.PostFormValue("webhook_secret_clear") != "",
		Enabled: r.PostFormValue("enabled") != "", Creds: credsFormFrom(r)}
	f.Forge, f.hasForge = forgeFormFrom(r)
	f.Notify, f.hasNotify = notifyFormFrom(r)
	return f
}

// body is the API request the form stands for. A blank secret is not sent, so the
// project's stays (the API never shows it, so the form cannot either); stored are
// the project's fetch credentials when a blank one of them is to be kept.
func (f projectForm) body(stored *storage.FetchCredentials) map[string]any {
	b := map[string]any{"name": f.Name, "display_name": f.DisplayName, "description": f.Description,
		"repository_url": f.RepositoryURL, "enabled": f.Enabled}
	if s, send := secretChange(f.WebhookSecret, f.ClearWebhookSecret); send {
		b["webhook_secret"] = s
	}
	if c, send := f.Creds.body(stored); send {
		b["fetch_credentials"] = c
	}
	if f.hasForge {
		b["forge"] = f.Forge.body()
	}
	if f.hasNotify {
		b["notifications"] = f.Notify.body()
	}
	return b
}

// withoutSecrets is the form to render again: what was typed, but no secret.
func (f projectForm) withoutSecrets() (out projectForm, dropped bool) {
	dropped = f.WebhookSecret != "" || f.Creds.SSHKey != "" || f.Creds.HTTPSToken != "" || f.Forge.Token != "" ||
		f.Notify.WebhookSecret != ""
	f.WebhookSecret, f.Creds.SSHKey, f.Creds.HTTPSToken, f.Forge.Token, f.Notify.WebhookSecret = "", "", "", "", ""
	return f, dropped
}

// renderProjectForm shows the form with f (secrets left out) for project old (nil: a
// new one), and, after a refused request (res), its message and the field it names.
// The project's parts say which of its secrets are set: parts, or read here when nil.
func (d *Dashboard) renderProjectForm(w http.ResponseWriter, r *http.Request, status int, f projectForm, old *storage.Project,
	parts *projectParts, res *apiResult) {
	if parts == nil {
		parts = &projectParts{}
		if old != nil {
			var err error
			if *parts, err = d.loadParts(r.Context(), old.ID); err != nil {
				d.fail(w, r, err)
				return
			}
		}
	}
	f, dropped := f.withoutSecrets()
	v := view{"Form": f, "Action": r.URL.Path, "Set": secretsOf(old, *parts), "ForgeTypes": forgeTypes(),
		"NotifyWhen": notifyWhen(), "ErrorField": ""}
	if res != nil {
		v["Error"], v["ErrorField"], v["SecretsDropped"] = res.Message(), apiField(*res), dropped
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

// apiField is the field a refused API request names ("forge.repository"), "" for none.
func apiField(res apiResult) string {
	var e struct {
		Field string `json:"field"`
	}
	if res.Decode(&e) != nil {
		return ""
	}
	return e.Field
}

func (d *Dashboard) projectNew(w http.ResponseWriter, r *http.Request) {
	if d.formGate(w, r, can(r, auth.PermCreateProjects), "create projects") {
		d.renderProjectForm(w, r, http.StatusOK, projectForm{Enabled: true, Notify: notifyFormOf(nil)}, nil, nil, nil)
	}
}

func (d *Dashboard) projectCreate(w http.ResponseWriter, r *http.Request) {
	f := projectFormFrom(r)
	res := d.submit(r, http.MethodPost, "/api/v1/projects", f.body(nil))
	if !res.OK() {
		d.renderProjectForm(w, r, res.Status, f, nil, nil, &res)
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
	if !d.formGate(w, r, manages(r, p), "change project "+p.Name) {
		return
	}
	parts, err := d.loadParts(r.Context(), p.ID)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	d.renderProjectForm(w, r, http.StatusOK, projectFormOf(p, parts), &p, &parts, nil)
}

func (d *Dashboard) projectUpdate(w http.ResponseWriter, r *http.Request) {
	p, err := d.db.GetProjectByName(r.Context(), nameParam(r, "project"))
	if err != nil {
		d.fail(w, r, err)
		return
	}
	f := projectFormFrom(r)
	var stored *storage.FetchCredentials
	if f.Creds.needsStored() && p.FetchCredentialsSet && manages(r, p) {
		// Only to send back what the form leaves blank; never to a page.
		if stored, err = d.db.ProjectFetchCredentials(r.Context(), p.ID); err != nil {
			d.fail(w, r, err)
			return
		}
	}
	res := d.submit(r, http.MethodPut, fmt.Sprintf("/api/v1/projects/%d", p.ID), f.body(stored))
	if !res.OK() {
		d.renderProjectForm(w, r, res.Status, f, &p, nil, &res)
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
		d.renderJobsetForm(w, r, http.StatusOK, newJobsetForm(), p, nil, "", "")
	}
}

func (d *Dashboard) jobsetCreate(w http.ResponseWriter, r *http.Request) {
	p, err := d.db.GetProjectByName(r.Context(), nameParam(r, "project"))
	if err != nil {
		d.fail(w, r, err)
		return
	}
	f := jobsetFormFrom(r)
	body, msg, field := f.body()
	if msg != "" {
		d.renderJobsetForm(w, r, http.StatusUnprocessableEntity, f, p, nil, msg, field)
		return
	}
	res := d.submit(r, http.MethodPost, fmt.Sprintf("/api/v1/projects/%d/jobsets", p.ID), body)
	if !res.OK() {
		d.renderJobsetForm(w, r, res.Status, f, p, nil, res.Message(), apiField(res))
		return
	}
	var j struct{ Name string }
	if err := res.Decode(&j); err != nil {
		d.fail(w, r, fmt.Errorf("read the created jobset: %w", err))
		return
	}
	http.Redirect(w, r, jobsetURL(p.Name, j.Name), http.StatusSeeOther)
}
