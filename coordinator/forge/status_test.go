package forge

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage"
)

// statusRequest is what a fake forge saw of a POST.
type statusRequest struct {
	Method, RawPath string
	Header          http.Header
	Body            map[string]any
}

// statusForge answers every request with status and body, and records it.
type statusForge struct {
	*httptest.Server
	mu   sync.Mutex
	seen []statusRequest
}

func newStatusForge(t *testing.T, status int, body string, header map[string]string) *statusForge {
	t.Helper()
	f := &statusForge{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		var b map[string]any
		if err := json.Unmarshal(raw, &b); err != nil {
			t.Errorf("the body is not a JSON object: %q", raw)
		}
		f.mu.Lock()
		f.seen = append(f.seen, statusRequest{Method: r.Method, RawPath: r.URL.EscapedPath(), Header: r.Header.Clone(), Body: b})
		f.mu.Unlock()
		for k, v := range header {
			w.Header().Set(k, v)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(f.Close)
	return f
}

const sha = "0123456789abcdef0123456789abcdef01234567"

// Each forge gets the method, path, headers and JSON body its documentation gives
// for a commit status, with FC's states in its words.
func TestPostStatus_EachForgeAsDocumented(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("d", 200)
	cases := []struct {
		forge    string
		repo     string
		apiPath  string // appended to the server's URL as the forge's api_url
		state    string
		wantPath string
		headers  map[string]string
		body     map[string]any
	}{
		{storage.ForgeGitHub, "octo/demo", "", StateRunning, "/repos/octo/demo/statuses/" + sha,
			map[string]string{"Authorization": "Bearer tok-1", "Accept": "application/vnd.github+json",
				"Content-Type": "application/json", "X-Github-Api-Version": "2022-11-28"},
			map[string]any{"state": "pending", "target_url": "https://ci.example.org/eval/7",
				"description": strings.Repeat("d", 139) + "…", "context": "fc/main"}},
		{storage.ForgeGitHub, "octo/demo", "", StateCancelled, "/repos/octo/demo/statuses/" + sha,
			map[string]string{"Authorization": "Bearer tok-1"},
			map[string]any{"state": "error", "target_url": "https://ci.example.org/eval/7",
				"description": strings.Repeat("d", 139) + "…", "context": "fc/main"}},
		{storage.ForgeGitea, "octo/demo", "", StateFailure, "/api/v1/repos/octo/demo/statuses/" + sha,
			map[string]string{"Authorization": "token tok-1", "Content-Type": "application/json"},
			map[string]any{"state": "failure", "target_url": "https://ci.example.org/eval/7",
				"description": strings.Repeat("d", 139) + "…", "context": "fc/main"}},
		{storage.ForgeForgejo, "octo/demo", "/api/v1", StateSuccess, "/api/v1/repos/octo/demo/statuses/" + sha,
			map[string]string{"Authorization": "token tok-1"},
			map[string]any{"state": "success", "target_url": "https://ci.example.org/eval/7",
				"description": strings.Repeat("d", 139) + "…", "context": "fc/main"}},
		{storage.ForgeGitLab, "group/sub/demo", "/api/v4", StateRunning, "/api/v4/projects/group%2Fsub%2Fdemo/statuses/" + sha,
			map[string]string{"Private-Token": "tok-1", "Content-Type": "application/json"},
			map[string]any{"state": "running", "target_url": "https://ci.example.org/eval/7",
				"description": strings.Repeat("d", 139) + "…", "name": "fc/main"}},
		{storage.ForgeGitLab, "42", "/api/v4", StateFailure, "/api/v4/projects/42/statuses/" + sha,
			map[string]string{"Private-Token": "tok-1"},
			map[string]any{"state": "failed", "target_url": "https://ci.example.org/eval/7",
				"description": strings.Repeat("d", 139) + "…", "name": "fc/main"}},
		{storage.ForgeGitLab, "42", "/api/v4", StateCancelled, "/api/v4/projects/42/statuses/" + sha,
			map[string]string{"Private-Token": "tok-1"},
			map[string]any{"state": "canceled", "target_url": "https://ci.example.org/eval/7",
				"description": strings.Repeat("d", 139) + "…", "name": "fc/main"}},
	}
	for _, c := range cases {
		t.Run(c.forge+"/"+c.state, func(t *testing.T) {
			srv := newStatusForge(t, http.StatusCreated, `{"id": 1}`, nil)
			f := storage.ProjectForge{Type: c.forge, APIURL: srv.URL + c.apiPath, Repository: c.repo, Token: "tok-1"}
			err := PostStatus(context.Background(), srv.Client(), f, Status{SHA: sha, State: c.state, Context: "fc/main",
				Description: long, TargetURL: "https://ci.example.org/eval/7"})
			if err != nil {
				t.Fatal(err)
			}
			if len(srv.seen) != 1 {
				t.Fatalf("%d requests, want 1", len(srv.seen))
			}
			got := srv.seen[0]
			if got.Method != "POST" || got.RawPath != c.wantPath {
				t.Errorf("request %s %s, want POST %s", got.Method, got.RawPath, c.wantPath)
			}
			for k, v := range c.headers {
				if got.Header.Get(k) != v {
					t.Errorf("header %s = %q, want %q", k, got.Header.Get(k), v)
				}
			}
			if !reflect.DeepEqual(got.Body, c.body) {
				t.Errorf("body %v\nwant %v", got.Body, c.body)
			}
			for k := range got.Header {
				if k != "Authorization" && k != "Private-Token" && strings.Contains(strings.Join(got.Header[k], " "), "tok-1") {
					t.Errorf("the token is in header %s too", k)
				}
			}
		})
	}
}

// What a forge answers decides what happens next: a refusal that will not change is
// permanent, a rate limit says when to come back, a server error is retried, and an
// error never shows the token.
func TestPostStatus_Answers(t *testing.T) {
	t.Parallel()
	post := func(forgeType string, status int, body string, header map[string]string) error {
		srv := newStatusForge(t, status, body, header)
		f := storage.ProjectForge{Type: forgeType, APIURL: srv.URL, Repository: "octo/demo", Token: "secret-token-xyz"}
		err := PostStatus(context.Background(), srv.Client(), f, Status{SHA: sha, State: StateSuccess, Context: "fc/main"})
		if err != nil && strings.Contains(err.Error(), "secret-token-xyz") {
			t.Errorf("the error shows the token: %v", err)
		}
		return err
	}
	if err := post(storage.ForgeGitHub, 404, `{"message":"Not Found"}`, nil); !errors.Is(err, ErrPermanent) {
		t.Errorf("404: %v, want permanent", err)
	}
	if err := post(storage.ForgeGitHub, 500, `oops`, nil); err == nil || errors.Is(err, ErrPermanent) {
		t.Errorf("500: %v, want a retryable error", err)
	}
	var ra *RetryAfterError
	if err := post(storage.ForgeGitHub, 429, `{}`, map[string]string{"Retry-After": "30"}); !errors.As(err, &ra) || ra.After != 30*time.Second {
		t.Errorf("429: %v, want a RetryAfterError of 30 s", err)
	}
	reset := time.Now().Add(90 * time.Second).Unix()
	err := post(storage.ForgeGitHub, 403, `{"message":"API rate limit exceeded"}`,
		map[string]string{"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": strconv.FormatInt(reset, 10)})
	if !errors.As(err, &ra) || ra.After < 60*time.Second || ra.After > 91*time.Second {
		t.Errorf("rate limited 403: %v, want a RetryAfterError until the reset", err)
	}
	// GitLab refuses to set a state a commit already has: already done, not an error.
	if err := post(storage.ForgeGitLab, 400, `{"message":"Cannot transition status via :run from :running"}`, nil); err != nil {
		t.Errorf("GitLab's repeated state: %v", err)
	}
	if err := PostStatus(context.Background(), http.DefaultClient, storage.ProjectForge{Type: storage.ForgeGitHub,
		APIURL: "http://127.0.0.1:1", Repository: "octo/demo"}, Status{SHA: sha, State: StateSuccess}); !errors.Is(err, ErrPermanent) {
		t.Errorf("no token: %v, want permanent", err)
	}
	if err := PostStatus(context.Background(), http.DefaultClient, storage.ProjectForge{Type: storage.ForgeGitHub,
		APIURL: "http://127.0.0.1:1", Repository: "octo/demo", Token: "t"}, Status{SHA: "main", State: StateSuccess}); !errors.Is(err, ErrPermanent) {
		t.Errorf("a branch name for a commit: %v, want permanent", err)
	}
}
