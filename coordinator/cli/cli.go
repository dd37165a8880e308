// Package cli is the fc-coordinator command line: serve (the default), migrate, admin
// and cache subcommands. It parses flags and the configuration; the coordinator is
// assembled and run by package app. The main package only calls Run.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/fc-ci/fc/coordinator/app"
	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/cache"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/fleet"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// Exit codes.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

const usage = `usage: fc-coordinator [--config FILE] [COMMAND]

commands:
  serve                      run the coordinator (the default)
  migrate up|status          apply or list database migrations
  migrate create NAME        write a new numbered migration into ./migrations
  admin create-key --name N --role R
                             create an API key and print it alone on stdout
  admin create-agent-token --name N [--uses N] [--expires-in SECONDS]
                             create an agent enrollment token and print it alone
  cache gc [--dry-run]       apply cache retention now; --dry-run reports what it would free
  agent install ssh://user@host[:port] [--name N] [--accept-new-host-key] [--no-service]
                             install or upgrade fc-agent on a host over SSH and
                             register it (agent install --help lists every flag)
  version                    print the version

Configuration: ./coordinator.toml, then --config FILE (or FC_CONFIG_FILE), then
FC_<SECTION>__<KEY> environment variables. See coordinator.toml for every key.
`

// Env is what a command runs with; tests pass their own.
type Env struct {
	Args    []string
	Environ []string
	Stdout  io.Writer
	Stderr  io.Writer
}

// Main runs one command and returns the process exit code.
func Main(ctx context.Context, env Env) int {
	err := run(ctx, env)
	if err == nil {
		return ExitOK
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(env.Stderr, "fc-coordinator: %s\n\n%s", ue.msg, usage)
		return ExitUsage
	}
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	fmt.Fprintf(env.Stderr, "fc-coordinator: %v\n", err)
	return ExitError
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func run(ctx context.Context, env Env) error {
	global := flag.NewFlagSet("fc-coordinator", flag.ContinueOnError)
	global.SetOutput(env.Stderr)
	global.Usage = func() { fmt.Fprint(env.Stderr, usage) }
	configFile := global.String("config", "", "configuration file")
	if err := global.Parse(env.Args); err != nil {
		return err
	}
	args := global.Args()
	cmd := "serve"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	load := func() (config.Config, error) { return config.Load(*configFile, env.Environ) }
	switch cmd {
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.SetOutput(env.Stderr)
		noMigrate := fs.Bool("no-migrate", false, "do not apply pending migrations at start")
		if err := fs.Parse(args); err != nil {
			return err
		}
		cfg, err := load()
		if err != nil {
			return err
		}
		if *noMigrate {
			cfg.Database.AutoMigrate = false
		}
		log := NewLogger(env.Stderr, cfg.LogLevel)
		return serveNotified(ctx, cfg, log, reloadOnHUP(load, log)) // reload.go
	case "migrate":
		return migrate(ctx, load, args, env)
	case "admin":
		return admin(ctx, load, args, env)
	case "cache":
		return cacheCmd(ctx, load, args, env)
	case "agent":
		return agentCmd(ctx, load, args, env)
	case "version":
		fmt.Fprintf(env.Stdout, "fc-coordinator %s\n", protocol.BuildVersion)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(env.Stdout, usage)
		return nil
	}
	return usageError{fmt.Sprintf("unknown command %q", cmd)}
}

// NewLogger makes the daemon's structured logger.
func NewLogger(w io.Writer, level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l}))
}

func migrate(ctx context.Context, load func() (config.Config, error), args []string, env Env) error {
	if len(args) == 0 {
		return usageError{"migrate needs up, status or create NAME"}
	}
	if args[0] == "create" {
		if len(args) != 2 {
			return usageError{"migrate create needs exactly one NAME"}
		}
		return storage.CreateMigration("migrations", args[1], env.Stdout)
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	log := NewLogger(env.Stderr, cfg.LogLevel)
	db, err := app.OpenDatabase(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer db.Close()
	m, err := db.NewMigrator()
	if err != nil {
		return err
	}
	defer m.Close()
	switch args[0] {
	case "up":
		applied, err := m.Up(ctx)
		if err != nil {
			return err
		}
		if len(applied) == 0 {
			fmt.Fprintln(env.Stdout, "database is up to date")
		}
		for _, v := range applied {
			fmt.Fprintf(env.Stdout, "applied migration %d\n", v)
		}
		return nil
	case "status":
		st, err := m.Status(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VERSION\tSTATE\tAPPLIED AT\tFILE")
		for _, s := range st {
			state, at := "pending", ""
			if s.Applied {
				state, at = "applied", s.AppliedAt.UTC().Format("2006-01-02T15:04:05Z")
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", s.Version, state, at, s.Name)
		}
		return tw.Flush()
	}
	return usageError{fmt.Sprintf("unknown migrate command %q", args[0])}
}

func admin(ctx context.Context, load func() (config.Config, error), args []string, env Env) error {
	if len(args) == 0 {
		return usageError{"admin needs a command: create-key, create-agent-token"}
	}
	withDB := func(fn func(db *storage.DB) error) error {
		return withMigratedDB(ctx, load, env, func(_ config.Config, db *storage.DB) error { return fn(db) })
	}
	switch args[0] {
	case "create-agent-token":
		fs := flag.NewFlagSet("create-agent-token", flag.ContinueOnError)
		fs.SetOutput(env.Stderr)
		name := fs.String("name", "", "what the token is for")
		uses := fs.Int("uses", fleet.DefaultTokenUses, "how many agents may enroll with it")
		expires := fs.Int64("expires-in", int64(fleet.DefaultTokenTTL/time.Second), "seconds until it expires")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if *name == "" || *uses < 1 || *uses > fleet.MaxTokenUses || *expires < 1 || *expires > int64(fleet.MaxTokenTTL/time.Second) {
			return usageError{"create-agent-token needs --name, --uses from 1 to 10000, --expires-in from 1 s to 30 days"}
		}
		// An agent without a name of its own takes its token's.
		if err := protocol.CheckAgentName("--name", *name); err != nil {
			return usageError{err.Error()}
		}
		return withDB(func(db *storage.DB) error {
			_, token, err := fleet.CreateToken(ctx, db, *name, *uses, time.Duration(*expires)*time.Second)
			if err != nil {
				return err
			}
			fmt.Fprintln(env.Stdout, token)
			return nil
		})
	case "create-key":
		fs := flag.NewFlagSet("create-key", flag.ContinueOnError)
		fs.SetOutput(env.Stderr)
		name := fs.String("name", "", "a name for the key")
		role := fs.String("role", "", "one of: "+strings.Join(auth.RoleNames(), ", "))
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if *name == "" || !auth.ValidRole(*role) {
			return usageError{"create-key needs --name and --role (" + strings.Join(auth.RoleNames(), ", ") + ")"}
		}
		return withDB(func(db *storage.DB) error {
			_, key, err := auth.CreateKey(ctx, db, *name, *role)
			if err != nil {
				return err
			}
			fmt.Fprintln(env.Stdout, key)
			return nil
		})
	}
	return usageError{fmt.Sprintf("unknown admin command %q", args[0])}
}

// withMigratedDB runs fn on the configured database (migrated first, unless
// auto_migrate is off), for the one-shot admin and cache commands.
func withMigratedDB(ctx context.Context, load func() (config.Config, error), env Env, fn func(config.Config, *storage.DB) error) error {
	cfg, err := load()
	if err != nil {
		return err
	}
	db, err := app.OpenMigrated(ctx, cfg, NewLogger(env.Stderr, "warn"))
	if err != nil {
		return err
	}
	defer db.Close()
	return fn(cfg, db.DB)
}

// Run is Main for the real process; SIGINT or SIGTERM ends it.
func Run() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Main(ctx, Env{Args: os.Args[1:], Environ: os.Environ(), Stdout: os.Stdout, Stderr: os.Stderr})
}

func cacheCmd(ctx context.Context, load func() (config.Config, error), args []string, env Env) error {
	if len(args) == 0 || args[0] != "gc" {
		return usageError{"cache needs a command: gc"}
	}
	fs := flag.NewFlagSet("cache gc", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	dry := fs.Bool("dry-run", false, "report what would be deleted, delete nothing")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	var rep cache.GCReport
	err := withMigratedDB(ctx, load, env, func(cfg config.Config, db *storage.DB) error {
		a, err := app.New(app.Config{Settings: cfg, DB: db, Logger: NewLogger(env.Stderr, "warn"), Addr: "cli"})
		if err != nil {
			return err
		}
		rep, err = a.Cache.GC(ctx, config.Days(cfg.GC.MaxAgeDays), *dry)
		return err
	})
	if err != nil {
		return err
	}
	verb := "deleted"
	if rep.DryRun {
		verb = "would delete"
	}
	for _, p := range rep.Paths {
		fmt.Fprintf(env.Stdout, "%s %s\n", verb, p)
	}
	fmt.Fprintf(env.Stdout, "%s %d paths, %d blobs, %d orphaned blobs, %d abandoned uploads: %.2f MB\n",
		verb, len(rep.Paths), rep.Blobs, rep.OrphanBlobs, rep.TempFiles, float64(rep.FreedBytes)/1e6)
	return nil
}
