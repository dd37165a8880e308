package httpkit

import (
	"context"
	"strconv"

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
