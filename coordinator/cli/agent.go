package cli

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fc-ci/fc/coordinator/agentinstall"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

const agentUsage = `usage: fc-coordinator [--config FILE] agent install ssh://user@host[:port] [flags]

Installs fc-agent on a builder host over SSH, or upgrades it there: checks Nix on
the host, uploads fc-agent, has it make its key on the host, registers the public
key with this coordinator (the configured database; no enrollment token), writes
agent.toml and a systemd unit, starts it and waits until the agent is connected.
Run it on the coordinator's host with the coordinator's configuration.

flags:
`

// agentCmd is "agent install".
func agentCmd(ctx context.Context, load func() (config.Config, error), args []string, env Env) error {
	if len(args) == 0 || args[0] != "install" {
		return usageError{"agent needs a command: install"}
	}
	fs := flag.NewFlagSet("agent install", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	fs.Usage = func() { fmt.Fprint(env.Stderr, agentUsage); fs.PrintDefaults() }
	var o agentinstall.Options
	fs.StringVar(&o.Name, "name", "", "the agent's name (default: the host's name; an installed agent keeps its name)")
	fs.BoolVar(&o.SSH.AcceptNew, "accept-new-host-key", false, "record the key of a host known_hosts does not list (a different key is always refused)")
	fs.StringVar(&o.SSH.Identity, "identity", "", "SSH private key to log in with (default: ssh-agent, ~/.ssh/id_ed25519, id_ecdsa, id_rsa)")
	fs.StringVar(&o.SSH.KnownHosts, "known-hosts", "", "known_hosts file (default: ~/.ssh/known_hosts)")
	fs.StringVar(&o.AgentBinary, "agent-binary", "", "fc-agent executable to upload (default: fc-agent beside fc-coordinator)")
	fs.StringVar(&o.CoordinatorURL, "coordinator-url", "", "URL the agent dials (default: server.public_url)")
	fs.BoolVar(&o.NoService, "no-service", false, "for hosts without systemd: start the agent detached (PID and log files in its state directory)")
	fs.StringVar(&o.Root, "root", "", "prefix every path on the host with this directory (staging, containers, tests); with a service, files are staged and nothing is started")
	fs.DurationVar(&o.Timeout, "timeout", 2*time.Minute, "how long to wait for the agent to connect")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", 30*time.Minute, "how long an upgraded agent may finish its running work before it is cancelled (--no-service)")
	rest, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	if len(rest) != 1 {
		return usageError{"agent install needs one target, ssh://user@host[:port]"}
	}
	if o.Target, err = agentinstall.ParseTarget(rest[0]); err != nil {
		return usageError{err.Error()}
	}
	if o.Name != "" {
		if err := protocol.CheckAgentName("--name", o.Name); err != nil {
			return usageError{err.Error()}
		}
	}
	o.SSH.Home, o.SSH.AgentSocket = lookupEnv(env.Environ, "HOME"), lookupEnv(env.Environ, "SSH_AUTH_SOCK")
	if o.AgentBinary == "" {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find fc-agent beside fc-coordinator: %w (give --agent-binary)", err)
		}
		o.AgentBinary = filepath.Join(filepath.Dir(self), "fc-agent")
	}
	o.Out = env.Stdout
	return withMigratedDB(ctx, load, env, func(cfg config.Config, db *storage.DB) error {
		if o.CoordinatorURL == "" {
			o.CoordinatorURL = strings.TrimRight(cfg.Server.PublicURL, "/")
		}
		_, err := agentinstall.Install(ctx, db, o)
		return err
	})
}

// parseInterspersed parses flags before and after positional arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return rest, nil
		}
		rest, args = append(rest, args[0]), args[1:]
	}
}

func lookupEnv(environ []string, key string) string {
	v := ""
	for _, kv := range environ {
		if s, ok := strings.CutPrefix(kv, key+"="); ok {
			v = s
		}
	}
	return v
}
