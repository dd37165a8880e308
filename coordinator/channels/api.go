package channels

import (
	"context"
	"errors"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

// Routes registers the channel routes on r (mounted at /api/v1, authenticated).
// Reading is public; creating, deleting and promoting are for who manages the
// channel's project (its owner with create-projects, or an admin).
func (c *Channels) Routes(r chi.Router) {
	r.Get("/channels", c.list)
	r.With(httpkit.Require(auth.PermCreateProjects)).Post("/channels", c.create)
	r.Get("/channels/{name}", c.get)
	r.With(httpkit.Require(auth.PermCreateProjects)).Delete("/channels/{name}", c.remove)
	r.With(httpkit.Require(auth.PermCreateProjects)).Post("/channels/{name}/promote", c.promote)
	r.Get("/channels/{name}/latest", c.latest)
}

type channelJSON struct {
	Name         string    `json:"name"`
	ProjectID    int64     `json:"project_id"`
	Project      string    `json:"project"`
	JobsetID     int64     `json:"jobset_id"`
	Jobset       string    `json:"jobset"`
	Aggregate    string    `json:"aggregate"`
	EvaluationID *int64    `json:"evaluation_id"`
	Commit       string    `json:"commit"`
	URL          string    `json:"url"`
	CreatedAt    time.Time `json:"created_at"`
	UpdatedAt    time.Time `json:"updated_at"`
}

func toJSON(ch storage.NixChannel) channelJSON {
	return channelJSON{Name: ch.Name, ProjectID: ch.ProjectID, Project: ch.ProjectName, JobsetID: ch.JobsetID,
		Jobset: ch.JobsetName, Aggregate: ch.Aggregate, EvaluationID: ch.EvaluationID, Commit: ch.Commit,
		URL: "/channel/" + ch.Name, CreatedAt: ch.CreatedAt, UpdatedAt: ch.UpdatedAt}
}

func (c *Channels) fail(w http.ResponseWriter, r *http.Request, err error) {
	httpkit.Fail(c.log, w, r, err)
}

func (c *Channels) list(w http.ResponseWriter, r *http.Request) {
	page, err := httpkit.PageOf(r)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	cs, total, err := c.db.ListChannels(r.Context(), 0, page)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	items := make([]channelJSON, len(cs))
	for i, ch := range cs {
		items[i] = toJSON(ch)
	}
	httpkit.WriteJSON(w, http.StatusOK, httpkit.NewList(items, total, page))
}

func (c *Channels) get(w http.ResponseWriter, r *http.Request) {
	ch, err := c.db.GetChannel(r.Context(), chi.URLParam(r, "name"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	httpkit.WriteJSON(w, http.StatusOK, toJSON(ch))
}

// validName: a channel's name is a URL path segment and nix-channel's default name.
var validName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9._-]{0,99}$`)

type createInput struct {
	Name      string `json:"name"`
	Project   any    `json:"project"`
	Jobset    any    `json:"jobset"`
	Aggregate string `json:"aggregate"`
}

func (c *Channels) create(w http.ResponseWriter, r *http.Request) {
	var in createInput
	if err := httpkit.Decode(r, &in); err != nil {
		c.fail(w, r, err)
		return
	}
	if !validName.MatchString(in.Name) {
		c.fail(w, r, httpkit.Unprocessable("name", "name must be letters, digits, '.', '_' or '-', starting with a letter or '_'"))
		return
	}
	p, j, err := c.jobsetOf(r.Context(), refString(in.Project), refString(in.Jobset))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	if err := mayManage(r.Context(), p); err != nil {
		c.fail(w, r, err)
		return
	}
	ch, err := c.db.CreateChannel(r.Context(), in.Name, p.ID, j.ID, strings.TrimSpace(in.Aggregate))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	w.Header().Set("Location", "/api/v1/channels/"+ch.Name)
	httpkit.WriteJSON(w, http.StatusCreated, toJSON(ch))
}

// refString is a JSON id (number) or name (string) as a string.
func refString(v any) string {
	switch v := v.(type) {
	case string:
		return strings.TrimSpace(v)
	case float64:
		return strconv.FormatInt(int64(v), 10)
	}
	return ""
}

// jobsetOf resolves the jobset a channel follows: an id or a name within project,
// or "project/jobset" (then project may be empty).
func (c *Channels) jobsetOf(ctx context.Context, project, jobset string) (storage.Project, storage.Jobset, error) {
	if pj, js, ok := strings.Cut(jobset, "/"); ok {
		if project != "" && project != pj {
			return storage.Project{}, storage.Jobset{}, httpkit.Unprocessable("jobset", "jobset %q is not of project %q", jobset, project)
		}
		project, jobset = pj, js
	}
	if project == "" || jobset == "" {
		return storage.Project{}, storage.Jobset{}, httpkit.Unprocessable("jobset", `give project and jobset (an id or a name), or jobset as "project/jobset"`)
	}
	p, err := httpkit.ProjectByRef(ctx, c.db, project)
	if errors.Is(err, storage.ErrNotFound) {
		return p, storage.Jobset{}, httpkit.Unprocessable("project", "no project %q", project)
	}
	if err != nil {
		return p, storage.Jobset{}, err
	}
	var j storage.Jobset
	if id, perr := strconv.ParseInt(jobset, 10, 64); perr == nil {
		j, err = c.db.GetJobset(ctx, p.ID, id)
	} else {
		j, err = c.db.GetJobsetByName(ctx, p.ID, jobset)
	}
	if errors.Is(err, storage.ErrNotFound) {
		return p, j, httpkit.Unprocessable("jobset", "project %q has no jobset %q", p.Name, jobset)
	}
	return p, j, err
}

// mayManage is nil when the request's principal manages p, else a 403.
func mayManage(ctx context.Context, p storage.Project) error {
	who, _ := auth.FromContext(ctx)
	if auth.ManagesProject(who, p.OwnerKeyID, p.OwnerUserID) {
		return nil
	}
	return httpkit.Errorf(http.StatusForbidden, "",
		"project %q belongs to someone else: only its owner or an admin may manage its channels", p.Name)
}

// managed loads the channel named in the URL and checks the caller manages its project.
func (c *Channels) managed(r *http.Request) (storage.NixChannel, error) {
	ch, err := c.db.GetChannel(r.Context(), chi.URLParam(r, "name"))
	if err != nil {
		return ch, err
	}
	p, err := c.db.GetProject(r.Context(), ch.ProjectID)
	if err != nil {
		return ch, err
	}
	return ch, mayManage(r.Context(), p)
}

func (c *Channels) remove(w http.ResponseWriter, r *http.Request) {
	ch, err := c.managed(r)
	if err == nil {
		err = c.db.DeleteChannel(r.Context(), ch.Name)
	}
	if err != nil {
		c.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (c *Channels) promote(w http.ResponseWriter, r *http.Request) {
	ch, err := c.managed(r)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	var in struct {
		EvaluationID int64 `json:"evaluation_id"`
	}
	if err := httpkit.Decode(r, &in); err != nil {
		c.fail(w, r, err)
		return
	}
	if err := c.db.PromoteChannel(r.Context(), ch.Name, in.EvaluationID); errors.Is(err, storage.ErrNotFound) {
		c.fail(w, r, httpkit.Unprocessable("evaluation_id",
			"evaluation %d is not a finished evaluation of jobset %s/%s", in.EvaluationID, ch.ProjectName, ch.JobsetName))
		return
	} else if err != nil {
		c.fail(w, r, err)
		return
	}
	if ch, err = c.db.GetChannel(r.Context(), ch.Name); err != nil {
		c.fail(w, r, err)
		return
	}
	httpkit.WriteJSON(w, http.StatusOK, toJSON(ch))
}

type latestJSON struct {
	Channel          string   `json:"channel"`
	EvaluationID     int64    `json:"evaluation_id"`
	Commit           string   `json:"commit"`
	StorePaths       []string `json:"store_paths"`
	BinaryCacheURL   string   `json:"binary_cache_url"`
	NixexprsURL      string   `json:"nixexprs_url"`
	ChannelUpdatedAt string   `json:"updated_at"`
}

// latest is the evaluation the channel serves and its outputs; 404 before the first.
func (c *Channels) latest(w http.ResponseWriter, r *http.Request) {
	ch, err := c.db.GetChannel(r.Context(), chi.URLParam(r, "name"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	if ch.EvaluationID == nil {
		c.fail(w, r, httpkit.Errorf(http.StatusNotFound, "", "channel %q has no evaluation yet", ch.Name))
		return
	}
	paths, err := c.db.EvaluationOutputPaths(r.Context(), *ch.EvaluationID)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	if paths == nil {
		paths = []string{}
	}
	httpkit.WriteJSON(w, http.StatusOK, latestJSON{Channel: ch.Name, EvaluationID: *ch.EvaluationID, Commit: ch.Commit,
		StorePaths: paths, BinaryCacheURL: c.cfg.CacheURL, NixexprsURL: "/channel/" + ch.Name + "/nixexprs.tar.xz",
		ChannelUpdatedAt: ch.UpdatedAt.UTC().Format(time.RFC3339)})
}
