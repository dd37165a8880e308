package pullrequests

import (
	"context"
	"slices"
	"time"

	"github.com/fc-ci/fc/coordinator/forge"
	"github.com/fc-ci/fc/storage"
)

// Run polls the forges every Interval until ctx ends (not at all when Interval is 0).
func (p *PullRequests) Run(ctx context.Context) {
	if p.cfg.Interval <= 0 {
		return
	}
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		p.Poll(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Poll lists the open pull requests of every enabled project that has a forge and
// jobsets following pull requests, and makes, updates and closes their jobsets as a
// webhook would. A project whose forge cannot be listed is left as it is (logged):
// an unreachable forge must not close every pull request's jobset.
func (p *PullRequests) Poll(ctx context.Context) {
	targets, err := p.db.PullRequestPollTargets(ctx)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn("poll pull requests", "err", err)
		}
		return
	}
	for _, t := range targets {
		if ctx.Err() != nil {
			return
		}
		if err := p.pollProject(ctx, t); err != nil && ctx.Err() == nil {
			p.log.Warn("poll pull requests", "project", t.ProjectID, "forge", t.Forge.Type, "repository", t.Forge.Repository, "err", err)
		}
	}
}

func (p *PullRequests) pollProject(ctx context.Context, t storage.PullRequestPollTarget) error {
	project, err := p.db.GetProject(ctx, t.ProjectID)
	if err != nil {
		return err
	}
	parents, err := p.db.PullRequestParents(ctx, t.ProjectID)
	if err != nil {
		return err
	}
	listed := map[string][]forge.PullRequest{} // by base branch: parents may share one
	res := newResult()
	for _, parent := range parents {
		base := parent.Branch
		if base == "" {
			if base, err = p.DefaultBranch(ctx, project); err != nil {
				return err
			}
		}
		prs, ok := listed[base]
		if !ok {
			if prs, err = forge.ListPullRequests(ctx, p.cfg.HTTP, t.Forge, base); err != nil {
				return err
			}
			listed[base] = prs
		}
		open := make([]int64, 0, len(prs))
		for _, pr := range prs {
			open = append(open, pr.Number)
			if err := p.applyTo(ctx, parent, base, t.Forge.Type, t.Forge.PullRequestsFromForks, pr, &res); err != nil {
				return err
			}
		}
		// Those the forge no longer lists as open were closed or merged.
		known, err := p.db.OpenPullRequestNumbers(ctx, parent.ID)
		if err != nil {
			return err
		}
		for _, n := range known {
			if slices.Contains(open, n) {
				continue
			}
			ch, err := p.db.ClosePullRequestJobset(ctx, parent.ID, n)
			if err != nil {
				return err
			}
			if ch.Closed {
				res.Closed = append(res.Closed, ch.Name)
				p.log.Info("pull request jobset closed", "jobset", ch.JobsetID, "name", ch.Name, "pr", n, "why", "no longer open on the forge")
			}
		}
	}
	p.wake(res)
	if len(res.Created)+len(res.Triggered)+len(res.Closed) > 0 {
		p.log.Info("pull requests polled", "project", project.Name, "created", res.Created, "triggered", res.Triggered, "closed", res.Closed)
	}
	return nil
}
