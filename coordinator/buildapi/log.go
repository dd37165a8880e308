package buildapi

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"path"
	"time"

	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/coordinator/logs"
	"github.com/fc-ci/fc/coordinator/ranges"
	"github.com/fc-ci/fc/storage"
)

// buildLog serves a build's log as plain text: its own step's, or ?step= one of the
// steps it needed; ?tail=N gives the last N lines. It works while the step runs.
func (b *Builds) buildLog(w http.ResponseWriter, r *http.Request) {
	build, step, err := b.logStep(r)
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	if b.forward(w, r, step) {
		return
	}
	tail, err := httpkit.PositiveQuery(r, "tail")
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	open := b.cfg.Logs.Open
	if step.Status != "running" && step.Status != "queued" {
		open = b.cfg.Logs.OpenEnded
	}
	f, err := open(step.ID, step.LeaseEpoch)
	if errors.Is(err, fs.ErrNotExist) {
		if step.StartedAt != nil { // it ran and printed nothing (yet): an empty log
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusOK)
			return
		}
		if build.Status == "dependency_failed" && r.URL.Query().Get("step") == "" {
			err = b.dependencyFailed(r.Context(), build.ID)
		} else {
			err = httpkit.Errorf(http.StatusNotFound, "", "step %d has no log yet", step.ID)
		}
		httpkit.Fail(b.log, w, r, err)
		return
	}
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`inline; filename="%s.log"`, path.Base(step.DrvPath)))
	if tail > 0 {
		_, _ = w.Write(lastLines(f, int(tail)))
		return
	}
	// Range requests let a viewer fetch earlier parts of a long log on demand.
	w.Header().Set("Cache-Control", "no-store")
	ranges.ServeContent(w, r, time.Time{}, f)
}

// logStep is the step whose log a request asks for: the build's own step, or ?step=
// one of the steps the build needed.
func (b *Builds) logStep(r *http.Request) (storage.Build, storage.StepInfo, error) {
	id, err := idParam(r, "id")
	if err != nil {
		return storage.Build{}, storage.StepInfo{}, err
	}
	build, err := b.db.GetBuild(r.Context(), id)
	if err != nil {
		return storage.Build{}, storage.StepInfo{}, err
	}
	steps, err := b.db.BuildSteps(r.Context(), id)
	if err != nil {
		return build, storage.StepInfo{}, err
	}
	stepID, err := httpkit.PositiveQuery(r, "step")
	if err != nil {
		return build, storage.StepInfo{}, err
	}
	for i, s := range steps {
		if (stepID == 0 && i == 0) || s.ID == stepID {
			return build, s, nil
		}
	}
	return build, storage.StepInfo{}, httpkit.Errorf(http.StatusNotFound, "step", "this build has no such step (or was already built)")
}

// dependencyFailed is the 404 of a dependency_failed build's log: its own step never
// ran; the error names the failed build (or step) and where its log is.
func (b *Builds) dependencyFailed(ctx context.Context, buildID int64) error {
	reason, err := b.db.BuildReason(ctx, buildID)
	if err != nil {
		return err
	}
	c := reason.Culprit
	switch {
	case c != nil && c.BuildID != nil:
		return httpkit.Errorf(http.StatusNotFound, "", "build %d did not run: its dependency failed in build %d; see /api/v1/builds/%d/log",
			buildID, *c.BuildID, *c.BuildID)
	case c != nil:
		return httpkit.Errorf(http.StatusNotFound, "", "build %d did not run: its dependency %s failed (step %d); see /api/v1/builds/%d/log?step=%d",
			buildID, c.DrvPath, c.StepID, buildID, c.StepID)
	}
	return httpkit.Errorf(http.StatusNotFound, "", "build %d did not run: a dependency failed", buildID)
}

// lastLines returns the last n lines of r.
func lastLines(r io.Reader, n int) []byte {
	ring := make([][]byte, 0, n)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := append(bytes.Clone(sc.Bytes()), '\n')
		if len(ring) == n {
			ring = append(ring[1:], line)
		} else {
			ring = append(ring, line)
		}
	}
	return bytes.Join(ring, nil)
}

// LogByDrv opens the log of the step that built a derivation (by basename) out of
// store, for the cache's log/ route and `nix log`. It is a function of its own, not
// part of Builds, because the cache serves it and Builds reads product files out of
// the cache.
func LogByDrv(db *storage.DB, store logs.Store) func(ctx context.Context, drvBasename string) (io.ReadSeekCloser, error) {
	return func(ctx context.Context, drvBasename string) (io.ReadSeekCloser, error) {
		s, err := db.StepByDrv(ctx, "/nix/store/"+drvBasename)
		if err != nil {
			return nil, err
		}
		f, err := store.OpenEnded(s.ID, s.LeaseEpoch)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("log of %s: %w", drvBasename, storage.ErrNotFound)
		}
		return f, err
	}
}
