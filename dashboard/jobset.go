package dashboard

import (
	"fmt"
	"html"
	"html/template"
	"net/http"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/storage"
)

// jobsetRoutes serves /jobset/{project}/{jobset}: its evaluations, the jobs ×
// evaluations grid, the latest evaluation's errors, the trigger and the edit form.
func (d *Dashboard) jobsetRoutes(r chi.Router) {
	r.Get("/jobset/{project}/{jobset}", d.jobset)
	r.Get("/jobset/{project}/{jobset}/edit", d.jobsetEdit)
	r.With(d.forms).Post("/jobset/{project}/{jobset}/edit", d.jobsetUpdate)
	r.With(d.forms).Post("/jobset/{project}/{jobset}/trigger", d.jobsetTrigger)
}

const (
	evalsPerPage  = 20
	gridEvals     = 10
	gridJobs      = 50
	evalErrorsMax = 50
	prsPerPage    = 25
)

// lookupJobset finds the {project} and {jobset} of the URL.
func (d *Dashboard) lookupJobset(r *http.Request) (storage.Project, storage.Jobset, error) {
	p, err := d.db.GetProjectByName(r.Context(), nameParam(r, "project"))
	if err != nil {
		return p, storage.Jobset{}, err
	}
	j, err := d.db.GetJobsetByName(r.Context(), p.ID, nameParam(r, "jobset"))
	return p, j, err
}

func (d *Dashboard) jobset(w http.ResponseWriter, r *http.Request) {
	v := view{}
	switch r.URL.Query().Get("triggered") {
	case "":
	case "unchanged":
		v["Flash"] = "Nothing changed since the last evaluation (same commit and inputs): no new evaluation."
	case "created":
		v["Flash"] = "An evaluation was created: it appears below and runs once an evaluator takes it."
	default:
		v["Flash"] = "An evaluation was requested: it appears below once the previous one and its builds allow it."
	}
	d.jobsetPage(w, r, http.StatusOK, v)
}

// jobsetPage renders the jobset page with status and what v adds (a flash, an error).
func (d *Dashboard) jobsetPage(w http.ResponseWriter, r *http.Request, status int, v view) {
	ctx := r.Context()
	p, j, err := d.lookupJobset(r)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	ep, gp, pp, all := pageOf(r, evalsPerPage), listPage(r, "jobs", gridJobs), listPage(r, "prs", prsPerPage), showAll(r)
	var (
		evals  []storage.EvalBrief
		nEvals int64
		grid   storage.JobGrid
		prs    storage.JobsetList
		parent string
		chans  []storage.NixChannel
	)
	err = parallel(func() (err error) {
		evals, nEvals, err = d.db.DashEvaluations(ctx, j.ID, ep)
		return err
	}, func() (err error) {
		grid, err = d.db.DashJobGrid(ctx, j.ID, gridEvals, gp)
		return err
	}, func() (err error) {
		if j.PullRequest != nil {
			parent, err = d.db.JobsetName(ctx, j.PullRequest.ParentJobsetID)
			return err
		}
		prs, err = d.db.DashPullRequestJobsets(ctx, j.ID, all, pp)
		return err
	}, func() (err error) {
		chans, _, err = d.db.ListChannels(ctx, j.ID, storage.Page{Limit: jobsetChannelsMax})
		return err
	})
	if err != nil {
		d.fail(w, r, err)
		return
	}
	if len(grid.Evals) > 0 {
		latest := grid.Evals[0]
		errs, n, err := d.db.DashEvalErrors(ctx, latest.ID, evalErrorsMax)
		if err != nil {
			d.fail(w, r, err)
			return
		}
		v["Latest"], v["LatestErrors"], v["NrLatestErrors"] = latest, errs, n
	}
	v["Title"] = p.Name + ":" + j.Name
	v["Crumbs"] = []Crumb{{Name: "Home", URL: "/"}, {Name: "Projects", URL: "/projects"},
		{Name: p.Name, URL: projectURL(p.Name)}, {Name: j.Name}}
	v["Project"], v["Jobset"] = p, j
	v["Evals"], v["Pager"] = evals, pagerOf(r, ep, nEvals)
	v["Grid"], v["GridRows"], v["GridPager"] = grid, gridRows(grid), listPager(r, "jobs", gp, grid.NrJobs)
	v["Manages"], v["CanTrigger"] = manages(r, p), can(r, auth.PermEvalJobset)
	v["Parent"], v["PullRequests"], v["All"] = parent, prs.Rows, all
	v["Channels"] = chans
	nAll := prs.Total
	if !all {
		nAll += prs.Hidden
	}
	v["NrPullRequests"], v["NrHidden"], v["PRPager"] = nAll, prs.Hidden, listPager(r, "prs", pp, prs.Total)
	d.render(w, r, status, "jobset", v)
}

// jobsetChannelsMax is how many of the channels following a jobset its page lists.
const jobsetChannelsMax = 50

// gridRow is a row of the jobs grid with its cells already HTML: through the
// template engine a page's 500 cells cost milliseconds, written here microseconds.
type gridRow struct {
	Job   string
	Cells template.HTML
}

func gridRows(g storage.JobGrid) []gridRow {
	rows := make([]gridRow, len(g.Rows))
	var b strings.Builder
	for i, row := range g.Rows {
		b.Reset()
		for _, c := range row.Cells {
			if c.BuildID == 0 {
				b.WriteString(`<td><span class="cell none" title="not in this evaluation">·</span></td>`)
				continue
			}
			// statusClass and cellSymbol are fixed words; the status is escaped.
			fmt.Fprintf(&b, `<td><a class="cell %s" href="/build/%d" title="build %d: %s">%s</a></td>`,
				statusClass(c.Status), c.BuildID, c.BuildID, html.EscapeString(c.Status), cellSymbol(c.Status))
		}
		rows[i] = gridRow{Job: row.Job, Cells: template.HTML(b.String())}
	}
	return rows
}

// cellSymbol is how a grid cell shows a status, beside its colour.
func cellSymbol(status string) string {
	switch status {
	case "succeeded":
		return "✔"
	case "queued":
		return "…"
	case "running":
		return "▶"
	case "cancelled":
		return "–"
	}
	return "✘"
}

// jobsetTrigger asks the evaluations API for an evaluation of the jobset.
func (d *Dashboard) jobsetTrigger(w http.ResponseWriter, r *http.Request) {
	p, j, err := d.lookupJobset(r)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	res := d.submit(r, http.MethodPost, "/api/v1/evaluations/trigger", map[string]any{"jobset_id": j.ID})
	if !res.OK() {
		d.jobsetPage(w, r, res.Status, view{"Error": "Cannot trigger an evaluation: " + res.Message()})
		return
	}
	// The API says what the trigger did: an evaluation made, nothing changed, or
	// waiting (for the previous evaluation, its builds, or a readable repository).
	var out struct {
		EvaluationID *int64 `json:"evaluation_id"`
		Reason       string `json:"reason"`
	}
	what := "requested"
	if res.Decode(&out) == nil {
		switch {
		case out.Reason == "unchanged":
			what = "unchanged"
		case out.EvaluationID != nil && out.Reason == "":
			what = "created"
		}
	}
	http.Redirect(w, r, jobsetURL(p.Name, j.Name)+"?triggered="+what, http.StatusSeeOther)
}

func (d *Dashboard) jobsetEdit(w http.ResponseWriter, r *http.Request) {
	p, j, err := d.lookupJobset(r)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	if d.formGate(w, r, manages(r, p), "change the jobsets of project "+p.Name) {
		d.renderJobsetForm(w, r, http.StatusOK, jobsetFormOf(j), p, &j, "", "")
	}
}

func (d *Dashboard) jobsetUpdate(w http.ResponseWriter, r *http.Request) {
	p, j, err := d.lookupJobset(r)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	f := jobsetFormFrom(r)
	body, msg, field := f.body()
	if msg != "" {
		d.renderJobsetForm(w, r, http.StatusUnprocessableEntity, f, p, &j, msg, field)
		return
	}
	res := d.submit(r, http.MethodPut, fmt.Sprintf("/api/v1/projects/%d/jobsets/%d", p.ID, j.ID), body)
	if !res.OK() {
		d.renderJobsetForm(w, r, res.Status, f, p, &j, res.Message(), apiField(res))
		return
	}
	var out struct{ Name string }
	if err := res.Decode(&out); err != nil {
		d.fail(w, r, fmt.Errorf("read the changed jobset: %w", err))
		return
	}
	http.Redirect(w, r, jobsetURL(p.Name, out.Name), http.StatusSeeOther)
}

// inputRow is one jobset input of the form.
type inputRow struct{ Name, Type, Value string }

// jobsetForm is the jobset form's fields as typed (numbers too, so a typo is shown
// back as it was).
type jobsetForm struct {
	Name, Description, Branch, NixExpression string
	CheckInterval, SchedulingShares, KeepNr  string
	State                                    string
	FlakeMode                                bool
	Inputs                                   []inputRow
	// PullRequests and PullRequestDrafts: see the API's jobset. hasPullRequests: the
	// post carried them (a pull request's own jobset's form does not).
	PullRequests, PullRequestDrafts bool
	hasPullRequests                 bool
}

// blankInputs is how many empty input rows the form offers (more after a save).
const blankInputs = 2

// jobsetStates are the states a jobset may be in, for the form's choice.
func jobsetStates() []string {
	return []string{storage.JobsetEnabled, storage.JobsetDisabled, storage.JobsetOneShot, storage.JobsetOneAtATime}
}

// inputTypes are the types a jobset input may have.
func inputTypes() []string {
	return []string{storage.InputTypeGit, storage.InputTypeString, storage.InputTypeBoolean, storage.InputTypePath}
}

// newJobsetForm has the API's defaults.
func newJobsetForm() jobsetForm {
	return jobsetForm{NixExpression: "hydraJobs", CheckInterval: "60", SchedulingShares: "100", KeepNr: "3",
		State: storage.JobsetEnabled, FlakeMode: true, hasPullRequests: true}
}

func jobsetFormOf(j storage.Jobset) jobsetForm {
	f := jobsetForm{Name: j.Name, Description: j.Description, Branch: j.Branch, NixExpression: j.NixExpression,
		CheckInterval: strconv.Itoa(j.CheckInterval), SchedulingShares: strconv.Itoa(j.SchedulingShares),
		KeepNr: strconv.Itoa(j.KeepNr), State: j.State, FlakeMode: j.FlakeMode,
		PullRequests: j.PullRequests, PullRequestDrafts: j.PullRequestDrafts, hasPullRequests: j.PullRequest == nil}
	for _, in := range j.Inputs {
		f.Inputs = append(f.Inputs, inputRow(in))
	}
	return f
}

func jobsetFormFrom(r *http.Request) jobsetForm {
	v := r.PostFormValue
	f := jobsetForm{Name: v("name"), Description: v("description"), Branch: v("branch"), NixExpression: v("nix_expression"),
		CheckInterval: v("check_interval"), SchedulingShares: v("scheduling_shares"), KeepNr: v("keep_nr"),
		State: v("state"), FlakeMode: v("flake_mode") != "", PullRequests: v("pull_requests") != "",
		PullRequestDrafts: v("pull_request_drafts") != ""}
	_, f.hasPullRequests = r.PostForm["pull_request_fields"]
	names, types, values := r.PostForm["input_name"], r.PostForm["input_type"], r.PostForm["input_value"]
	for i, name := range names {
		row := inputRow{Name: strings.TrimSpace(name)}
		if i < len(types) {
			row.Type = types[i]
		}
		if i < len(values) {
			row.Value = values[i]
		}
		if row.Name != "" || row.Value != "" {
			f.Inputs = append(f.Inputs, row)
		}
	}
	return f
}

// body is the API request the form stands for, or a message and its field when a
// number is not one. Every input is listed, so one removed from the form is removed
// from the jobset.
func (f jobsetForm) body() (b map[string]any, msg, field string) {
	b = map[string]any{"name": f.Name, "description": f.Description, "branch": f.Branch,
		"flake_mode": f.FlakeMode, "nix_expression": f.NixExpression, "state": f.State}
	for _, n := range []struct{ field, value string }{{"check_interval", f.CheckInterval},
		{"scheduling_shares", f.SchedulingShares}, {"keep_nr", f.KeepNr}} {
		i, err := strconv.Atoi(strings.TrimSpace(n.value))
		if err != nil {
			return nil, fmt.Sprintf("%s: %q is not a whole number", n.field, n.value), n.field
		}
		b[n.field] = i
	}
	if f.hasPullRequests {
		b["pull_requests"], b["pull_request_drafts"] = f.PullRequests, f.PullRequestDrafts
	}
	inputs := make([]map[string]string, 0, len(f.Inputs))
	for _, in := range f.Inputs {
		inputs = append(inputs, map[string]string{"name": in.Name, "type": in.Type, "value": in.Value})
	}
	b["inputs"] = inputs
	return b, "", ""
}

func (d *Dashboard) renderJobsetForm(w http.ResponseWriter, r *http.Request, status int, f jobsetForm, p storage.Project,
	old *storage.Jobset, msg, field string) {
	rows := append([]inputRow(nil), f.Inputs...)
	for range blankInputs {
		rows = append(rows, inputRow{Type: storage.InputTypeGit})
	}
	v := view{"Form": f, "InputRows": rows, "States": jobsetStates(), "InputTypes": inputTypes(), "Action": r.URL.Path, "Project": p}
	v["ErrorField"] = field
	if old != nil && old.PullRequest != nil {
		v["PullRequest"] = old.PullRequest // its settings are its parent's: no pull requests of its own
	}
	if msg != "" {
		v["Error"] = msg
	}
	crumbs := []Crumb{{Name: "Home", URL: "/"}, {Name: "Projects", URL: "/projects"}, {Name: p.Name, URL: projectURL(p.Name)}}
	if old == nil {
		v["Title"] = "New jobset of " + p.Name
		crumbs = append(crumbs, Crumb{Name: "New jobset"})
	} else {
		v["Title"], v["Editing"] = "Edit jobset "+p.Name+":"+old.Name, true
		crumbs = append(crumbs, Crumb{Name: old.Name, URL: jobsetURL(p.Name, old.Name)}, Crumb{Name: "Edit"})
	}
	v["Crumbs"] = crumbs
	d.render(w, r, status, "jobset_form", v)
}
