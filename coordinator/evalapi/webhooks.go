package evalapi

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

func header(r *http.Request, names []string) (name, value string) {
	for _, n := range names {
		if v := r.Header.Get(n); v != "" {
			return n, v
		}
	}
	return "", ""
}

// webhook serves one kind of forge's webhooks for a project: verified (an HMAC of
// the body, or GitLab's token, with the project's webhook secret, compared in
// constant time), then a push triggers the jobsets following its branch and a pull
// request makes, updates or closes the jobsets of pull requests. A request FC cannot
// recognise (no event header, an event the forge does not have, a body that is not
// the event it names) is a 400 that says what is wrong; an event or action that
// changes nothing is a 200 that says it was ignored and why.
func (e *Evals) webhook(s sender) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		// {project} is the project's id or its name, as everywhere in the API.
		p, err := httpkit.ProjectByRef(r.Context(), e.db, chi.URLParam(r, "project"))
		if err != nil {
			httpkit.Fail(e.log, w, r, err)
			return
		}
		body, err := readPayload(r)
		if err != nil {
			httpkit.Fail(e.log, w, r, err)
			return
		}
		secret, err := e.db.ProjectWebhookSecret(r.Context(), p.ID)
		if err != nil {
			httpkit.Fail(e.log, w, r, err)
			return
		}
		if secret == "" || !s.verify(r, secret, body) {
			e.log.Warn("webhook refused: bad signature", "project", p.ID, "forge", s.name, "remote", r.RemoteAddr)
			what := "signature"
			if s.tokenHeader != "" {
				what = s.tokenHeader
			}
			httpkit.WriteError(w, r, http.StatusUnauthorized, "webhook "+what+" does not verify with this project's secret")
			return
		}
		_, event := header(r, s.eventHeaders)
		switch {
		case event == "":
			httpkit.Fail(e.log, w, r, httpkit.Errorf(http.StatusBadRequest, "", "missing event header: a %s webhook names its event in %s",
				s.name, strings.Join(s.eventHeaders, " or ")))
		case event == s.push:
			e.onPush(w, r, s, p, body)
		case event == s.pull:
			e.onPull(w, r, s, p, body)
		case s.known[event]:
			ignore(w, "event "+printable(event)+" is not one FC acts on (it acts on "+s.push+" and "+s.pull+")")
		default:
			httpkit.Fail(e.log, w, r, httpkit.Errorf(http.StatusBadRequest, "", "unknown %s event %s in %s",
				s.name, printable(event), s.eventHeaders[0]))
		}
	}
}

// readPayload reads a webhook's body, within server.max_body_size and
// server.request_timeout.
func readPayload(r *http.Request) ([]byte, error) {
	body, err := io.ReadAll(r.Body)
	if err == nil {
		return body, nil
	}
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return nil, httpkit.Errorf(http.StatusRequestEntityTooLarge, "", "payload too large")
	case httpkit.SlowBody(err):
		return nil, httpkit.Errorf(http.StatusRequestTimeout, "", "payload did not arrive within server.request_timeout")
	}
	return nil, httpkit.Errorf(http.StatusBadRequest, "", "cannot read the payload")
}

// ignore answers an event FC recognised and does nothing about.
func ignore(w http.ResponseWriter, why string) {
	httpkit.WriteJSON(w, http.StatusOK, map[string]any{"ignored": why, "triggered": []int64{}})
}

// failEvent answers a body that is not the event it claims with 400, anything else
// as httpkit does.
func (e *Evals) failEvent(w http.ResponseWriter, r *http.Request, err error) {
	var bad badEvent
	if errors.As(err, &bad) {
		err = httpkit.Errorf(http.StatusBadRequest, "", "%s", bad.why)
	}
	httpkit.Fail(e.log, w, r, err)
}

// onPush triggers the jobsets following the pushed branch; jobsets without a branch
// follow the default branch, which the repository is asked for when the payload does
// not say it.
func (e *Evals) onPush(w http.ResponseWriter, r *http.Request, s sender, p storage.Project, body []byte) {
	push, ignored, err := parsePush(s, body)
	if err != nil {
		e.failEvent(w, r, err)
		return
	}
	if ignored != "" {
		ignore(w, ignored)
		return
	}
	if p.DeclarativeFile != "" {
		// Its .fc.toml may have changed: read now, not at the next interval.
		e.pushed(p.ID)
	}
	def := push.DefaultBranch
	if def == "" && e.prs != nil {
		if def, err = e.prs.DefaultBranch(r.Context(), p); err != nil {
			// The branch's own jobsets still run; only those following the default
			// branch wait for their next poll.
			e.log.Warn("webhook: cannot ask the repository for its default branch", "project", p.ID, "err", err)
		}
	}
	ids, err := e.db.RequestEvaluationsForBranch(r.Context(), p.ID, push.Branch, push.Branch == def)
	if err != nil {
		httpkit.Fail(e.log, w, r, err)
		return
	}
	if ids == nil {
		ids = []int64{}
	}
	if len(ids) > 0 {
		e.sched.Wake()
	}
	httpkit.WriteJSON(w, http.StatusOK, map[string]any{"triggered": ids})
}

// onPull makes, updates or closes the jobsets of the pull request.
func (e *Evals) onPull(w http.ResponseWriter, r *http.Request, s sender, p storage.Project, body []byte) {
	ev, ignored, err := parsePull(s, body)
	if err != nil {
		e.failEvent(w, r, err)
		return
	}
	if ignored != "" {
		ignore(w, ignored)
		return
	}
	if e.prs == nil {
		ignore(w, "this coordinator does not evaluate pull requests")
		return
	}
	res, err := e.prs.Apply(r.Context(), p, s.forgeType, ev.PR, ev.DefaultBranch)
	if err != nil {
		httpkit.Fail(e.log, w, r, err)
		return
	}
	httpkit.WriteJSON(w, http.StatusOK, res)
}

// verify checks a request's signature (or GitLab's token) with the project's secret.
func (s sender) verify(r *http.Request, secret string, body []byte) bool {
	if s.tokenHeader != "" {
		return validToken(secret, r.Header.Get(s.tokenHeader))
	}
	_, sig := header(r, s.sigHeaders)
	return validSignature(secret, body, strings.TrimPrefix(sig, s.sigPrefix))
}

// validToken compares GitLab's X-Gitlab-Token with the secret in constant time,
// over their hashes so that not even the secret's length shows.
func validToken(secret, token string) bool {
	a, b := sha256.Sum256([]byte(secret)), sha256.Sum256([]byte(token))
	return token != "" && subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

func validSignature(secret string, body []byte, sigHex string) bool {
	got, err := hex.DecodeString(strings.TrimSpace(sigHex))
	if err != nil || len(got) != sha256.Size {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(body)
	return hmac.Equal(got, mac.Sum(nil))
}
