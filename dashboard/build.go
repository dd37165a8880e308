package dashboard

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/storage"
)

// stepsPerPage is the length of a page of a build's steps.
const stepsPerPage = 50

// buildRoutes serves /build/{id}, a build with why it ended as it did and its live
// log, and the forms of its actions (cancel, restart, bump, keep).
func (d *Dashboard) buildRoutes(r chi.Router) {
	r.Get("/build/{id}", d.build)
	r.Group(func(r chi.Router) {
		r.Use(d.forms)
		r.Post("/build/{id}/cancel", d.buildAction("cancel"))
		r.Post("/build/{id}/restart", d.buildAction("restart"))
		r.Post("/build/{id}/bump", d.buildAction("bump"))
		r.Post("/build/{id}/keep", d.buildAction("keep"))
	})
}

func (d *Dashboard) build(w http.ResponseWriter, r *http.Request) {
	d.buildPage(w, r, http.StatusOK, "")
}

// buildAction submits an action's form as the API request it stands for, then
// shows the build again (or the page with the API's refusal).
func (d *Dashboard) buildAction(action string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
		if err != nil {
			d.fail(w, r, storage.ErrNotFound)
			return
		}
		method, path := http.MethodPost, fmt.Sprintf("/api/v1/builds/%d/%s", id, action)
		if action == "keep" {
			keep := r.PostFormValue("keep")
			if keep != "0" && keep != "1" {
				d.buildPage(w, r, http.StatusUnprocessableEntity, "keep must be 0 or 1")
				return
			}
			method, path = http.MethodPut, fmt.Sprintf("/api/v1/builds/%d/keep/%s", id, keep)
		}
		res := d.submit(r, method, path, nil)
		if !res.OK() {
			d.buildPage(w, r, res.Status, res.Message())
			return
		}
		http.Redirect(w, r, fmt.Sprintf("/build/%d", id), http.StatusSeeOther)
	}
}

// buildPage renders the build page with status, and errMsg (a refused action) when
// not empty.
func (d *Dashboard) buildPage(w http.ResponseWriter, r *http.Request, status int, errMsg string) {
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil {
		d.fail(w, r, storage.ErrNotFound)
		return
	}
	ctx := r.Context()
	b, err := d.db.GetBuild(ctx, id)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	why, err := d.db.BuildReason(ctx, id)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	page := pageOf(r, stepsPerPage)
	steps, total, err := d.db.BuildStepsPage(ctx, id, page)
	if err != nil {
		d.fail(w, r, err)
		return
	}
	data := view{
		"Title":    fmt.Sprintf("Build %d: %s", b.ID, b.Job),
		"Crumbs":   buildCrumbs(b),
		"Build":    b,
		"Finished": b.FinishedAt != nil,
		"Built":    (b.Status == "succeeded" || b.Status == "failed_with_output") && len(b.Outputs) > 0,
		"Own":      why.Own,
		"Culprit":  why.Culprit,
		"Reason":   d.reason(b, why),
		"Steps":    steps,
		"Pager":    pagerOf(r, page, total),
		"Actions":  buildActions(r, b),
		"Error":    errMsg,
	}
	if data["Built"] == true {
		data["Fetch"] = d.fetchCommand(r, b.Outputs)
	}
	if err := d.chooseLog(r, b, why, data); err != nil {
		d.fail(w, r, err)
		return
	}
	d.render(w, r, status, "build", data)
}

func buildCrumbs(b storage.Build) []Crumb {
	return []Crumb{
		{Name: "Projects", URL: "/projects"},
		{Name: b.Project, URL: "/project/" + url.PathEscape(b.Project)},
		{Name: b.Jobset, URL: "/jobset/" + url.PathEscape(b.Project) + "/" + url.PathEscape(b.Jobset)},
		{Name: fmt.Sprintf("Evaluation %d", b.EvaluationID), URL: fmt.Sprintf("/eval/%d", b.EvaluationID)},
		{Name: fmt.Sprintf("Build %d", b.ID)},
	}
}

// logChoice is the log the page shows: a step, and whether it is the build's own.
type logChoice struct {
	ID      int64
	DrvPath string
	Own     bool
	// Culprit: the failed dependency's (or the earlier failure's) log, shown because
	// the build itself never ran.
	Culprit bool
}

// chooseLog picks the log the page shows (data "Step", "RawLog"): ?step= one of the
// steps the build needed, else the culprit's when the build failed because of
// another step, else its own step's. A finished step that never started has no log:
// the page shows none rather than an empty box.
func (d *Dashboard) chooseLog(r *http.Request, b storage.Build, why storage.BuildReason, data view) error {
	var c *logChoice
	started := false
	if s := r.URL.Query().Get("step"); s != "" {
		sid, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return storage.ErrNotFound
		}
		st, err := d.db.StepOfBuild(r.Context(), b.ID, sid)
		if err != nil {
			return err
		}
		own := why.Own != nil && why.Own.ID == st.ID
		c, started = &logChoice{ID: st.ID, DrvPath: st.DrvPath, Own: own}, st.StartedAt != nil || st.LogSize > 0
	} else if cu := why.Culprit; cu != nil && cu.StepID != 0 && (why.Own == nil || cu.StepID != why.Own.ID) {
		c, started = &logChoice{ID: cu.StepID, DrvPath: cu.DrvPath, Culprit: true}, cu.StartedAt != nil || cu.LogSize > 0
	} else if o := why.Own; o != nil {
		c, started = &logChoice{ID: o.ID, DrvPath: o.DrvPath, Own: true}, o.StartedAt != nil || o.LogSize > 0
	}
	if c == nil {
		return nil
	}
	data["LogStep"] = c
	// An unfinished build's own step may start any moment: the live log waits for it.
	if !started && (b.FinishedAt != nil || !c.Own) {
		data["NoLog"] = true
		return nil
	}
	raw := fmt.Sprintf("/api/v1/builds/%d/log", b.ID)
	if !c.Own {
		raw += fmt.Sprintf("?step=%d", c.ID)
	}
	data["Step"], data["RawLog"] = c, raw
	return nil
}

// actionForm is one action button the signed-in person may use on this build.
type actionForm struct {
	Name, Label, Value, Class string
}

// buildActions are the actions that apply to the build and that the signed-in
// person's role allows (the API decides anyway).
func buildActions(r *http.Request, b storage.Build) []actionForm {
	var out []actionForm
	unfinished := b.Status == "queued" || b.Status == "running"
	if unfinished && can(r, auth.PermCancelBuild) {
		out = append(out, actionForm{Name: "cancel", Label: "Cancel", Class: "danger"})
	}
	if unfinished && can(r, auth.PermBumpToFront) {
		out = append(out, actionForm{Name: "bump", Label: "Bump to the front of the queue"})
	}
	if !unfinished && b.Status != "succeeded" && can(r, auth.PermRestartJobs) {
		out = append(out, actionForm{Name: "restart", Label: "Restart"})
	}
	if can(r, auth.PermAdmin) {
		if b.Keep {
			out = append(out, actionForm{Name: "keep", Label: "Stop keeping the outputs", Value: "0"})
		} else {
			out = append(out, actionForm{Name: "keep", Label: "Keep the outputs", Value: "1"})
		}
	}
	return out
}

// cacheURL is where people fetch from FC's binary cache.
func (d *Dashboard) cacheURL(r *http.Request) string {
	base := strings.TrimSuffix(d.cfg.PublicURL, "/")
	if base == "" {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		base = scheme + "://" + r.Host
	}
	return base + "/nix-cache"
}

// fetchCommand is the command that fetches a build's outputs from FC's cache,
// trusting its key (Nix requires signatures); "" without a key.
func (d *Dashboard) fetchCommand(r *http.Request, outputs map[string]string) string {
	if d.cfg.CachePublicKey == "" || len(outputs) == 0 {
		return ""
	}
	names := make([]string, 0, len(outputs))
	for n := range outputs {
		names = append(names, n)
	}
	sort.Strings(names)
	args := []string{"nix-store", "-r"}
	for _, n := range names {
		args = append(args, shellQuote(outputs[n]))
	}
	args = append(args, "--option", "substituters", shellQuote(d.cacheURL(r)),
		"--option", "trusted-public-keys", shellQuote(d.cfg.CachePublicKey))
	return strings.Join(args, " ")
}

var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./-]+$`)

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if shellSafe.MatchString(s) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// reasonView is a build's state in words: Text, then (for a failure caused by
// another step) a link to it, then the step's own words (Detail).
type reasonView struct {
	Text   string
	Detail string
	// Culprit is set when the failure came from another step: the page links it.
	Culprit *storage.Culprit
}

// reason says why a build is in its state; nil when its status says it all.
func (d *Dashboard) reason(b storage.Build, why storage.BuildReason) *reasonView {
	own := why.Own
	if own == nil {
		own = &storage.OwnStep{}
	}
	detail := strings.TrimSpace(own.Error)
	switch b.Status {
	case "failed":
		if b.IsAggregate {
			return &reasonView{Text: "A constituent of this aggregate did not succeed."}
		}
		return &reasonView{Text: "The build failed" + exitCode(own.ExitCode) + ".", Detail: detail}
	case "failed_with_output":
		return &reasonView{Text: "The build failed" + exitCode(own.ExitCode) + " but produced its outputs.", Detail: detail}
	case "dependency_failed":
		if why.Culprit == nil {
			return &reasonView{Text: "A dependency failed (it has been restarted since, or is gone)."}
		}
		return &reasonView{Text: "A dependency failed, so this build never ran:", Culprit: why.Culprit, Detail: why.Culprit.Error}
	case "cached_failure":
		rv := &reasonView{Text: "Cached failure: this derivation failed before; restart it to build it again.", Culprit: why.Culprit}
		if why.Culprit != nil {
			rv.Detail = why.Culprit.Error
		}
		return rv
	case "aborted":
		if own.Status != "aborted" {
			return &reasonView{Text: "Aborted."}
		}
		return &reasonView{Text: fmt.Sprintf("Aborted after %d attempts: %s", own.Attempts, lastError(own.Error))}
	case "timed_out":
		return &reasonView{Text: d.timeoutText(own), Detail: detail}
	case "log_limit_exceeded":
		text := "The log exceeded its size limit, so the build was stopped."
		if d.cfg.MaxLogSize > 0 {
			text = fmt.Sprintf("The log exceeded the limit of %s, so the build was stopped.", humanBytes(d.cfg.MaxLogSize))
		}
		return &reasonView{Text: text, Detail: detail}
	case "output_limit_exceeded":
		return &reasonView{Text: "The outputs exceeded their size limit.", Detail: detail}
	case "cancelled":
		return &reasonView{Text: "Cancelled: by someone, or because a build it waited for was cancelled."}
	case "unsupported_system":
		return &reasonView{Text: fmt.Sprintf("No agent can build %s derivations (with the features this one requires).", b.System), Detail: detail}
	case "not_deterministic":
		return &reasonView{Text: "The build is not deterministic: building it again gave other outputs.", Detail: detail}
	}
	return nil
}

func exitCode(c *int) string {
	if c == nil || *c == 0 {
		return ""
	}
	return fmt.Sprintf(" (exit code %d)", *c)
}

var attemptsSuffix = regexp.MustCompile(` \(after \d+ attempts\)$`)

// lastError is an aborted step's error without what the sentence around it says.
func lastError(e string) string {
	e = attemptsSuffix.ReplaceAllString(strings.TrimSpace(e), "")
	e = strings.TrimPrefix(e, "aborted: ")
	if e == "" {
		return "no error was recorded"
	}
	return e
}

// timeoutText names the limit a timed-out build ran into: the silence limit when
// Nix says so, else the timeout; its job's own (meta.timeout, meta.maxSilent) or the
// coordinator's.
func (d *Dashboard) timeoutText(own *storage.OwnStep) string {
	limit := func(job *int, def time.Duration) time.Duration {
		if job != nil && *job > 0 {
			return time.Duration(*job) * time.Second
		}
		return def
	}
	if strings.Contains(own.Error, "silence") {
		if l := limit(own.MaxSilentSecs, d.cfg.MaxSilent); l > 0 {
			return fmt.Sprintf("Timed out: the build printed nothing for %s (its max-silent time).", l)
		}
		return "Timed out: the build printed nothing for longer than its max-silent time."
	}
	if l := limit(own.TimeoutSecs, d.cfg.BuildTimeout); l > 0 {
		return fmt.Sprintf("Timed out: the build ran longer than its timeout of %s.", l)
	}
	return "Timed out: the build ran longer than its timeout."
}
