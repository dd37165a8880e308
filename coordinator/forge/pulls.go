// Package forge talks to the forges that host projects' repositories (GitHub, Gitea,
// Forgejo, GitLab) through their HTTP APIs: listing open pull requests here; what a
// forge's webhook or API says of a pull request is a PullRequest, whatever the forge.
package forge

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/fc-ci/fc/storage"
)

// PullRequest is a pull request (GitLab: a merge request) as FC needs it.
type PullRequest struct {
	Number int64
	Title  string
	// BaseBranch is the branch it would merge into.
	BaseBranch string
	// HeadSHA is the commit at its head; HeadBranch the branch it comes from, in
	// HeadRepository (owner/name; on GitLab the source project's id or path).
	HeadSHA        string
	HeadBranch     string
	HeadRepository string
	// FromFork: its head lives in another repository than its base.
	FromFork bool
	Draft    bool
	// Open is false once it is closed or merged.
	Open bool
}

// HeadRef is the ref under which a forge of type forgeType keeps the head of pull
// request number in the base repository, whichever repository it comes from: what a
// pull request's jobset follows and the agent fetches.
func HeadRef(forgeType string, number int64) string {
	if forgeType == storage.ForgeGitLab {
		return "refs/merge-requests/" + strconv.FormatInt(number, 10) + "/head"
	}
	return "refs/pull/" + strconv.FormatInt(number, 10) + "/head"
}

// Limits on listing: a page's body, and pages followed (10,000 pull requests).
const (
	maxPageBytes = 16 << 20
	maxPages     = 100
	userAgent    = "fc-ci"
)

// ListPullRequests lists the open pull requests of f's repository whose base is the
// branch base, with the forge f.Type names.
func ListPullRequests(ctx context.Context, hc *http.Client, f storage.ProjectForge, base string) ([]PullRequest, error) {
	switch f.Type {
	case storage.ForgeGitHub:
		return ListGitHubPullRequests(ctx, hc, f.APIURL, f.Repository, f.Token, base)
	case storage.ForgeGitea, storage.ForgeForgejo:
		return ListGiteaPullRequests(ctx, hc, f.APIURL, f.Repository, f.Token, base)
	case storage.ForgeGitLab:
		return ListGitLabMergeRequests(ctx, hc, f.APIURL, f.Repository, f.Token, base)
	}
	return nil, fmt.Errorf("list pull requests: unknown forge type %q", f.Type)
}

// GitHubPull is a pull request as GitHub's REST API and its webhooks show it.
type GitHubPull struct {
	Number int64  `json:"number"`
	Title  string `json:"title"`
	State  string `json:"state"` // open, closed
	Draft  bool   `json:"draft"`
	Head   struct {
		Ref  string `json:"ref"`
		SHA  string `json:"sha"`
		Repo *struct {
			FullName string `json:"full_name"`
		} `json:"repo"` // null when the fork was deleted
	} `json:"head"`
	Base struct {
		Ref  string `json:"ref"`
		Repo struct {
			FullName string `json:"full_name"`
		} `json:"repo"`
	} `json:"base"`
}

// PullRequest is p as FC reads it.
func (p GitHubPull) PullRequest() PullRequest {
	head := ""
	if p.Head.Repo != nil {
		head = p.Head.Repo.FullName
	}
	return PullRequest{Number: p.Number, Title: p.Title, BaseBranch: p.Base.Ref, HeadSHA: p.Head.SHA,
		HeadBranch: p.Head.Ref, HeadRepository: head, Draft: p.Draft, Open: p.State == "open",
		FromFork: head == "" || !strings.EqualFold(head, p.Base.Repo.FullName)}
}

// ListGitHubPullRequests is GET {apiURL}/repos/{owner}/{repo}/pulls?state=open&base=
// {base}&per_page=100 with Authorization: Bearer {token} (none without a token) and
// Accept: application/vnd.github+json, following the Link header's rel="next".
func ListGitHubPullRequests(ctx context.Context, hc *http.Client, apiURL, repo, token, base string) ([]PullRequest, error) {
	q := url.Values{"state": {"open"}, "base": {base}, "per_page": {"100"}}
	next := apiURL + "/repos/" + repo + "/pulls?" + q.Encode()
	var out []PullRequest
	for page := 0; next != ""; page++ {
		if page == maxPages {
			return nil, fmt.Errorf("list pull requests of %s: more than %d pages", repo, maxPages)
		}
		var pulls []GitHubPull
		h, err := getJSON(ctx, hc, next, func(r *http.Request) {
			r.Header.Set("Accept", "application/vnd.github+json")
			r.Header.Set("X-GitHub-Api-Version", "2022-11-28")
			if token != "" {
				r.Header.Set("Authorization", "Bearer "+token)
			}
		}, &pulls)
		if err != nil {
			return nil, fmt.Errorf("list pull requests of %s: %w", repo, err)
		}
		for _, p := range pulls {
			if pr := p.PullRequest(); pr.BaseBranch == base {
				out = append(out, pr)
			}
		}
		if next, err = nextLink(apiURL, h.Get("Link")); err != nil {
			return nil, fmt.Errorf("list pull requests of %s: %w", repo, err)
		}
	}
	return out, nil
}

// GiteaPull is a pull request as Gitea's and Forgejo's API and webhooks show it.
type GiteaPull struct {
	Number int64  `json:"number"`
	Title  string `json:"title"`
	State  string `json:"state"` // open, closed
	Merged bool   `json:"merged"`
	// Draft is set by versions that have it; older ones mark a draft by a title
	// prefix only (WIP: or [WIP] by default).
	Draft bool `json:"draft"`
	Head  struct {
		Ref    string `json:"ref"`
		SHA    string `json:"sha"`
		RepoID int64  `json:"repo_id"`
		Repo   *struct {
			FullName string `json:"full_name"`
		} `json:"repo"`
	} `json:"head"`
	Base struct {
		Ref    string `json:"ref"`
		RepoID int64  `json:"repo_id"`
	} `json:"base"`
}

// PullRequest is p as FC reads it.
func (p GiteaPull) PullRequest() PullRequest {
	head := ""
	if p.Head.Repo != nil {
		head = p.Head.Repo.FullName
	}
	title := strings.ToUpper(p.Title)
	return PullRequest{Number: p.Number, Title: p.Title, BaseBranch: p.Base.Ref, HeadSHA: p.Head.SHA,
		HeadBranch: p.Head.Ref, HeadRepository: head, Open: p.State == "open" && !p.Merged,
		Draft:    p.Draft || strings.HasPrefix(title, "WIP:") || strings.HasPrefix(title, "[WIP]"),
		FromFork: p.Head.RepoID == 0 || p.Head.RepoID != p.Base.RepoID}
}

// giteaPageSize is Gitea's default most items per page (MAX_RESPONSE_ITEMS).
const giteaPageSize = 50

// ListGiteaPullRequests is GET {apiURL}/api/v1/repos/{owner}/{repo}/pulls?state=open
// &page={n}&limit=50 with Authorization: token {token}, a page at a time until one
// comes back short. Gitea filters by base in no version FC relies on, so FC does.
func ListGiteaPullRequests(ctx context.Context, hc *http.Client, apiURL, repo, token, base string) ([]PullRequest, error) {
	var out []PullRequest
	for page := 1; ; page++ {
		if page > maxPages {
			return nil, fmt.Errorf("list pull requests of %s: more than %d pages", repo, maxPages)
		}
		q := url.Values{"state": {"open"}, "page": {strconv.Itoa(page)}, "limit": {strconv.Itoa(giteaPageSize)}}
		var pulls []GiteaPull
		_, err := getJSON(ctx, hc, GiteaAPIRoot(apiURL)+"/repos/"+repo+"/pulls?"+q.Encode(), func(r *http.Request) {
			r.Header.Set("Accept", "application/json")
			if token != "" {
				r.Header.Set("Authorization", "token "+token)
			}
		}, &pulls)
		if err != nil {
			return nil, fmt.Errorf("list pull requests of %s: %w", repo, err)
		}
		for _, p := range pulls {
			if pr := p.PullRequest(); pr.BaseBranch == base && pr.Open {
				out = append(out, pr)
			}
		}
		if len(pulls) < giteaPageSize {
			return out, nil
		}
	}
}

// GiteaAPIRoot is the root of a Gitea or Forgejo instance's API: api_url is the
// instance's root, with or without /api/v1.
func GiteaAPIRoot(apiURL string) string {
	return strings.TrimSuffix(strings.TrimRight(apiURL, "/"), "/api/v1") + "/api/v1"
}

// GitLabMergeRequest is a merge request as GitLab's REST API lists it.
type GitLabMergeRequest struct {
	IID             int64  `json:"iid"`
	Title           string `json:"title"`
	State           string `json:"state"` // opened, closed, locked, merged
	Draft           bool   `json:"draft"`
	WorkInProgress  bool   `json:"work_in_progress"` // before GitLab 15: what draft is now
	SourceBranch    string `json:"source_branch"`
	TargetBranch    string `json:"target_branch"`
	SHA             string `json:"sha"`
	SourceProjectID int64  `json:"source_project_id"`
	TargetProjectID int64  `json:"target_project_id"`
}

// PullRequest is m as FC reads it; repo is the target project as the forge settings
// name it.
func (m GitLabMergeRequest) PullRequest(repo string) PullRequest {
	fork := m.SourceProjectID != m.TargetProjectID
	head := repo
	if fork {
		head = strconv.FormatInt(m.SourceProjectID, 10)
	}
	return PullRequest{Number: m.IID, Title: m.Title, BaseBranch: m.TargetBranch, HeadSHA: m.SHA,
		HeadBranch: m.SourceBranch, HeadRepository: head, FromFork: fork, Draft: m.Draft || m.WorkInProgress,
		Open: m.State == "opened"}
}

// ListGitLabMergeRequests is GET {apiURL}/projects/{url-encoded path or id}/
// merge_requests?state=opened&target_branch={base}&per_page=100&page={n} with
// PRIVATE-TOKEN: {token}, following the X-Next-Page header.
func ListGitLabMergeRequests(ctx context.Context, hc *http.Client, apiURL, project, token, base string) ([]PullRequest, error) {
	var out []PullRequest
	for page := "1"; page != ""; {
		n, err := strconv.Atoi(page)
		if err != nil || n < 1 || n > maxPages {
			return nil, fmt.Errorf("list merge requests of %s: next page %q (at most %d pages)", project, page, maxPages)
		}
		q := url.Values{"state": {"opened"}, "target_branch": {base}, "per_page": {"100"}, "page": {page}}
		var mrs []GitLabMergeRequest
		h, err := getJSON(ctx, hc, apiURL+"/projects/"+url.PathEscape(project)+"/merge_requests?"+q.Encode(), func(r *http.Request) {
			r.Header.Set("Accept", "application/json")
			if token != "" {
				r.Header.Set("PRIVATE-TOKEN", token)
			}
		}, &mrs)
		if err != nil {
			return nil, fmt.Errorf("list merge requests of %s: %w", project, err)
		}
		for _, m := range mrs {
			if pr := m.PullRequest(project); pr.BaseBranch == base && pr.Open {
				out = append(out, pr)
			}
		}
		page = strings.TrimSpace(h.Get("X-Next-Page"))
	}
	return out, nil
}

// getJSON GETs rawURL with the headers set decorates it with and decodes a 200
// answer into out; it returns the answer's headers.
func getJSON(ctx context.Context, hc *http.Client, rawURL string, set func(*http.Request), out any) (http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", userAgent)
	set(req)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxPageBytes+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", req.URL.Redacted(), err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", req.URL.Redacted(), resp.Status, snippet(body))
	}
	if len(body) > maxPageBytes {
		return nil, fmt.Errorf("GET %s: answer larger than %d bytes", req.URL.Redacted(), maxPageBytes)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return nil, fmt.Errorf("GET %s: %w", req.URL.Redacted(), err)
	}
	return resp.Header, nil
}

// snippet is the start of an error answer, for the log.
func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// nextLink is the rel="next" URL of a Link header ("" when there is none). It must
// lie under apiURL: the token goes with it.
func nextLink(apiURL, header string) (string, error) {
	for _, part := range strings.Split(header, ",") {
		target, params, ok := strings.Cut(strings.TrimSpace(part), ";")
		if !ok || !strings.HasPrefix(target, "<") || !strings.HasSuffix(target, ">") {
			continue
		}
		for _, p := range strings.Split(params, ";") {
			if k, v, _ := strings.Cut(strings.TrimSpace(p), "="); k == "rel" && strings.Trim(v, `"`) == "next" {
				next := strings.TrimSuffix(strings.TrimPrefix(target, "<"), ">")
				if !strings.HasPrefix(next, strings.TrimRight(apiURL, "/")+"/") {
					return "", fmt.Errorf("next page %q is not under %s", next, apiURL)
				}
				return next, nil
			}
		}
	}
	return "", nil
}
