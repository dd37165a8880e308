// Package pullrequests keeps the jobsets FC makes for pull requests: a jobset with
// pull_requests gets, for each open pull request whose base is its branch, a jobset
// of its own (<jobset>-pr-<number>) with the same settings, evaluated at the
// request's head; it is disabled and hidden once the request is closed or merged, and
// enabled again when it is reopened. Webhooks (evalapi) tell it of one request at a
// time; its poller lists the open requests of projects with a forge through the
// forge's API, for forges whose webhooks are not configured (or were missed).
//
// It is its own package rather than part of evalqueue: it decides which jobsets
// exist, from what forges say, and both the webhooks and its poller need it;
// evalqueue only decides when an existing jobset is evaluated.
package pullrequests

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/fc-ci/fc/coordinator/forge"
	"github.com/fc-ci/fc/internal/gitcmd"
	"github.com/fc-ci/fc/storage"
)

// Config configures the pull request jobsets.
type Config struct {
	// Interval is the time between polls of the forges; 0: webhooks only.
	Interval time.Duration
	// GitDir and GitTimeout are git's, for asking a repository its default branch.
	GitDir     string
	GitTimeout time.Duration
	// HTTP talks to the forges' APIs; nil: a client with a 30 s timeout.
	HTTP *http.Client
	// Wake tells the evaluation scheduler that jobsets were triggered (may be nil).
	Wake   func()
	Logger *slog.Logger
}

// PullRequests keeps the pull request jobsets.
type PullRequests struct {
	cfg Config
	db  *storage.DB
	log *slog.Logger

	mu    sync.Mutex
	heads map[string]cachedHead // default branches by repository URL
}

type cachedHead struct {
	branch string
	at     time.Time
}

// headTTL is how long a repository's default branch is taken as known: a push
// webhook may ask for it on every push, and it rarely changes.
const headTTL = time.Minute

// New returns the pull request jobsets over db; Run polls.
func New(cfg Config, db *storage.DB) *PullRequests {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HTTP == nil {
		cfg.HTTP = &http.Client{Timeout: 30 * time.Second}
	}
	if cfg.GitTimeout <= 0 {
		cfg.GitTimeout = time.Minute
	}
	return &PullRequests{cfg: cfg, db: db, log: cfg.Logger, heads: map[string]cachedHead{}}
}

// DefaultBranch is the branch the HEAD of project p's repository points to, asked of
// the repository (git ls-remote --symref) at most once a minute.
func (p *PullRequests) DefaultBranch(ctx context.Context, project storage.Project) (string, error) {
	p.mu.Lock()
	h, ok := p.heads[project.RepositoryURL]
	p.mu.Unlock()
	if ok && time.Since(h.at) < headTTL {
		return h.branch, nil
	}
	creds, err := p.db.ProjectFetchCredentials(ctx, project.ID)
	if err != nil {
		return "", err
	}
	var c gitcmd.Credentials
	if creds != nil {
		c = gitcmd.Credentials{SSHKey: creds.SSHKey, HTTPSToken: creds.HTTPSToken}
	}
	gctx, cancel := context.WithTimeout(ctx, p.cfg.GitTimeout)
	defer cancel()
	branch, err := gitcmd.DefaultBranch(gctx, p.cfg.GitDir, project.RepositoryURL, c)
	if err != nil {
		return "", fmt.Errorf("default branch of project %s: %w", project.Name, err)
	}
	p.mu.Lock()
	p.heads[project.RepositoryURL] = cachedHead{branch: branch, at: time.Now()}
	p.mu.Unlock()
	return branch, nil
}

// Result is what Apply did.
type Result struct {
	// Triggered are the jobsets an evaluation was requested of; Created the jobsets
	// made; Closed those disabled and hidden.
	Triggered []int64  `json:"triggered"`
	Created   []string `json:"created"`
	Closed    []string `json:"closed"`
	// Skipped says, per jobset following pull requests, why this request has no
	// jobset of it (a draft, from a fork, another base).
	Skipped []string `json:"skipped"`
}

func newResult() Result {
	return Result{Triggered: []int64{}, Created: []string{}, Closed: []string{}, Skipped: []string{}}
}

// Apply brings project's jobsets that follow pull requests in line with pr, as a
// forge of type forgeType tells of it: each parent whose branch is pr's base gets its
// jobset for pr made, updated or closed; any other parent's jobset for pr (its base
// changed) is closed. defaultBranch is the repository's default branch when the
// forge said it ("" asks the repository, if a parent follows it).
func (p *PullRequests) Apply(ctx context.Context, project storage.Project, forgeType string, pr forge.PullRequest, defaultBranch string) (Result, error) {
	res := newResult()
	parents, err := p.db.PullRequestParents(ctx, project.ID)
	if err != nil || len(parents) == 0 {
		return res, err
	}
	settings, _, err := p.db.ProjectForge(ctx, project.ID)
	if err != nil {
		return res, err
	}
	for _, parent := range parents {
		base := parent.Branch
		if base == "" {
			if defaultBranch == "" {
				if defaultBranch, err = p.DefaultBranch(ctx, project); err != nil {
					return res, err
				}
			}
			base = defaultBranch
		}
		if err := p.applyTo(ctx, parent, base, forgeType, settings.PullRequestsFromForks, pr, &res); err != nil {
			return res, err
		}
	}
	p.wake(res)
	return res, nil
}

// applyTo makes, updates or closes parent's jobset for pr; base is the branch
// parent follows.
func (p *PullRequests) applyTo(ctx context.Context, parent storage.Jobset, base, forgeType string, forks bool, pr forge.PullRequest, res *Result) error {
	why := ""
	switch {
	case pr.BaseBranch != base:
		why = fmt.Sprintf("its base is %s, not %s", pr.BaseBranch, base)
	case !pr.Open:
		why = "it is closed"
	case pr.Draft && !parent.PullRequestDrafts:
		why = "it is a draft (pull_request_drafts is off)"
	case pr.FromFork && !forks:
		why = "it comes from a fork (the project's forge does not allow pull_requests_from_forks)"
	}
	if why != "" {
		ch, err := p.db.ClosePullRequestJobset(ctx, parent.ID, pr.Number)
		if err != nil {
			return err
		}
		if ch.Closed {
			res.Closed = append(res.Closed, ch.Name)
			p.log.Info("pull request jobset closed", "jobset", ch.JobsetID, "name", ch.Name, "pr", pr.Number, "why", why)
		}
		res.Skipped = append(res.Skipped, fmt.Sprintf("%s: pull request #%d is not evaluated: %s", parent.Name, pr.Number, why))
		return nil
	}
	head := storage.PullRequestHead{Number: pr.Number, Ref: forge.HeadRef(forgeType, pr.Number), HeadSHA: pr.HeadSHA,
		HeadBranch: pr.HeadBranch, HeadRepository: pr.HeadRepository, Title: pr.Title}
	ch, err := p.db.OpenPullRequestJobset(ctx, parent, head)
	if errors.Is(err, storage.ErrConflict) {
		// Another webhook or the poller made it at the same moment; now it exists.
		ch, err = p.db.OpenPullRequestJobset(ctx, parent, head)
	}
	if errors.Is(err, storage.ErrConflict) {
		// Still: a jobset someone made has the name. Theirs stays; this request waits
		// until it is renamed.
		name := storage.PullRequestJobsetName(parent.Name, pr.Number)
		p.log.Warn("pull request jobset not made: the name is taken", "jobset", parent.ID, "name", name, "pr", pr.Number)
		res.Skipped = append(res.Skipped, fmt.Sprintf("%s: pull request #%d is not evaluated: a jobset named %s exists that is not its own",
			parent.Name, pr.Number, name))
		return nil
	}
	if err != nil {
		return err
	}
	if ch.Created {
		res.Created = append(res.Created, ch.Name)
		p.log.Info("pull request jobset made", "jobset", ch.JobsetID, "name", ch.Name, "pr", pr.Number, "head", pr.HeadSHA)
	}
	if ch.Triggered {
		res.Triggered = append(res.Triggered, ch.JobsetID)
	}
	return nil
}

func (p *PullRequests) wake(res Result) {
	if len(res.Triggered) > 0 && p.cfg.Wake != nil {
		p.cfg.Wake()
	}
}
