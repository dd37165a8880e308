// Package client is fc, FC's command-line client: lists and shows of projects,
// jobsets, evaluations, builds and agents, the build actions, evaluation triggers and
// live logs, all through the coordinator's REST API (/api/v1). The main package
// (coordinator/cmd/fc) only calls Main.
package client

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/fc-ci/fc/protocol"
)

// Exit codes, documented in fc help and the README.
const (
	ExitOK       = 0
	ExitError    = 1   // the API refused or failed, the network, a local file
	ExitUsage    = 2   // a command or flag fc does not know, a missing argument
	ExitNotFound = 3   // HTTP 404: no such project, jobset, evaluation, build, agent
	ExitFailed   = 4   // fc log -f: the build ended without succeeding
	ExitAuth     = 5   // not logged in, or the key is unknown (401) or may not (403)
	ExitStopped  = 130 // interrupted (Ctrl-C, SIGTERM), as a shell reports SIGINT
)

// Env is what fc runs with; tests pass their own.
type Env struct {
	Args   []string // without the program's name
	Getenv func(string) string
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// Main runs one command and returns the process exit code.
func Main(ctx context.Context, env Env) int {
	if env.Getenv == nil {
		env.Getenv = func(string) string { return "" }
	}
	err := run(ctx, env)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(env.Stderr, "fc: %s\nRun 'fc help' for usage.\n", ue.msg)
		return ExitUsage
	}
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		fmt.Fprintln(env.Stderr, "fc: interrupted")
		return ExitStopped
	}
	var be buildError
	if errors.As(err, &be) {
		fmt.Fprintf(env.Stderr, "fc: %v\n", err)
		return ExitFailed
	}
	fmt.Fprintf(env.Stderr, "fc: %v\n", err)
	var ae *APIError
	switch {
	case errors.Is(err, errNotLoggedIn):
		return ExitAuth
	case errors.As(err, &ae) && ae.Status == http.StatusNotFound:
		return ExitNotFound
	case errors.As(err, &ae) && (ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden):
		if ae.Status == http.StatusUnauthorized {
			fmt.Fprintln(env.Stderr, "fc: log in with `fc login URL` (or set FC_API_KEY)")
		}
		return ExitAuth
	}
	return ExitError
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// buildError: the build fc log -f followed ended without succeeding.
type buildError struct {
	id     int64
	status string
}

func (e buildError) Error() string { return fmt.Sprintf("build %d ended %s", e.id, e.status) }

// command is one fc command.
type command struct {
	name    string
	args    string // the synopsis after the name
	summary string
	subs    []string // words that may follow (completion)
	flags   func(fs *flag.FlagSet, o *opts)
	run     func(ctx context.Context, c *cmdEnv, args []string) error
	offline bool // needs no coordinator (help, completion, login, logout)
}

// opts are the flags a command may take; each command defines those it has.
type opts struct {
	json          bool
	limit, offset int
	key           string
	follow        bool
	force         bool
	jobset        string
	project       string
	status        string
	eval          int64
	system        string
	job           string
}

// cmdEnv is a running command: its flags, output and API.
type cmdEnv struct {
	Env
	opts
	api *api
}

func jsonFlag(fs *flag.FlagSet, o *opts) { fs.BoolVar(&o.json, "json", false, "print the API's JSON") }

func listFlags(fs *flag.FlagSet, o *opts) {
	jsonFlag(fs, o)
	fs.IntVar(&o.limit, "limit", 0, "one page of at most N items (default: every page)")
	fs.IntVar(&o.offset, "offset", 0, "skip the first N items (one page)")
}

func commands() []command {
	return []command{
		{name: "login", args: "[URL] [--key KEY]", summary: "check an API key against a coordinator and store both", offline: true,
			flags: func(fs *flag.FlagSet, o *opts) {
				fs.StringVar(&o.key, "key", "", "the API key (default: read from stdin)")
			}, run: runLogin},
		{name: "logout", summary: "forget the stored URL and key", offline: true, run: runLogout},
		{name: "projects", args: "[NAME]", summary: "list projects, or show one", flags: listFlags, run: runProjects},
		{name: "jobsets", args: "PROJECT [JOBSET]", summary: "list a project's jobsets, or show one", flags: listFlags, run: runJobsets},
		{name: "evals", args: "PROJECT/JOBSET", summary: "list a jobset's evaluations", flags: listFlags, run: runEvals},
		{name: "eval", args: "ID | trigger PROJECT/JOBSET [--force]", summary: "show an evaluation, or trigger one",
			subs: []string{"trigger"}, flags: func(fs *flag.FlagSet, o *opts) {
				jsonFlag(fs, o)
				fs.BoolVar(&o.force, "force", false, "trigger: evaluate even if the inputs did not change")
			}, run: runEval},
		{name: "builds", args: "[--jobset P/J] [--project P] [--eval N] [--status S] [--system S] [--job J]", summary: "list builds",
			flags: func(fs *flag.FlagSet, o *opts) {
				listFlags(fs, o)
				fs.StringVar(&o.jobset, "jobset", "", "builds of PROJECT/JOBSET")
				fs.StringVar(&o.project, "project", "", "builds of a project")
				fs.Int64Var(&o.eval, "eval", 0, "builds of an evaluation")
				fs.StringVar(&o.status, "status", "", "builds with this status (queued, running, succeeded, failed, …)")
				fs.StringVar(&o.system, "system", "", "builds for this system")
				fs.StringVar(&o.job, "job", "", "builds of this job")
			}, run: runBuilds},
		{name: "build", args: "ID | restart ID | cancel ID | bump ID", summary: "show a build, or restart, cancel or bump it",
			subs: []string{"restart", "cancel", "bump"}, flags: jsonFlag, run: runBuild},
		{name: "log", args: "[-f] ID", summary: "print a build's log; -f follows it until the build ends",
			flags: func(fs *flag.FlagSet, o *opts) {
				fs.BoolVar(&o.json, "json", false, "with -f: print the stream's JSON messages, one a line")
				fs.BoolVar(&o.follow, "f", false, "follow the log while the build runs; exit with its result")
				fs.BoolVar(&o.follow, "follow", false, "the same as -f")
			}, run: runLog},
		{name: "agents", args: "[NAME|ID]", summary: "list agents, or show one", flags: listFlags, run: runAgents},
		{name: "completion", args: "bash|zsh|fish", summary: "print a shell completion script", offline: true,
			subs: []string{"bash", "zsh", "fish"}, run: runCompletion},
		{name: "version", summary: "print fc's version", offline: true, run: func(_ context.Context, c *cmdEnv, args []string) error {
			if err := wantArgs("version", args, 0, 0, ""); err != nil {
				return err
			}
			fmt.Fprintln(c.Stdout, protocol.BuildVersion)
			return nil
		}},
		{name: "help", args: "[COMMAND]", summary: "this help", offline: true, run: runHelp},
	}
}

func findCommand(name string) (command, bool) {
	for _, c := range commands() {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

func run(ctx context.Context, env Env) error {
	if len(env.Args) == 0 {
		return usagef("no command given")
	}
	name := env.Args[0]
	if name == "-h" || name == "--help" {
		name = "help"
	}
	cmd, ok := findCommand(name)
	if !ok {
		return usagef("unknown command %q", name)
	}
	c := &cmdEnv{Env: env}
	fs := flag.NewFlagSet("fc "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if cmd.flags != nil {
		cmd.flags(fs, &c.opts)
	}
	args, err := parseFlags(fs, env.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		writeCommandHelp(env.Stdout, cmd, fs)
		return err
	}
	if err != nil {
		return usagef("%s: %v", cmd.name, err)
	}
	if c.limit < 0 || c.offset < 0 {
		return usagef("%s: --limit and --offset must not be negative", cmd.name)
	}
	if !cmd.offline {
		cfg, err := loadConfig(env.Getenv)
		if err != nil {
			return err
		}
		if c.api, err = newAPI(cfg); err != nil {
			return err
		}
	}
	return cmd.run(ctx, c, args)
}

// parseFlags lets flags come before, between and after the arguments
// (fc build 12 --json); "--" ends the flags.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		for len(args) > 0 && !strings.HasPrefix(args[0], "-") {
			pos, args = append(pos, args[0]), args[1:]
		}
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
	}
}

// wantArgs checks the number of arguments a command got.
func wantArgs(cmd string, args []string, min, max int, synopsis string) error {
	if len(args) < min || len(args) > max {
		return usagef("usage: fc %s %s", cmd, synopsis)
	}
	return nil
}
