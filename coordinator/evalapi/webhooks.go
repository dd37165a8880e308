package evalapi

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/httpkit"
)

// forge describes how one kind of forge signs and names its events.
type forge struct {
	name        string
	sigHeaders  []string // first one present wins
	sigPrefix   string
	eventHeader []string
}

var (
	github = forge{name: "github", sigHeaders: []string{"X-Hub-Signature-256"}, sigPrefix: "sha256=",
		eventHeader: []string{"X-GitHub-Event"}}
	// Gitea and Forgejo sign the same way.
	gitea = forge{name: "gitea", sigHeaders: []string{"X-Gitea-Signature", "X-Forgejo-Signature"},
		eventHeader: []string{"X-Gitea-Event", "X-Forgejo-Event", "X-GitHub-Event"}}
)

func header(r *http.Request, names []string) string {
	for _, n := range names {
		if v := r.Header.Get(n); v != "" {
			return v
		}
	}
	return ""
}

// webhook verifies an HMAC-SHA256 signature over the raw body with the project's
// secret (constant-time compare) and triggers the jobsets following the pushed branch.
func (e *Evals) webhook(f forge) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		// {project} is the project's id or its name, as everywhere in the API.
		p, err := httpkit.ProjectByRef(r.Context(), e.db, chi.URLParam(r, "project"))
		if err != nil {
			httpkit.Fail(e.log, w, r, err)
			return
		}
		pid := p.ID
		body, err := io.ReadAll(r.Body)
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				httpkit.Fail(e.log, w, r, httpkit.Errorf(http.StatusRequestEntityTooLarge, "", "payload too large"))
				return
			}
			if httpkit.SlowBody(err) {
				httpkit.Fail(e.log, w, r, httpkit.Errorf(http.StatusRequestTimeout, "", "payload did not arrive within server.request_timeout"))
				return
			}
			httpkit.Fail(e.log, w, r, httpkit.Errorf(http.StatusBadRequest, "", "cannot read the payload"))
			return
		}
		secret, err := e.db.ProjectWebhookSecret(r.Context(), pid)
		if err != nil {
			httpkit.Fail(e.log, w, r, err)
			return
		}
		sig := strings.TrimPrefix(header(r, f.sigHeaders), f.sigPrefix)
		if secret == "" || !validSignature(secret, body, sig) {
			e.log.Warn("webhook refused: bad signature", "project", pid, "forge", f.name, "remote", r.RemoteAddr)
			httpkit.WriteError(w, r, http.StatusUnauthorized, "webhook signature does not verify with this project's secret")
			return
		}
		switch event := header(r, f.eventHeader); event {
		case "ping":
			httpkit.WriteJSON(w, http.StatusOK, map[string]any{"ok": true})
			return
		case "push":
		default:
			httpkit.WriteJSON(w, http.StatusOK, map[string]any{"ignored": event, "triggered": []int64{}})
			return
		}
		push, ok := parsePush(body)
		if !ok {
			httpkit.WriteJSON(w, http.StatusOK, map[string]any{"ignored": "not a push to a branch", "triggered": []int64{}})
			return
		}
		ids, err := e.db.RequestEvaluationsForBranch(r.Context(), pid, push.Branch, push.IsDefault)
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
}

// pushEvent is what FC reads of a push payload; GitHub, Gitea and Forgejo send the
// same fields.
type pushEvent struct {
	Branch    string // the branch pushed to
	IsDefault bool   // it is the repository's default branch
}

// zeroCommit is the "after" of a push that deleted its ref.
var zeroCommit = regexp.MustCompile(`^0+$`)

// parsePush reads a push payload. ok is false for anything but a push of commits to
// a branch: a tag, a deleted branch (nothing to evaluate), a payload that does not
// parse, or a ref git would not take (an empty branch would match every jobset that
// follows the default branch; a NUL byte is refused by PostgreSQL, a 500 the forge
// would retry).
func parsePush(body []byte) (pushEvent, bool) {
	var push struct {
		Ref        string `json:"ref"`
		After      string `json:"after"`
		Deleted    bool   `json:"deleted"`
		Repository struct {
			DefaultBranch string `json:"default_branch"`
		} `json:"repository"`
	}
	if err := json.Unmarshal(body, &push); err != nil || push.Deleted || zeroCommit.MatchString(push.After) {
		return pushEvent{}, false
	}
	branch, ok := strings.CutPrefix(push.Ref, "refs/heads/")
	if !ok || !validRefName(push.Ref) {
		return pushEvent{}, false
	}
	return pushEvent{Branch: branch, IsDefault: branch == push.Repository.DefaultBranch}, true
}

// validRefName is git's check-ref-format for a full ref name.
func validRefName(ref string) bool {
	if ref == "@" || strings.HasPrefix(ref, "/") || strings.HasSuffix(ref, "/") || strings.HasSuffix(ref, ".") ||
		strings.Contains(ref, "..") || strings.Contains(ref, "//") || strings.Contains(ref, "@{") ||
		!strings.Contains(ref, "/") || !utf8.ValidString(ref) {
		return false
	}
	for _, c := range ref {
		if c < 0x20 || c == 0x7f || strings.ContainsRune(" ~^:?*[\\", c) {
			return false
		}
	}
	for _, part := range strings.Split(ref, "/") {
		if strings.HasPrefix(part, ".") || strings.HasSuffix(part, ".lock") {
			return false
		}
	}
	return true
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
