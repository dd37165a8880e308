package buildapi

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

// action serves an action on /…/{id}: act does it and says what it did; nothing to
// do is a 409 with the reason.
func (b *Builds) action(act func(ctx context.Context, id int64) (map[string]any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := idParam(r, "id")
		if err != nil {
			httpkit.Fail(b.log, w, r, err)
			return
		}
		body, err := act(r.Context(), id)
		if errors.Is(err, storage.ErrNothingToDo) {
			httpkit.Fail(b.log, w, r, httpkit.Errorf(http.StatusConflict, "", "%s", err.Error()))
			return
		}
		if err != nil {
			httpkit.Fail(b.log, w, r, err)
			return
		}
		b.sched.Wake()
		httpkit.WriteJSON(w, http.StatusOK, body)
	}
}

func (b *Builds) cancel(ctx context.Context, id int64) (map[string]any, error) {
	running, err := b.db.CancelBuild(ctx, id)
	if err == nil {
		b.sched.StopOnAgents(ctx, running)
	}
	return map[string]any{"id": id, "cancelled": true}, err
}

func (b *Builds) restart(ctx context.Context, id int64) (map[string]any, error) {
	n, err := b.db.RestartBuild(ctx, id)
	return map[string]any{"id": id, "restarted_steps": n}, err
}

func (b *Builds) bump(ctx context.Context, id int64) (map[string]any, error) {
	n, err := b.db.BumpBuild(ctx, id)
	return map[string]any{"id": id, "bumped_steps": n}, err
}

func (b *Builds) cancelEvaluation(ctx context.Context, id int64) (map[string]any, error) {
	n, running, err := b.db.CancelEvaluation(ctx, id)
	if err == nil {
		b.sched.StopOnAgents(ctx, running)
	}
	return map[string]any{"id": id, "cancelled_builds": n}, err
}

func (b *Builds) restartFailed(ctx context.Context, id int64) (map[string]any, error) {
	n, err := b.db.RestartFailed(ctx, id)
	return map[string]any{"id": id, "restarted_steps": n}, err
}

// setKeep marks a build's outputs kept by cache retention (1) or not (0).
func (b *Builds) setKeep(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(chi.URLParam(r, "id"), 10, 64)
	if err != nil {
		httpkit.Fail(b.log, w, r, storage.ErrNotFound)
		return
	}
	var keep bool
	switch chi.URLParam(r, "keep") {
	case "1":
		keep = true
	case "0":
	default:
		httpkit.Fail(b.log, w, r, httpkit.Unprocessable("keep", "keep must be 0 or 1"))
		return
	}
	if err := b.db.SetBuildKeep(r.Context(), id, keep); err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	httpkit.WriteJSON(w, http.StatusOK, map[string]any{"id": id, "keep": keep})
}
