package people

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

// userOnly lets through requests of a signed-in user: 401 for nobody, 403 for an API
// key (or a session signed in with one), which has no account to read or change.
func (s *Service) userOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, ok := auth.FromContext(r.Context())
		switch {
		case !ok:
			httpkit.WriteError(w, r, http.StatusUnauthorized, "sign in first: this is the signed-in user's own")
		case p.UserID == 0:
			httpkit.WriteError(w, r, http.StatusForbidden,
				"an API key has no account: this is for a user signed in with a username and password")
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// me is the signed-in user's id (userOnly made sure there is one).
func me(r *http.Request) int64 {
	p, _ := auth.FromContext(r.Context())
	return p.UserID
}

func (s *Service) getMe(w http.ResponseWriter, r *http.Request) {
	u, err := s.db.GetUser(r.Context(), me(r))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	httpkit.WriteJSON(w, http.StatusOK, toUserJSON(u))
}

// updateMe changes what people may change of their own account: email and full name.
func (s *Service) updateMe(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Email    *string `json:"email"`
		FullName *string `json:"full_name"`
	}
	if err := s.notDeclared(r.Context(), me(r)); err != nil {
		s.fail(w, r, err)
		return
	}
	if err := httpkit.Decode(r, &in); err != nil {
		s.fail(w, r, err)
		return
	}
	if in.Email != nil {
		if err := validEmail(*in.Email); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	if in.FullName != nil {
		if err := validFullName(*in.FullName); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	u, err := s.db.UpdateUser(r.Context(), me(r), storage.UserChanges{Email: in.Email, FullName: in.FullName})
	if err != nil {
		s.fail(w, r, err)
		return
	}
	httpkit.WriteJSON(w, http.StatusOK, toUserJSON(u))
}

// changePassword sets a new password after checking the current one, and ends the
// user's other sessions (this one goes on).
func (s *Service) changePassword(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Current string `json:"current"`
		New     string `json:"new"`
	}
	if err := httpkit.Decode(r, &in); err != nil {
		s.fail(w, r, err)
		return
	}
	id := me(r)
	if err := s.notDeclared(r.Context(), id); err != nil { // the password is the config's password_file
		s.fail(w, r, err)
		return
	}
	hash, err := s.db.UserPasswordHash(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	ok, err := s.checkPassword(r.Context(), hash, in.Current)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if !ok {
		s.fail(w, r, httpkit.Errorf(http.StatusForbidden, "current", "the current password is wrong"))
		return
	}
	if err := validPassword("new", in.New); err != nil {
		s.fail(w, r, err)
		return
	}
	newHash, err := s.hashPassword(r.Context(), in.New)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if _, err := s.db.UpdateUser(r.Context(), id, storage.UserChanges{PasswordHash: &newHash}); err != nil {
		s.fail(w, r, err)
		return
	}
	if _, err := s.db.DeleteUserSessions(r.Context(), id, currentSession(r.Context())); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// starredJSON is a starred job with where it lives and its newest build.
type starredJSON struct {
	JobsetID       int64      `json:"jobset_id"`
	Project        string     `json:"project"`
	Jobset         string     `json:"jobset"`
	Job            string     `json:"job"`
	CreatedAt      time.Time  `json:"created_at"`
	LastBuildID    *int64     `json:"last_build_id"`
	LastStatus     string     `json:"last_status"`
	LastFinishedAt *time.Time `json:"last_finished_at"`
}

func (s *Service) listStarred(w http.ResponseWriter, r *http.Request) {
	page, err := httpkit.PageOf(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	stars, total, err := s.db.ListStarredJobs(r.Context(), me(r), page)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]starredJSON, len(stars))
	for i, st := range stars {
		out[i] = starredJSON{JobsetID: st.JobsetID, Project: st.Project, Jobset: st.Jobset, Job: st.Job,
			CreatedAt: st.CreatedAt.UTC(), LastBuildID: st.LastBuildID, LastStatus: st.LastStatus, LastFinishedAt: st.LastFinishedAt}
	}
	httpkit.WriteJSON(w, http.StatusOK, httpkit.NewList(out, total, page))
}

// starInput names a job: jobset_id is a jobset's id or "project/jobset".
type starInput struct {
	JobsetID json.RawMessage `json:"jobset_id"`
	Job      string          `json:"job"`
}

// starRef reads the job a star request names, from its JSON body or, for a DELETE
// without one, from ?jobset_id=&job=; it returns the jobset's id.
func (s *Service) starRef(r *http.Request) (int64, string, error) {
	var in starInput
	if q := r.URL.Query(); r.Method == http.MethodDelete && q.Has("job") {
		in.Job = q.Get("job")
		ref := q.Get("jobset_id")
		if _, err := strconv.ParseInt(ref, 10, 64); err != nil {
			ref = strconv.Quote(ref)
		}
		in.JobsetID = json.RawMessage(ref)
	} else if err := httpkit.Decode(r, &in); err != nil {
		return 0, "", err
	}
	if in.Job == "" || len(in.Job) > 1000 || strings.IndexFunc(in.Job, func(c rune) bool { return unicode.IsSpace(c) || unicode.IsControl(c) }) >= 0 {
		return 0, "", httpkit.Unprocessable("job", "job must be a job's name (an attribute path, without spaces)")
	}
	id, err := s.jobsetRef(r, in.JobsetID)
	return id, in.Job, err
}

// jobsetRef resolves a jobset_id: a number, or "project/jobset". An unknown jobset
// is a 422 naming the field.
func (s *Service) jobsetRef(r *http.Request, raw json.RawMessage) (int64, error) {
	unknown := func(what string) error { return httpkit.Unprocessable("jobset_id", "there is no jobset %s", what) }
	var id int64
	if err := json.Unmarshal(raw, &id); err == nil && id > 0 {
		ok, err := s.db.JobsetExists(r.Context(), id)
		if err == nil && !ok {
			err = unknown(strconv.FormatInt(id, 10))
		}
		return id, err
	}
	var ref string
	if err := json.Unmarshal(raw, &ref); err != nil || len(bytes.TrimSpace(raw)) == 0 {
		return 0, httpkit.Unprocessable("jobset_id", `jobset_id must be a jobset's id or "project/jobset"`)
	}
	project, jobset, ok := strings.Cut(ref, "/")
	if !ok || project == "" || jobset == "" {
		return 0, httpkit.Unprocessable("jobset_id", `jobset_id must be a jobset's id or "project/jobset", not %q`, ref)
	}
	id, err := s.db.JobsetIDByName(r.Context(), project, jobset)
	if errors.Is(err, storage.ErrNotFound) {
		return 0, unknown(strconv.Quote(ref))
	}
	return id, err
}

func (s *Service) star(w http.ResponseWriter, r *http.Request) {
	jobsetID, job, err := s.starRef(r)
	if err == nil {
		err = s.db.StarJob(r.Context(), me(r), jobsetID, job)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	httpkit.WriteJSON(w, http.StatusCreated, map[string]any{"jobset_id": jobsetID, "job": job})
}

func (s *Service) unstar(w http.ResponseWriter, r *http.Request) {
	jobsetID, job, err := s.starRef(r)
	if err == nil {
		err = s.db.UnstarJob(r.Context(), me(r), jobsetID, job)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
