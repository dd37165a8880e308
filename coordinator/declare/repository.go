package declare

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"time"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/projectapi"
	"github.com/fc-ci/fc/internal/gitcmd"
	"github.com/fc-ci/fc/internal/tomlenv"
	"github.com/fc-ci/fc/storage"
)

// RepositoriesConfig configures the reading of projects' declarative files.
type RepositoriesConfig struct {
	// GitDir holds the mirrors (GitDir/declarative/<project id>.git) and SSH
	// known_hosts.
	GitDir     string
	GitTimeout time.Duration
	// Interval is the time between passes over the projects; 0: Run does nothing.
	Interval time.Duration
	// AllowedInputPaths is evaluator.allowed_input_paths.
	AllowedInputPaths []string
	// Wake is called when jobsets were created or changed (the evaluation scheduler's
	// Wake), so they are checked at once.
	Wake   func()
	Logger *slog.Logger
}

// Repositories applies the jobsets projects' repositories declare (Hydra's
// declarative jobsets): a project's declarative_file (.fc.toml) at the head of its
// declarative_branch (or the default branch) lists [[jobsets]] like the config's
// [[projects.jobsets]]. They are created or updated and marked declared by the
// repository; jobsets the file no longer lists are disabled. A file that cannot be
// read or is malformed changes nothing: the error is the project's declarative_error.
type Repositories struct {
	cfg RepositoriesConfig
	db  *storage.DB
	log *slog.Logger
	// pushed are projects whose repository was pushed to (Pushed), read before the
	// next tick.
	pushed chan int64
}

// NewRepositories returns the reader over db.
func NewRepositories(cfg RepositoriesConfig, db *storage.DB) *Repositories {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Wake == nil {
		cfg.Wake = func() {}
	}
	return &Repositories{cfg: cfg, db: db, log: log, pushed: make(chan int64, 64)}
}

// Pushed asks for project id's declarative file to be read now rather than at the
// next tick: a push webhook calls it, so a commit changing .fc.toml takes effect at
// once. It never blocks; when many pushes queue up, the tick reads them all anyway.
func (r *Repositories) Pushed(id int64) {
	select {
	case r.pushed <- id:
	default:
	}
}

// checkPushed reads the declarative file of project id after a push.
func (r *Repositories) checkPushed(ctx context.Context, id int64) error {
	p, err := r.db.GetProject(ctx, id)
	if errors.Is(err, storage.ErrNotFound) {
		return nil
	}
	if err != nil || p.DeclarativeFile == "" || !p.Enabled {
		return err
	}
	return r.Check(ctx, p)
}

// Run reads every declarative project's file each Interval until ctx ends, and a
// pushed project's at once.
func (r *Repositories) Run(ctx context.Context) {
	if r.cfg.Interval <= 0 {
		return
	}
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		if err := r.CheckAll(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("declarative files", "err", err)
		}
		if !r.untilTick(ctx, t) {
			return
		}
	}
}

// untilTick serves pushes until the next tick (true) or ctx's end (false).
func (r *Repositories) untilTick(ctx context.Context, t *time.Ticker) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case id := <-r.pushed:
			if err := r.checkPushed(ctx, id); err != nil && ctx.Err() == nil {
				r.log.Warn("declarative file after a push", "project", id, "err", err)
			}
		}
	}
}

// CheckAll reads the declarative file of every enabled project that has one. A
// project's error is recorded on it; only a database error is returned.
func (r *Repositories) CheckAll(ctx context.Context) error {
	ps, err := r.db.DeclarativeProjects(ctx)
	if err != nil {
		return err
	}
	for _, p := range ps {
		if err := r.Check(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// Check reads project p's declarative file and applies it. What is wrong with the
// file or the repository is recorded as p's declarative_error (and logged), changing
// nothing else; the error returned is the database's.
func (r *Repositories) Check(ctx context.Context, p storage.Project) error {
	source := RepositorySource(p.Name, p.DeclarativeFile)
	js, ferr := r.read(ctx, p)
	if ferr == nil {
		c, err := r.db.ApplyRepositoryJobsets(ctx, p.ID, source, js)
		if err == nil {
			if c != (storage.DeclarationCounts{}) {
				r.log.Info("declarative file applied", "project", p.Name, "file", p.DeclarativeFile,
					"jobsets", fmt.Sprintf("%d created, %d updated, %d removed", c.Created, c.Updated, c.Removed))
				r.cfg.Wake()
			}
			return nil
		}
		if !errors.Is(err, storage.ErrConflict) && !errors.Is(err, storage.ErrNotFound) {
			return err
		}
		ferr = err
	}
	if ferr.Error() != p.DeclarativeError {
		r.log.Warn("declarative file not applied", "project", p.Name, "file", p.DeclarativeFile, "err", ferr)
	}
	return r.db.SetDeclarativeError(ctx, p.ID, ferr.Error())
}

// RepositorySource is the `declared` value of the jobsets project's repository
// declares in file.
func RepositorySource(project, file string) string { return "repository:" + project + "/" + file }

// read fetches the head of p's declarative branch and parses its declarative file.
func (r *Repositories) read(ctx context.Context, p storage.Project) ([]storage.JobsetFields, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.GitTimeout)
	defer cancel()
	var creds gitcmd.Credentials
	if fc, err := r.db.ProjectFetchCredentials(ctx, p.ID); err != nil {
		return nil, err
	} else if fc != nil {
		creds = gitcmd.Credentials{SSHKey: fc.SSHKey, HTTPSToken: fc.HTTPSToken}
	}
	commit, err := gitcmd.LsRemote(ctx, r.cfg.GitDir, p.RepositoryURL, p.DeclarativeBranch, creds)
	if err != nil {
		return nil, err
	}
	mirror := filepath.Join(r.cfg.GitDir, "declarative", strconv.FormatInt(p.ID, 10)+".git")
	if err := gitcmd.FetchCommit(ctx, r.cfg.GitDir, mirror, p.RepositoryURL, commit, creds); err != nil {
		return nil, err
	}
	data, err := gitcmd.ShowFile(ctx, mirror, commit, p.DeclarativeFile)
	if err != nil {
		return nil, err
	}
	return ParseJobsets(fmt.Sprintf("%s at %.12s", p.DeclarativeFile, commit), data, r.cfg.AllowedInputPaths)
}

// ParseJobsets reads a declarative file's [[jobsets]] and checks them by the API's
// rules; errors name where (file, the line) and the key (jobsets[1].branch).
func ParseJobsets(where string, data []byte, allowedPaths []string) ([]storage.JobsetFields, error) {
	var spec struct {
		Jobsets []config.DeclaredJobset `toml:"jobsets"`
	}
	if err := tomlenv.DecodeFile(&spec, where, data); err != nil {
		return nil, err
	}
	seen := map[string]int{}
	out := make([]storage.JobsetFields, 0, len(spec.Jobsets))
	for i, js := range spec.Jobsets {
		at := fmt.Sprintf("jobsets[%d]", i)
		if prev, ok := seen[js.Name]; ok {
			return nil, config.KeyErrorIn(where, data, at+".name", fmt.Sprintf("%q is declared twice (also jobsets[%d])", js.Name, prev))
		}
		seen[js.Name] = i
		f, kerr := projectapi.JobsetFromDeclaration(js, allowedPaths)
		if kerr == nil {
			kerr = projectapi.RepositoryMayDeclare(f)
		}
		if kerr != nil {
			return nil, config.KeyErrorIn(where, data, at+"."+kerr.Key, kerr.Msg)
		}
		out = append(out, f)
	}
	return out, nil
}
