package forge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/fc-ci/fc/storage"
)

// Commit status states as FC decides them; each forge's own words are chosen when
// it is sent.
const (
	StatePending   = "pending"   // queued, or being evaluated
	StateRunning   = "running"   // evaluated, jobs building
	StateSuccess   = "success"   // every job succeeded
	StateFailure   = "failure"   // a job or the evaluation failed
	StateError     = "error"     // FC could not finish (aborted by infrastructure)
	StateCancelled = "cancelled" // someone cancelled it
)

// Status is a commit status to report: State on commit SHA under Context, with a
// short Description and a link to the page that explains it.
type Status struct {
	SHA         string `json:"sha"`
	State       string `json:"state"`
	Context     string `json:"context"`
	Description string `json:"description"`
	TargetURL   string `json:"target_url"`
}

// Bounds the forges set: GitHub refuses a description over 140 characters; GitLab
// a name over 255.
const (
	maxDescription = 140
	maxContext     = 255
	maxAnswerBytes = 64 << 10
)

// ErrPermanent marks an answer that sending again will not change (a missing
// repository, a token refused, a request the forge finds invalid).
var ErrPermanent = errors.New("the forge refused the request")

// RetryAfterError is an answer that asks to wait (429, or a rate limit): try again
// after After.
type RetryAfterError struct {
	Err   error
	After time.Duration
}

func (e *RetryAfterError) Error() string { return e.Err.Error() }
func (e *RetryAfterError) Unwrap() error { return e.Err }

// PostStatus reports s on f's repository, with the request f.Type documents:
//   - GitHub: POST {api}/repos/{owner}/{repo}/statuses/{sha}, Authorization: Bearer,
//     Accept: application/vnd.github+json, {state: pending|success|failure|error,
//     target_url, description, context};
//   - Gitea and Forgejo: POST {root}/api/v1/repos/{owner}/{repo}/statuses/{sha},
//     Authorization: token, {state: pending|success|failure|error|warning, target_url,
//     description, context};
//   - GitLab: POST {api}/projects/{url-encoded path or id}/statuses/{sha},
//     PRIVATE-TOKEN, {state: pending|running|success|failed|canceled, target_url,
//     description, name}.
//
// Errors never contain the token. An answer that will not change when sent again
// wraps ErrPermanent; one that asks to wait is a *RetryAfterError.
func PostStatus(ctx context.Context, hc *http.Client, f storage.ProjectForge, s Status) error {
	if !ValidSHA(s.SHA) {
		return fmt.Errorf("commit status: %q is not a commit id: %w", s.SHA, ErrPermanent)
	}
	desc := truncate(s.Description, maxDescription)
	name := truncate(s.Context, maxContext)
	var endpoint string
	var body any
	header := http.Header{"Content-Type": {"application/json"}, "User-Agent": {userAgent}}
	switch f.Type {
	case storage.ForgeGitHub:
		endpoint = f.APIURL + "/repos/" + f.Repository + "/statuses/" + s.SHA
		body = map[string]string{"state": githubState(s.State), "target_url": s.TargetURL, "description": desc, "context": name}
		header.Set("Accept", "application/vnd.github+json")
		header.Set("X-GitHub-Api-Version", "2022-11-28")
		header.Set("Authorization", "Bearer "+f.Token)
	case storage.ForgeGitea, storage.ForgeForgejo:
		endpoint = GiteaAPIRoot(f.APIURL) + "/repos/" + f.Repository + "/statuses/" + s.SHA
		body = map[string]string{"state": githubState(s.State), "target_url": s.TargetURL, "description": desc, "context": name}
		header.Set("Accept", "application/json")
		header.Set("Authorization", "token "+f.Token)
	case storage.ForgeGitLab:
		endpoint = f.APIURL + "/projects/" + url.PathEscape(f.Repository) + "/statuses/" + s.SHA
		body = map[string]string{"state": gitlabState(s.State), "target_url": s.TargetURL, "description": desc, "name": name}
		header.Set("Accept", "application/json")
		header.Set("PRIVATE-TOKEN", f.Token)
	default:
		return fmt.Errorf("commit status: unknown forge type %q: %w", f.Type, ErrPermanent)
	}
	if f.Token == "" {
		return fmt.Errorf("commit status on %s: the project's forge has no token: %w", f.Repository, ErrPermanent)
	}
	return post(ctx, hc, endpoint, header, body, f.Type == storage.ForgeGitLab)
}

// post sends body as JSON and judges the answer. gitlab: GitLab answers 400 "Cannot
// transition status" to a state the commit already has, which is what was wanted.
func post(ctx context.Context, hc *http.Client, endpoint string, header http.Header, body any, gitlab bool) error {
	b, err := json.Marshal(body)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("commit status: %w: %w", err, ErrPermanent)
	}
	req.Header = header
	where := "POST " + req.URL.Redacted()
	resp, err := hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its text repeats the URL; where says it once
		}
		return fmt.Errorf("%s: %w", where, err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, maxAnswerBytes))
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		return nil
	case gitlab && code == http.StatusBadRequest && strings.Contains(string(answer), "Cannot transition status"):
		return nil
	case code == http.StatusTooManyRequests || (code == http.StatusForbidden && resp.Header.Get("X-RateLimit-Remaining") == "0"):
		return &RetryAfterError{Err: fmt.Errorf("%s: %s: %s", where, resp.Status, snippet(answer)), After: retryAfter(resp.Header)}
	case code == http.StatusBadRequest || code == http.StatusUnauthorized || code == http.StatusNotFound ||
		code == http.StatusUnprocessableEntity || code == http.StatusGone:
		return fmt.Errorf("%s: %s: %s: %w", where, resp.Status, snippet(answer), ErrPermanent)
	default:
		return fmt.Errorf("%s: %s: %s", where, resp.Status, snippet(answer))
	}
}

// retryAfter reads Retry-After (seconds) or X-RateLimit-Reset (a Unix time); 0 when
// neither says.
func retryAfter(h http.Header) time.Duration {
	if s, err := strconv.Atoi(strings.TrimSpace(h.Get("Retry-After"))); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := strconv.ParseInt(strings.TrimSpace(h.Get("X-RateLimit-Reset")), 10, 64); err == nil {
		if d := time.Until(time.Unix(t, 0)); d > 0 {
			return d
		}
	}
	return 0
}

// githubState is a state in GitHub's, Gitea's and Forgejo's words.
func githubState(s string) string {
	switch s {
	case StateSuccess, StateFailure, StateError:
		return s
	case StateCancelled:
		return StateError
	}
	return StatePending
}

// gitlabState is a state in GitLab's words.
func gitlabState(s string) string {
	switch s {
	case StateRunning, StateSuccess:
		return s
	case StateFailure, StateError:
		return "failed"
	case StateCancelled:
		return "canceled"
	}
	return StatePending
}

// ValidSHA says whether s is a full commit id (SHA-1 or SHA-256, lower-case hex), the
// only thing a forge takes statuses on.
func ValidSHA(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// truncate cuts s to at most n characters, ending in … when cut.
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}
