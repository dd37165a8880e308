package projectapi

import (
	"context"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

type inputJSON struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Value string `json:"value"`
}

type jobsetJSON struct {
	ID               int64       `json:"id"`
	ProjectID        int64       `json:"project_id"`
	Project          string      `json:"project"`
	Name             string      `json:"name"`
	Description      string      `json:"description"`
	Branch           string      `json:"branch"`
	FlakeMode        bool        `json:"flake_mode"`
	NixExpression    string      `json:"nix_expression"`
	Inputs           []inputJSON `json:"inputs"`
	CheckInterval    int         `json:"check_interval"`
	SchedulingShares int         `json:"scheduling_shares"`
	State            string      `json:"state"`
	KeepNr           int         `json:"keep_nr"`
	LastCheckedAt    *time.Time  `json:"last_checked_at"`
	LastCheckError   string      `json:"last_check_error"`
	CreatedAt        time.Time   `json:"created_at"`
	UpdatedAt        time.Time   `json:"updated_at"`
	// PullRequests: each open pull request based on the branch gets a jobset of its
	// own (<name>-pr-<number>); PullRequestDrafts includes drafts.
	PullRequests      bool `json:"pull_requests"`
	PullRequestDrafts bool `json:"pull_request_drafts"`
	// Hidden: left out of the default list (a closed pull request's jobset).
	Hidden bool `json:"hidden"`
	// PullRequest is the pull request this jobset evaluates, null for others.
	PullRequest *pullRequestJSON `json:"pull_request"`
	// Declared: the jobset is declared in the coordinator's config file or in its
	// repository's declarative file (DeclaredIn: the file's path, or
	// "repository:<project>/<file>"), and the API refuses to change it (409).
	Declared   bool   `json:"declared"`
	DeclaredIn string `json:"declared_in,omitempty"`
}

type pullRequestJSON struct {
	ParentJobsetID int64  `json:"parent_jobset_id"`
	Number         int64  `json:"number"`
	Title          string `json:"title"`
	HeadSHA        string `json:"head_sha"`
	HeadBranch     string `json:"head_branch"`
	HeadRepository string `json:"head_repository"`
}

func toJobsetJSON(j storage.Jobset) jobsetJSON {
	inputs := make([]inputJSON, len(j.Inputs))
	for i, in := range j.Inputs {
		inputs[i] = inputJSON(in)
	}
	var checked *time.Time
	if j.LastCheckedAt != nil {
		t := j.LastCheckedAt.UTC()
		checked = &t
	}
	return jobsetJSON{ID: j.ID, ProjectID: j.ProjectID, Project: j.ProjectName, Name: j.Name,
		Description: j.Description, Branch: j.Branch, FlakeMode: j.FlakeMode, NixExpression: j.NixExpression,
		Inputs: inputs, CheckInterval: j.CheckInterval, SchedulingShares: j.SchedulingShares, State: j.State,
		KeepNr: j.KeepNr, LastCheckedAt: checked, LastCheckError: j.LastCheckError,
		CreatedAt: j.CreatedAt.UTC(), UpdatedAt: j.UpdatedAt.UTC(), PullRequests: j.PullRequests,
		PullRequestDrafts: j.PullRequestDrafts, Hidden: j.Hidden, PullRequest: toPullRequestJSON(j.PullRequest),
		Declared: j.Declared != "", DeclaredIn: j.Declared}
}

func toPullRequestJSON(pr *storage.JobsetPullRequest) *pullRequestJSON {
	if pr == nil {
		return nil
	}
	return &pullRequestJSON{ParentJobsetID: pr.ParentJobsetID, Number: pr.Number, Title: pr.Title, HeadSHA: pr.HeadSHA,
		HeadBranch: pr.HeadBranch, HeadRepository: pr.HeadRepository}
}

type jobsetInput struct {
	Name             *string      `json:"name"`
	Description      *string      `json:"description"`
	Branch           *string      `json:"branch"`
	FlakeMode        *bool        `json:"flake_mode"`
	NixExpression    *string      `json:"nix_expression"`
	Inputs           *[]inputJSON `json:"inputs"`
	CheckInterval    *int         `json:"check_interval"`
	SchedulingShares *int         `json:"scheduling_shares"`
	State            *string      `json:"state"`
	KeepNr           *int         `json:"keep_nr"`
	// PullRequests and PullRequestDrafts: see jobsetJSON.
	PullRequests      *bool `json:"pull_requests"`
	PullRequestDrafts *bool `json:"pull_request_drafts"`
}

var (
	inputNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_'-]*$`)
	// A flake attribute path or a file in the repository; no shell or Nix syntax.
	expressionRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+/-]*$`)
)

func validBranch(b string) error {
	if b == "" {
		return nil
	}
	if len(b) > 255 || strings.ContainsAny(b, " \t\n~^:?*[\\") || strings.Contains(b, "..") ||
		strings.HasPrefix(b, "-") || strings.HasPrefix(b, "/") || strings.HasSuffix(b, "/") || strings.HasSuffix(b, ".lock") {
		return httpkit.Unprocessable("branch", "branch %q is not a valid git branch name", b)
	}
	return nil
}

func (in jobsetInput) apply(f *storage.JobsetFields) error {
	set := func(dst *string, src *string) {
		if src != nil {
			*dst = *src
		}
	}
	set(&f.Name, in.Name)
	set(&f.Description, in.Description)
	set(&f.Branch, in.Branch)
	set(&f.State, in.State)
	if in.FlakeMode != nil {
		// Switching modes without naming an expression picks that mode's default.
		if *in.FlakeMode != f.FlakeMode && in.NixExpression == nil && f.NixExpression == defaultExpression(f.FlakeMode) {
			f.NixExpression = defaultExpression(*in.FlakeMode)
		}
		f.FlakeMode = *in.FlakeMode
	}
	set(&f.NixExpression, in.NixExpression)
	for _, p := range []struct {
		dst *bool
		src *bool
	}{{&f.PullRequests, in.PullRequests}, {&f.PullRequestDrafts, in.PullRequestDrafts}} {
		if p.src != nil {
			*p.dst = *p.src
		}
	}
	for _, p := range []struct {
		dst *int
		src *int
	}{{&f.CheckInterval, in.CheckInterval}, {&f.SchedulingShares, in.SchedulingShares}, {&f.KeepNr, in.KeepNr}} {
		if p.src != nil {
			*p.dst = *p.src
		}
	}
	if in.Inputs != nil {
		// A new slice, not f.Inputs[:0]: that would overwrite the jobset's current
		// inputs, which the handlers compare the new ones with.
		f.Inputs = make([]storage.JobsetInput, 0, len(*in.Inputs))
		for _, i := range *in.Inputs {
			f.Inputs = append(f.Inputs, storage.JobsetInput(i))
		}
	}

	if err := ValidName("name", f.Name); err != nil {
		return err
	}
	if err := validBranch(f.Branch); err != nil {
		return err
	}
	if f.NixExpression == "" || len(f.NixExpression) > 255 || !expressionRE.MatchString(f.NixExpression) || strings.Contains(f.NixExpression, "..") {
		return httpkit.Unprocessable("nix_expression", "nix_expression %q must be a flake attribute (hydraJobs) or a file in the repository (release.nix)", f.NixExpression)
	}
	if f.CheckInterval < 0 || f.CheckInterval > maxCheckInterval {
		return httpkit.Unprocessable("check_interval", "check_interval must be from 0 to %d seconds (0 = evaluate only when triggered)", maxCheckInterval)
	}
	if f.SchedulingShares <= 0 || f.SchedulingShares > maxShares {
		return httpkit.Unprocessable("scheduling_shares", "scheduling_shares must be from 1 to %d", maxShares)
	}
	if f.KeepNr < 0 || f.KeepNr > maxKeepNr {
		return httpkit.Unprocessable("keep_nr", "keep_nr must be from 0 to %d", maxKeepNr)
	}
	switch f.State {
	case storage.JobsetEnabled, storage.JobsetDisabled, storage.JobsetOneShot, storage.JobsetOneAtATime:
	default:
		return httpkit.Unprocessable("state", "state %q must be enabled, disabled, one_shot or one_at_a_time", f.State)
	}
	return validInputs(f.Inputs)
}

// validInputs checks a jobset's inputs: names, no repeats, values of their type.
func validInputs(inputs []storage.JobsetInput) error {
	seen := map[string]bool{}
	for _, i := range inputs {
		if !inputNameRE.MatchString(i.Name) {
			return httpkit.Unprocessable("inputs", "input name %q is not a Nix identifier", i.Name)
		}
		if seen[i.Name] {
			return httpkit.Unprocessable("inputs", "input %q appears twice", i.Name)
		}
		seen[i.Name] = true
		switch i.Type {
		case storage.InputTypeString:
		case storage.InputTypeBoolean:
			if i.Value != "true" && i.Value != "false" {
				return httpkit.Unprocessable("inputs", "boolean input %q must be \"true\" or \"false\"", i.Name)
			}
		case storage.InputTypeGit:
			// "URL" or "URL REVISION", one space between: the agent splits the value
			// into exactly these fields and hands the revision to git.
			fields := strings.Fields(i.Value)
			if len(fields) == 0 || validRepositoryURL(fields[0]) != nil {
				return httpkit.Unprocessable("inputs", "git input %q: value must be a repository URL, optionally followed by a branch", i.Name)
			}
			if len(fields) > 2 || strings.Join(fields, " ") != i.Value {
				return httpkit.Unprocessable("inputs", "git input %q: value must be \"URL\" or \"URL REVISION\" with one space between, "+
					"and nothing else (no tabs, newlines or further fields)", i.Name)
			}
			if len(fields) == 2 && !validRevision(fields[1]) {
				return httpkit.Unprocessable("inputs", "git input %q: revision %q must be a commit, branch or tag name "+
					"(not starting with '-'; no control characters, spaces, '..', or any of ~^:?*[\\)", i.Name, fields[1])
			}
		case storage.InputTypePath:
			// Whether it may name this directory is checkPathInputs' part.
			if !strings.HasPrefix(i.Value, "/") {
				return httpkit.Unprocessable("inputs", "path input %q must be an absolute path", i.Name)
			}
		default:
			return httpkit.Unprocessable("inputs", "input %q has type %q; use string, boolean, git or path", i.Name, i.Type)
		}
	}
	return nil
}

// checkPathInputs vets the path inputs a request sets (in.Inputs; none when it
// leaves the inputs alone): only admins may set them (keeping one the jobset already
// has is not setting it), and each must lie under evaluator.allowed_input_paths.
// Their values are stored cleaned.
func (a *API) checkPathInputs(r *http.Request, in jobsetInput, old []storage.JobsetInput, f *storage.JobsetFields) error {
	if in.Inputs == nil {
		return nil
	}
	p, _ := auth.FromContext(r.Context())
	admin := auth.Allows(p.Role, auth.PermAdmin)
	for i := range f.Inputs {
		fi := &f.Inputs[i]
		if fi.Type != storage.InputTypePath {
			continue
		}
		if !admin && !slices.Contains(old, *fi) {
			return httpkit.Errorf(http.StatusForbidden, "inputs", "path input %q: only admins may set path inputs", fi.Name)
		}
		if len(a.allowedInputPaths) == 0 {
			return httpkit.Unprocessable("inputs", "path input %q: path inputs are disabled on this coordinator; "+
				"an administrator lists the directories they may name in %s", fi.Name, config.AllowedInputPathsKey)
		}
		cleaned, ok := config.PathInputAllowed(fi.Value, a.allowedInputPaths)
		if !ok {
			return httpkit.Unprocessable("inputs", "path input %q: %q is not under a directory of %s (%s)",
				fi.Name, cleaned, config.AllowedInputPathsKey, strings.Join(a.allowedInputPaths, ", "))
		}
		fi.Value = cleaned
	}
	return nil
}

// validRevision accepts what a git input may name after its URL: a commit id, or a
// branch or tag name as git check-ref-format allows it. Nothing that git could read
// as an option ('-' first) or as a revision expression.
func validRevision(r string) bool {
	if r == "" || len(r) > 255 || strings.HasPrefix(r, "-") || strings.HasPrefix(r, "/") || strings.HasSuffix(r, "/") ||
		strings.HasSuffix(r, ".") || strings.HasSuffix(r, ".lock") || r == "@" ||
		strings.Contains(r, "..") || strings.Contains(r, "//") || strings.Contains(r, "@{") || strings.Contains(r, "/.") ||
		strings.HasPrefix(r, ".") || strings.ContainsAny(r, " ~^:?*[\\") {
		return false
	}
	for _, c := range r {
		if c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// Bounds that keep values meaningful (and inside PostgreSQL's integer).
const (
	maxCheckInterval = 366 * 24 * 3600
	maxShares        = 1_000_000
	maxKeepNr        = 100_000
)

func defaultExpression(flake bool) string {
	if flake {
		return "hydraJobs"
	}
	return "release.nix"
}

func (a *API) listJobsets(w http.ResponseWriter, r *http.Request) {
	p, err := a.project(r.Context(), r, "pid")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	page, err := httpkit.PageOf(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	list := a.db.ListJobsets
	switch all := r.URL.Query().Get("all"); all {
	case "true", "1":
		list = a.db.ListAllJobsets // with the hidden ones (closed pull requests')
	case "", "false", "0":
	default:
		a.fail(w, r, httpkit.Unprocessable("all", "all must be true or false"))
		return
	}
	js, total, err := list(r.Context(), p.ID, page)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := make([]jobsetJSON, len(js))
	for i, j := range js {
		out[i] = toJobsetJSON(j)
	}
	httpkit.WriteJSON(w, http.StatusOK, httpkit.NewList(out, total, page))
}

func (a *API) createJobset(w http.ResponseWriter, r *http.Request) {
	p, err := a.project(r.Context(), r, "pid")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if p.Declared != "" { // its jobsets are what the config declares
		a.fail(w, r, httpkit.Declared("project "+strconv.Quote(p.Name)+" (and its list of jobsets)", p.Declared))
		return
	}
	var in jobsetInput
	if err := httpkit.Decode(r, &in); err != nil {
		a.fail(w, r, err)
		return
	}
	f := storage.JobsetFields{FlakeMode: true, NixExpression: defaultExpression(true), CheckInterval: 60,
		SchedulingShares: 100, State: storage.JobsetEnabled, KeepNr: 3}
	if err := mayUseInputs(r.Context(), nil, in.Inputs); err != nil { // ownership.go
		a.fail(w, r, err)
		return
	}
	if err := in.apply(&f); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.checkPathInputs(r, in, nil, &f); err != nil {
		a.fail(w, r, err)
		return
	}
	j, err := a.db.CreateJobset(r.Context(), p.ID, f)
	if err != nil {
		a.fail(w, r, nameConflict(err, "a jobset of this project", f.Name))
		return
	}
	w.Header().Set("Location", "/api/v1/projects/"+strconv.FormatInt(p.ID, 10)+"/jobsets/"+strconv.FormatInt(j.ID, 10))
	httpkit.WriteJSON(w, http.StatusCreated, toJobsetJSON(j))
}

func (a *API) jobset(ctx context.Context, r *http.Request) (storage.Jobset, error) {
	p, err := a.project(ctx, r, "pid")
	if err != nil {
		return storage.Jobset{}, err
	}
	ref := chi.URLParam(r, "id")
	if id, err := strconv.ParseInt(ref, 10, 64); err == nil {
		return a.db.GetJobset(ctx, p.ID, id)
	}
	return a.db.GetJobsetByName(ctx, p.ID, ref)
}

func (a *API) getJobset(w http.ResponseWriter, r *http.Request) {
	j, err := a.jobset(r.Context(), r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpkit.WriteJSON(w, http.StatusOK, toJobsetJSON(j))
}

func (a *API) updateJobset(w http.ResponseWriter, r *http.Request) {
	j, err := a.jobset(r.Context(), r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if j.Declared != "" {
		a.fail(w, r, httpkit.Declared("jobset "+strconv.Quote(j.ProjectName+"/"+j.Name), j.Declared))
		return
	}
	var in jobsetInput
	if err := httpkit.Decode(r, &in); err != nil {
		a.fail(w, r, err)
		return
	}
	f := storage.JobsetFields{Name: j.Name, Description: j.Description, Branch: j.Branch, FlakeMode: j.FlakeMode,
		NixExpression: j.NixExpression, Inputs: j.Inputs, CheckInterval: j.CheckInterval,
		SchedulingShares: j.SchedulingShares, State: j.State, KeepNr: j.KeepNr,
		PullRequests: j.PullRequests, PullRequestDrafts: j.PullRequestDrafts}
	if err := mayUseInputs(r.Context(), j.Inputs, in.Inputs); err != nil { // ownership.go
		a.fail(w, r, err)
		return
	}
	if err := in.apply(&f); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.checkPathInputs(r, in, j.Inputs, &f); err != nil {
		a.fail(w, r, err)
		return
	}
	if j.PullRequest != nil && f.PullRequests {
		a.fail(w, r, httpkit.Unprocessable("pull_requests", "jobset %q evaluates a pull request; it cannot follow pull requests itself", j.Name))
		return
	}
	j, err = a.db.UpdateJobset(r.Context(), j.ProjectID, j.ID, f)
	if err != nil {
		a.fail(w, r, nameConflict(err, "a jobset of this project", f.Name))
		return
	}
	if err := a.db.UpdatePullRequestJobsets(r.Context(), j); err != nil { // its children follow it
		a.fail(w, r, err)
		return
	}
	httpkit.WriteJSON(w, http.StatusOK, toJobsetJSON(j))
}

func (a *API) deleteJobset(w http.ResponseWriter, r *http.Request) {
	j, err := a.jobset(r.Context(), r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if j.Declared != "" {
		a.fail(w, r, httpkit.Declared("jobset "+strconv.Quote(j.ProjectName+"/"+j.Name), j.Declared))
		return
	}
	if err := a.db.DeleteJobset(r.Context(), j.ProjectID, j.ID); err != nil {
		a.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
