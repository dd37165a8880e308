package projectapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

// A project's forge (forge.go) and its notifications (notifications.go) are optional
// parts of a project, alike in everything but their settings: a request leaves a part
// alone (absent), removes it (null) or sets it (an object, read strictly); it lives
// in a table of its own, one row per project; and a project is shown with it. The
// pieces here serve both.

// partInput is the settings object of a part in a request.
type partInput interface {
	// part is the part's field in a request and the shape its errors show.
	part() (name, shape string)
}

// optional is a part of a request: absent (present false: leave it), null (in nil:
// remove it), or settings.
type optional[T partInput] struct {
	present bool
	in      *T
}

// UnmarshalJSON reads the settings strictly (unknown fields refused), with errors
// that name <part>.<field>.
func (f *optional[T]) UnmarshalJSON(b []byte) error {
	f.present = true
	if string(bytes.TrimSpace(b)) == "null" {
		return nil
	}
	var in T
	name, shape := in.part()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &te) && te.Field != "":
			return httpkit.Unprocessable(name+"."+te.Field, "field %q has the wrong type", name+"."+te.Field)
		case errors.As(err, &te):
			return httpkit.Unprocessable(name, "%s must be an object (%s) or null", name, shape)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			field := name + "." + strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
			return httpkit.Unprocessable(field, "unknown field %q", field)
		case errors.Is(err, io.EOF):
			return httpkit.Unprocessable(name, "%s must be an object or null", name)
		}
		return httpkit.Errorf(http.StatusBadRequest, name, "malformed %s: %v", name, err)
	}
	f.in = &in
	return nil
}

// part is where a project's part V (written as F) is stored, and how a project shows it.
type part[V, F any] struct {
	one    func(ctx context.Context, projectID int64) (V, bool, error)
	many   func(ctx context.Context, projectIDs []int64) (map[int64]V, error)
	set    func(ctx context.Context, projectID int64, fields F) (V, error)
	remove func(ctx context.Context, projectID int64) error
	show   func(p *projectJSON, v V)
}

func (a *API) forges() part[storage.ProjectForge, storage.ProjectForgeFields] {
	return part[storage.ProjectForge, storage.ProjectForgeFields]{one: a.db.ProjectForge, many: a.db.ProjectForges,
		set: a.db.SetProjectForge, remove: a.db.DeleteProjectForge,
		show: func(p *projectJSON, f storage.ProjectForge) { p.Forge = toForgeJSON(f) }}
}

func (a *API) notifications() part[storage.ProjectNotifications, storage.ProjectNotificationsFields] {
	return part[storage.ProjectNotifications, storage.ProjectNotificationsFields]{one: a.db.ProjectNotifications,
		many: a.db.ProjectNotificationsOf, set: a.db.SetProjectNotifications, remove: a.db.DeleteProjectNotifications,
		show: func(p *projectJSON, n storage.ProjectNotifications) { p.Notifications = toNotificationsJSON(n) }}
}

// save applies a request's change of the part to project id: remove deletes it, set
// writes fields, neither leaves it as it is.
func (pt part[V, F]) save(ctx context.Context, id int64, fields F, set, remove bool) error {
	switch {
	case remove:
		return pt.remove(ctx, id)
	case set:
		_, err := pt.set(ctx, id, fields)
		return err
	}
	return nil
}

// current is project id's part, nil when it has none.
func (pt part[V, F]) current(ctx context.Context, id int64) (*V, error) {
	v, ok, err := pt.one(ctx, id)
	if err != nil || !ok {
		return nil, err
	}
	return &v, nil
}

// attach adds their part to projects shown (those that have one), in one query
// whatever their number.
func (pt part[V, F]) attach(ctx context.Context, out []projectJSON) error {
	ids := make([]int64, len(out))
	for i := range out {
		ids[i] = out[i].ID
	}
	vs, err := pt.many(ctx, ids)
	if err != nil {
		return err
	}
	for i := range out {
		if v, ok := vs[out[i].ID]; ok {
			pt.show(&out[i], v)
		}
	}
	return nil
}

// withParts adds their forges and notifications to projects shown to r's caller.
// Notifications (people's addresses, a webhook URL that is often a credential in
// itself) are shown only to those who manage the project, as on its page.
func (a *API) withParts(r *http.Request, out []projectJSON) error {
	if err := a.forges().attach(r.Context(), out); err != nil {
		return err
	}
	if err := a.notifications().attach(r.Context(), out); err != nil {
		return err
	}
	who, _ := auth.FromContext(r.Context())
	for i := range out {
		if !auth.ManagesProject(who, out[i].OwnerKeyID, out[i].OwnerUserID) {
			out[i].Notifications = nil
		}
	}
	return nil
}
