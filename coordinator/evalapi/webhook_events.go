package evalapi

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/fc-ci/fc/coordinator/forge"
	"github.com/fc-ci/fc/storage"
)

// sender is how one kind of forge signs its requests and names its events.
type sender struct {
	name string // the route's last segment
	// forgeType is the storage.Forge* whose refs pull requests use.
	forgeType string
	// HMAC-SHA256 of the body in the first of sigHeaders present (after sigPrefix);
	// or, when tokenHeader is set, the project's secret itself in that header.
	sigHeaders  []string
	sigPrefix   string
	tokenHeader string
	// eventHeaders name the event, the first present wins.
	eventHeaders []string
	push, pull   string // the event names of a push and of a pull request
	// known are the other events the forge documents: answered "ignored" rather
	// than 400.
	known map[string]bool
}

func set(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// GitHub's webhook events (docs.github.com, "Webhook events and payloads").
var githubEvents = set("branch_protection_configuration", "branch_protection_rule", "check_run", "check_suite",
	"code_scanning_alert", "commit_comment", "create", "custom_property", "custom_property_values", "delete",
	"dependabot_alert", "deploy_key", "deployment", "deployment_protection_rule", "deployment_review",
	"deployment_status", "discussion", "discussion_comment", "fork", "github_app_authorization", "gollum",
	"installation", "installation_repositories", "installation_target", "issue_comment", "issues", "label",
	"marketplace_purchase", "member", "membership", "merge_group", "meta", "milestone", "org_block", "organization",
	"package", "page_build", "personal_access_token_request", "ping", "project", "project_card", "project_column",
	"projects_v2", "projects_v2_item", "public", "pull_request_review", "pull_request_review_comment",
	"pull_request_review_thread", "pull_request_target", "registry_package", "release", "repository",
	"repository_advisory", "repository_dispatch", "repository_import", "repository_ruleset",
	"repository_vulnerability_alert", "secret_scanning_alert", "secret_scanning_alert_location", "security_advisory",
	"security_and_analysis", "sponsorship", "star", "status", "sub_issues", "team", "team_add", "watch",
	"workflow_dispatch", "workflow_job", "workflow_run")

// Gitea's and Forgejo's events: the X-Gitea-Event names, and the finer
// X-Gitea-Event-Type ones.
var giteaEvents = set("create", "delete", "fork", "issues", "issue_assign", "issue_label", "issue_milestone",
	"issue_comment", "pull_request_assign", "pull_request_label", "pull_request_milestone", "pull_request_comment",
	"pull_request_review_approved", "pull_request_review_rejected", "pull_request_review_comment", "pull_request_sync",
	"pull_request_review_request", "pull_request_approved", "pull_request_rejected", "wiki", "repository", "release",
	"package", "schedule", "status", "workflow_run", "workflow_job", "action_run_failure", "action_run_recover",
	"action_run_success")

// GitLab's X-Gitlab-Event names (docs.gitlab.com, "Webhook events").
var gitlabEvents = set("Tag Push Hook", "Issue Hook", "Confidential Issue Hook", "Note Hook", "Confidential Note Hook",
	"Wiki Page Hook", "Pipeline Hook", "Job Hook", "Deployment Hook", "Feature Flag Hook", "Release Hook",
	"Milestone Hook", "Emoji Hook", "Resource Access Token Hook", "Member Hook", "Subgroup Hook", "Project Hook",
	"Vulnerability Hook", "System Hook")

var (
	github = sender{
		name: "github", forgeType: storage.ForgeGitHub,
		sigHeaders: []string{"X-Hub-Signature-256"}, sigPrefix: "sha256=",
		eventHeaders: []string{"X-GitHub-Event"},
		push:         "push", pull: "pull_request", known: githubEvents,
	}
	// Gitea and Forgejo sign the same way; Forgejo sends Gitea's headers too, so
	// either route takes either.
	gitea = sender{
		name: "gitea", forgeType: storage.ForgeGitea,
		sigHeaders:   []string{"X-Gitea-Signature", "X-Forgejo-Signature"},
		eventHeaders: []string{"X-Gitea-Event", "X-Forgejo-Event", "X-Gitea-Event-Type", "X-Forgejo-Event-Type", "X-GitHub-Event"},
		push:         "push", pull: "pull_request", known: giteaEvents,
	}
	forgejo = sender{
		name: "forgejo", forgeType: storage.ForgeForgejo,
		sigHeaders:   []string{"X-Forgejo-Signature", "X-Gitea-Signature"},
		eventHeaders: []string{"X-Forgejo-Event", "X-Gitea-Event", "X-Forgejo-Event-Type", "X-Gitea-Event-Type", "X-GitHub-Event"},
		push:         "push", pull: "pull_request", known: giteaEvents,
	}
	gitlab = sender{
		name: "gitlab", forgeType: storage.ForgeGitLab,
		tokenHeader:  "X-Gitlab-Token",
		eventHeaders: []string{"X-Gitlab-Event"},
		push:         "Push Hook", pull: "Merge Request Hook", known: gitlabEvents,
	}
)

// badEvent is a request whose body is not the event it claims to be (a 400).
type badEvent struct{ why string }

func (b badEvent) Error() string { return b.why }

func notThe(event, why string, args ...any) error {
	return badEvent{why: fmt.Sprintf("the body is not a %s event: ", event) + fmt.Sprintf(why, args...)}
}

// pushEvent is what FC reads of a push payload.
type pushEvent struct {
	Branch string // the branch pushed to
	// DefaultBranch is the repository's default branch as the payload says it; ""
	// when it does not (FC then asks the repository).
	DefaultBranch string
}

// zeroCommit is the "after" of a push that deleted its ref.
var zeroCommit = regexp.MustCompile(`^0+$`)

// parsePush reads a push payload of s. An error is a body that is not a push event
// at all (not JSON, no ref); ignored says why a push triggers nothing: a tag, a
// deleted branch (nothing to evaluate), or a ref git would not take (an empty
// branch would match every jobset that follows the default branch; a NUL byte is
// refused by PostgreSQL, a 500 the forge would retry).
func parsePush(s sender, body []byte) (push pushEvent, ignored string, err error) {
	var p struct {
		ObjectKind *string `json:"object_kind"` // GitLab
		Ref        *string `json:"ref"`
		After      string  `json:"after"`
		Deleted    bool    `json:"deleted"`
		Repository struct {
			DefaultBranch string `json:"default_branch"`
		} `json:"repository"`
		Project struct { // GitLab
			DefaultBranch string `json:"default_branch"`
		} `json:"project"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return pushEvent{}, "", notThe(s.push, "not a JSON object (%v)", err)
	}
	if p.Ref == nil {
		return pushEvent{}, "", notThe(s.push, "it has no ref")
	}
	if s.forgeType == storage.ForgeGitLab && (p.ObjectKind == nil || *p.ObjectKind != "push") {
		return pushEvent{}, "", notThe(s.push, `its object_kind is not "push"`)
	}
	if p.Deleted || zeroCommit.MatchString(p.After) {
		return pushEvent{}, "the push deleted " + printable(*p.Ref), nil
	}
	branch, ok := strings.CutPrefix(*p.Ref, "refs/heads/")
	if !ok {
		return pushEvent{}, "not a push to a branch (" + printable(*p.Ref) + ")", nil
	}
	if !validRefName(*p.Ref) {
		return pushEvent{}, "ref " + printable(*p.Ref) + " is not a name git accepts", nil
	}
	def := p.Repository.DefaultBranch
	if s.forgeType == storage.ForgeGitLab {
		def = p.Project.DefaultBranch
	}
	if def != "" && !validRefName("refs/heads/"+def) {
		def = "" // ask the repository instead
	}
	return pushEvent{Branch: branch, DefaultBranch: def}, "", nil
}

// printable quotes s for a message (it may hold anything a payload does).
func printable(s string) string {
	if len(s) > 200 {
		s = s[:200]
	}
	return fmt.Sprintf("%q", s)
}

// pullEvent is what FC reads of a pull request (merge request) payload.
type pullEvent struct {
	PR            forge.PullRequest
	Action        string
	DefaultBranch string // "" when the payload does not say
}

// Pull request actions that change what FC evaluates or whether (opened, a new
// head, closed, reopened, the base or the draft state changed); any other is
// ignored.
var (
	githubActions = set("opened", "reopened", "synchronize", "closed", "edited", "ready_for_review", "converted_to_draft")
	giteaActions  = set("opened", "reopened", "synchronized", "closed", "edited")
	gitlabActions = set("open", "reopen", "update", "close", "merge")
)

// commitID is a full SHA-1 or SHA-256 commit id.
var commitID = regexp.MustCompile(`^([0-9a-f]{40}|[0-9a-f]{64})$`)

// parsePull reads a pull request payload of s. An error is a body that is not a
// pull request event (or lacks what every one has); ignored says why an action
// changes nothing FC evaluates.
func parsePull(s sender, body []byte) (ev pullEvent, ignored string, err error) {
	switch s.forgeType {
	case storage.ForgeGitLab:
		ev, err = parseGitLabMergeRequest(body)
	default:
		ev, err = parseGitHubLikePull(s, body)
	}
	if err != nil {
		return pullEvent{}, "", err
	}
	actions := githubActions
	switch s.forgeType {
	case storage.ForgeGitea, storage.ForgeForgejo:
		actions = giteaActions
	case storage.ForgeGitLab:
		actions = gitlabActions
	}
	if !actions[ev.Action] {
		return pullEvent{}, fmt.Sprintf("pull request action %s does not change what is evaluated", printable(ev.Action)), nil
	}
	pr := ev.PR
	switch {
	case pr.Number <= 0:
		return pullEvent{}, "", notThe(s.pull, "it has no pull request number")
	case !commitID.MatchString(pr.HeadSHA):
		return pullEvent{}, "", notThe(s.pull, "its head commit %s is not a commit id", printable(pr.HeadSHA))
	case pr.BaseBranch == "" || !validRefName("refs/heads/"+pr.BaseBranch):
		return pullEvent{}, "", notThe(s.pull, "its base branch %s is not a branch name", printable(pr.BaseBranch))
	}
	if ev.DefaultBranch != "" && !validRefName("refs/heads/"+ev.DefaultBranch) {
		ev.DefaultBranch = ""
	}
	ev.PR.Title = strings.ToValidUTF8(strings.ReplaceAll(pr.Title, "\x00", ""), "")
	ev.PR.HeadBranch = strings.ToValidUTF8(strings.ReplaceAll(pr.HeadBranch, "\x00", ""), "")
	ev.PR.HeadRepository = strings.ToValidUTF8(strings.ReplaceAll(pr.HeadRepository, "\x00", ""), "")
	return ev, "", nil
}

// parseGitHubLikePull reads GitHub's pull_request payload, which Gitea and Forgejo
// follow: action, number, pull_request, repository.
func parseGitHubLikePull(s sender, body []byte) (pullEvent, error) {
	var p struct {
		Action      *string         `json:"action"`
		PullRequest json.RawMessage `json:"pull_request"`
		Repository  struct {
			DefaultBranch string `json:"default_branch"`
		} `json:"repository"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return pullEvent{}, notThe(s.pull, "not a JSON object (%v)", err)
	}
	if p.Action == nil || len(p.PullRequest) == 0 || string(p.PullRequest) == "null" {
		return pullEvent{}, notThe(s.pull, "it has no action and pull_request")
	}
	ev := pullEvent{Action: *p.Action, DefaultBranch: p.Repository.DefaultBranch}
	if s.forgeType == storage.ForgeGitHub {
		var pr forge.GitHubPull
		if err := json.Unmarshal(p.PullRequest, &pr); err != nil {
			return pullEvent{}, notThe(s.pull, "its pull_request does not parse (%v)", err)
		}
		ev.PR = pr.PullRequest()
	} else {
		var pr forge.GiteaPull
		if err := json.Unmarshal(p.PullRequest, &pr); err != nil {
			return pullEvent{}, notThe(s.pull, "its pull_request does not parse (%v)", err)
		}
		ev.PR = pr.PullRequest()
	}
	return ev, nil
}

// parseGitLabMergeRequest reads GitLab's Merge Request Hook payload.
func parseGitLabMergeRequest(body []byte) (pullEvent, error) {
	var p struct {
		ObjectKind string `json:"object_kind"`
		Project    struct {
			DefaultBranch     string `json:"default_branch"`
			PathWithNamespace string `json:"path_with_namespace"`
		} `json:"project"`
		Attrs *struct {
			IID             int64  `json:"iid"`
			Title           string `json:"title"`
			State           string `json:"state"`
			Action          string `json:"action"`
			Draft           bool   `json:"draft"`
			WorkInProgress  bool   `json:"work_in_progress"`
			SourceBranch    string `json:"source_branch"`
			TargetBranch    string `json:"target_branch"`
			SourceProjectID int64  `json:"source_project_id"`
			TargetProjectID int64  `json:"target_project_id"`
			LastCommit      struct {
				ID string `json:"id"`
			} `json:"last_commit"`
			Source struct {
				PathWithNamespace string `json:"path_with_namespace"`
			} `json:"source"`
		} `json:"object_attributes"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return pullEvent{}, notThe(gitlab.pull, "not a JSON object (%v)", err)
	}
	if p.ObjectKind != "merge_request" || p.Attrs == nil {
		return pullEvent{}, notThe(gitlab.pull, `its object_kind is not "merge_request" with object_attributes`)
	}
	a := p.Attrs
	fork := a.SourceProjectID != a.TargetProjectID
	head := p.Project.PathWithNamespace
	if fork {
		head = a.Source.PathWithNamespace
	}
	return pullEvent{Action: a.Action, DefaultBranch: p.Project.DefaultBranch, PR: forge.PullRequest{
		Number: a.IID, Title: a.Title, BaseBranch: a.TargetBranch, HeadSHA: a.LastCommit.ID, HeadBranch: a.SourceBranch,
		HeadRepository: head, FromFork: fork, Draft: a.Draft || a.WorkInProgress, Open: a.State == "opened"}}, nil
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
