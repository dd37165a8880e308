package projectapi

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

// Ownership (Hydra's model): a project belongs to the API key or the user that created
// it. Routes that manage a project (change or delete it, add, change or delete its
// jobsets) need the create-projects role and, unless the caller is an admin, to own
// the project.

// ownerOnly lets a request through only when its principal manages the project named
// by the URL parameter param (auth.ManagesProject): 404 when there is no such project,
// 403 when it belongs to someone else or to nobody. It runs after Require, so the
// caller is known.
func (a *API) ownerOnly(param string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p, err := a.project(r.Context(), r, param)
			if err != nil {
				a.fail(w, r, err)
				return
			}
			if err := mayManage(r.Context(), p); err != nil {
				a.fail(w, r, err)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// mayManage is nil when the request's principal manages p, else a 403 saying why.
func mayManage(ctx context.Context, p storage.Project) error {
	who, _ := auth.FromContext(ctx)
	if auth.ManagesProject(who, p.OwnerKeyID, p.OwnerUserID) {
		return nil
	}
	if p.OwnerKeyID == nil && p.OwnerUserID == nil {
		return httpkit.Errorf(http.StatusForbidden, "",
			"project %q has no owner (it predates project ownership or its owner was deleted): only an admin may change it", p.Name)
	}
	return httpkit.Errorf(http.StatusForbidden, "",
		"project %q belongs to someone else: only its owner or an admin may change it or its jobsets", p.Name)
}

// isAdmin reports whether the request's principal is an admin.
func isAdmin(ctx context.Context) bool {
	who, ok := auth.FromContext(ctx)
	return ok && auth.Allows(who.Role, auth.PermAdmin)
}

// callerUserID is the user who made the request (signed in with a password), nil if
// none did.
func callerUserID(ctx context.Context) *int64 {
	who, ok := auth.FromContext(ctx)
	if !ok || who.UserID == 0 {
		return nil
	}
	id := who.UserID
	return &id
}

// callerKeyID is the API key that made the request, nil if none did.
func callerKeyID(ctx context.Context) *int64 {
	who, ok := auth.FromContext(ctx)
	if !ok || who.KeyID == 0 {
		return nil
	}
	id := who.KeyID
	return &id
}

// isLocalRepository reports whether a repository URL (already valid) names a
// repository on the machine that fetches it: a file URL or an absolute path. The
// agents that evaluate would read it from their own file system, so only admins may
// name one.
func isLocalRepository(s string) bool {
	if strings.HasPrefix(s, "/") {
		return true
	}
	u, err := url.Parse(s)
	return err == nil && strings.EqualFold(u.Scheme, "file")
}

// projectWrite checks what only admins may do in a create (old is the zero Project) or
// an update of a project and sets f's owner: on create the creating key or user, and
// the key in owner_key_id when an admin gives the project to it (nil: as it is).
func projectWrite(ctx context.Context, old storage.Project, creating bool, in projectInput, f *storage.ProjectFields) error {
	if err := mayUseRepository(ctx, old.RepositoryURL, f.RepositoryURL); err != nil {
		return err
	}
	owner := old.OwnerKeyID
	if creating {
		owner = callerKeyID(ctx)
		f.OwnerKeyID = owner
		f.OwnerUserID = callerUserID(ctx)
	}
	if in.OwnerKeyID != nil && (owner == nil || *owner != *in.OwnerKeyID) {
		if !isAdmin(ctx) {
			return httpkit.Errorf(http.StatusForbidden, "owner_key_id", "only an admin may give a project to another key")
		}
		f.OwnerKeyID = in.OwnerKeyID
		f.OwnerUserID = nil // one owner: given to a key, the project is no user's
	}
	return nil
}

// unknownOwner turns the foreign-key violation of an owner_key_id that names no key
// into a 422.
func unknownOwner(err error, in projectInput) error {
	if in.OwnerKeyID != nil && errors.Is(err, storage.ErrNotFound) && strings.Contains(err.Error(), "owner_key_id") {
		return httpkit.Unprocessable("owner_key_id", "owner_key_id %d is not an API key", *in.OwnerKeyID)
	}
	return err
}

// mayUseRepository refuses (403) a local repository_url from anyone but an admin,
// unless the project already had exactly that URL (an admin set it).
func mayUseRepository(ctx context.Context, old, repositoryURL string) error {
	if isAdmin(ctx) || !isLocalRepository(repositoryURL) || repositoryURL == old {
		return nil
	}
	return httpkit.Errorf(http.StatusForbidden, "repository_url",
		"repository_url %q is a local repository (a path on the agents' machines): only an admin may set one", repositoryURL)
}

// mayUseInputs refuses (403) a git input naming a local repository from anyone but an
// admin, unless the jobset already had a git input with that very value (an admin set
// it). It looks at the request's inputs (nil: unchanged) before they are applied, and
// old must not be what apply rewrites.
func mayUseInputs(ctx context.Context, old []storage.JobsetInput, inputs *[]inputJSON) error {
	if isAdmin(ctx) || inputs == nil {
		return nil
	}
	for _, in := range *inputs {
		if in.Type != storage.InputTypeGit {
			continue
		}
		fields := strings.Fields(in.Value)
		if len(fields) == 0 || !isLocalRepository(fields[0]) || hasGitInput(old, in.Value) {
			continue
		}
		return httpkit.Errorf(http.StatusForbidden, "inputs",
			"git input %q names a local repository (%q, a path on the agents' machines): only an admin may set one", in.Name, fields[0])
	}
	return nil
}

func hasGitInput(inputs []storage.JobsetInput, value string) bool {
	for _, in := range inputs {
		if in.Type == storage.InputTypeGit && in.Value == value {
			return true
		}
	}
	return false
}
