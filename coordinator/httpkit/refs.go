package httpkit

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/fc-ci/fc/storage"
)

// Projects finds projects by id and by name (storage.DB does).
type Projects interface {
	GetProject(ctx context.Context, id int64) (storage.Project, error)
	GetProjectByName(ctx context.Context, name string) (storage.Project, error)
}

// ProjectByRef resolves a project as URLs name it: a number is an id, anything else a
// name, as Hydra users type them (a name never starts with a digit).
func ProjectByRef(ctx context.Context, db Projects, ref string) (storage.Project, error) {
	if id, err := strconv.ParseInt(ref, 10, 64); err == nil {
		return db.GetProject(ctx, id)
	}
	return db.GetProjectByName(ctx, ref)
}

// JobsetNames finds jobsets by "project/jobset" (storage.DB does).
type JobsetNames interface {
	JobsetIDByName(ctx context.Context, project, jobset string) (int64, error)
}

// JobsetRef resolves a jobset_id as bodies and queries give it: a positive number
// is an id (not checked), "project/jobset" a name; anything else, or a name no
// jobset has, is a 422 on field.
func JobsetRef(ctx context.Context, db JobsetNames, field, ref string) (int64, error) {
	ref = strings.TrimSpace(ref)
	if id, err := strconv.ParseInt(ref, 10, 64); err == nil {
		if id <= 0 {
			return 0, Unprocessable(field, "%s must be a positive integer or \"project/jobset\"", field)
		}
		return id, nil
	}
	project, jobset, ok := strings.Cut(ref, "/")
	if !ok || project == "" || jobset == "" {
		return 0, Unprocessable(field, "%s must be a jobset's id or \"project/jobset\", not %q", field, ref)
	}
	id, err := db.JobsetIDByName(ctx, project, jobset)
	if errors.Is(err, storage.ErrNotFound) {
		return 0, Unprocessable(field, "there is no jobset %q", ref)
	}
	return id, err
}

// JobsetQuery reads an optional ?name= jobset reference (see JobsetRef); absent is 0.
func JobsetQuery(r *http.Request, db JobsetNames, name string) (int64, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return 0, nil
	}
	return JobsetRef(r.Context(), db, name, s)
}

// JobsetField is a JSON body's jobset_id: a number or "project/jobset".
type JobsetField string

// UnmarshalJSON takes a number or a string.
func (f *JobsetField) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*f = JobsetField(s)
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return Unprocessable("jobset_id", "jobset_id must be a jobset's id or \"project/jobset\"")
	}
	*f = JobsetField(n.String())
	return nil
}
