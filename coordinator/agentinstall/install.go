// Package agentinstall installs fc-agent on a builder host over SSH, from the
// coordinator's host (fc-coordinator agent install): it checks Nix there, uploads
// the agent binary, has the agent make its key on the host (the private key never
// leaves it), registers the public key directly in the coordinator's database (no
// enrollment token travels), writes agent.toml and a systemd unit (or starts the
// agent detached), and waits until the agent is connected. A rerun upgrades in
// place: the key, and so the agent's record, stay.
package agentinstall

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// Options describe one installation.
type Options struct {
	Target Target
	SSH    SSHOptions
	// Name is the agent's name; empty: the host's name (an installed agent keeps the
	// name it was registered with).
	Name string
	// AgentBinary is the local fc-agent executable to upload.
	AgentBinary string
	// CoordinatorURL is the URL the agent dials (the coordinator's public_url).
	CoordinatorURL string
	// Root prefixes every path on the host (staging, containers, tests). With a root
	// other than / and a service, the files are staged only: nothing is started.
	Root string
	// NoService starts the agent detached instead of as a systemd unit.
	NoService bool
	// Timeout bounds the wait for the agent to connect; DrainTimeout the wait for a
	// running agent (an upgrade) to finish its work before it is cancelled.
	Timeout, DrainTimeout time.Duration
	// Out is told what happens, step by step.
	Out io.Writer
}

// Result is what was installed.
type Result struct {
	AgentID     int64
	Name        string
	Fingerprint string
	Upgraded    bool // the agent was registered already: same key, same record
	Staged      bool // files written under Root, nothing started
	PID         int  // the detached agent's PID (NoService)
	Paths       Paths
}

// Install installs (or upgrades) the agent on o.Target and registers it in db.
func Install(ctx context.Context, db *storage.DB, o Options) (Result, error) {
	if o.CoordinatorURL == "" {
		return Result{}, errors.New("no coordinator URL for the agent: set server.public_url in the coordinator's configuration, or give --coordinator-url")
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Minute
	}
	if o.DrainTimeout <= 0 {
		o.DrainTimeout = 30 * time.Minute
	}
	paths, err := PathsUnder(o.Root)
	if err != nil {
		return Result{}, err
	}
	arch, err := binaryArch(o.AgentBinary)
	if err != nil {
		return Result{}, err
	}
	o.SSH.Out = o.Out
	client, err := Dial(ctx, o.Target, o.SSH)
	if err != nil {
		return Result{}, err
	}
	defer client.Close()
	fmt.Fprintf(o.Out, "connected to %s\n", o.Target)
	r := &remote{c: client}
	if err := r.checkHost(ctx, o, arch); err != nil {
		return Result{}, err
	}
	in := &installation{o: o, r: r, db: db, res: Result{Paths: paths}}
	return in.res, in.run(ctx)
}

// installation is one run of Install once connected.
type installation struct {
	o   Options
	r   *remote
	db  *storage.DB
	res Result
}

func (in *installation) run(ctx context.Context) (err error) {
	p := in.res.Paths
	staged := !in.o.NoService && in.o.Root != "" && in.o.Root != "/"
	if !in.o.NoService && !staged {
		if _, err := in.r.run(ctx, `command -v systemctl >/dev/null && [ -d /run/systemd/system ]`, nil); err != nil {
			return errors.New("the host does not run systemd: rerun with --no-service to start the agent without a service manager")
		}
	}
	bin, err := os.Open(in.o.AgentBinary)
	if err != nil {
		return fmt.Errorf("agent binary: %w", err)
	}
	defer bin.Close()
	newBin := p.Binary + ".fc-install"
	defer func() {
		if err != nil { // the upload, if it is still there, is of no use
			cleanup, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
			defer cancel()
			_, _ = in.r.run(cleanup, "rm -f "+shQuote(newBin), nil)
		}
	}()
	if err := in.r.upload(ctx, newBin, 0o755, bin); err != nil {
		return err
	}
	version, err := in.r.output(ctx, shQuote(newBin)+" version")
	if err != nil {
		return fmt.Errorf("the uploaded fc-agent does not run on the host: %w", err)
	}
	fmt.Fprintf(in.o.Out, "uploaded %s (%s) to %s\n", in.o.AgentBinary, version, p.Binary)
	if err := in.register(ctx, newBin); err != nil {
		return err
	}
	conf, err := agentTOML(in.o.CoordinatorURL, in.res.Name, p)
	if err != nil {
		return err
	}
	if err := in.writeConfig(ctx, conf); err != nil {
		return err
	}
	switch {
	case staged:
		return in.stage(ctx, newBin)
	case in.o.NoService:
		return in.startDetached(ctx, newBin)
	default:
		return in.startService(ctx, newBin)
	}
}

// checkHost finds out whether commands need sudo, that the host's architecture is
// the binary's, and that Nix is installed.
func (r *remote) checkHost(ctx context.Context, o Options, arch []string) error {
	uid, err := r.output(ctx, "id -u")
	if err != nil {
		return fmt.Errorf("run a command on the host: %w", err)
	}
	if uid != "0" {
		r.sudo = true
		if _, err := r.run(ctx, "true", nil); err != nil {
			return fmt.Errorf("%s is not root and cannot sudo without a password (sudo -n): %w", o.Target.User, err)
		}
	}
	machine, err := r.output(ctx, "uname -m")
	if err != nil {
		return fmt.Errorf("uname -m: %w", err)
	}
	found := false
	for _, a := range arch {
		found = found || a == machine
	}
	if !found {
		return fmt.Errorf("the host is %s but %s is built for %s: give --agent-binary an fc-agent built for %s (GOARCH)",
			machine, o.AgentBinary, arch[0], machine)
	}
	nix, err := r.output(ctx, "nix-store --version")
	if err != nil {
		return fmt.Errorf("nix-store --version failed on the host: install Nix there first (https://nixos.org/download): %w", err)
	}
	fmt.Fprintf(o.Out, "host: %s, %s\n", machine, nix)
	return nil
}

// upload writes content to path on the host (its directory created) with mode.
func (r *remote) upload(ctx context.Context, path string, mode uint32, content io.Reader) error {
	script := fmt.Sprintf(`set -e; umask 022; mkdir -p %s; rm -f %s; (umask 077; cat > %s); chmod %o %s`,
		shQuote(dirOf(path)), shQuote(path), shQuote(path), mode, shQuote(path))
	if _, err := r.run(ctx, script, content); err != nil {
		return fmt.Errorf("upload %s: %w", path, err)
	}
	return nil
}

// register has the uploaded agent make its key on the host (or read the one it
// has), and registers the public key, unless an agent has it already.
func (in *installation) register(ctx context.Context, bin string) error {
	p := in.res.Paths
	env := "FC_CONFIG_FILE= FC_AGENT__STATE_DIR=" + shQuote(p.StateDir)
	if in.o.Name != "" {
		env += " FC_AGENT__NAME=" + shQuote(in.o.Name)
	}
	out, err := in.r.output(ctx, fmt.Sprintf(`set -e; umask 077; mkdir -p %[1]s; chmod 700 %[1]s; cd %[1]s; env %[2]s %[3]s keygen`,
		shQuote(p.StateDir), env, shQuote(bin)))
	if err != nil {
		return fmt.Errorf("make the agent key on the host (fc-agent keygen): %w", err)
	}
	line, _, _ := strings.Cut(out, "\n")
	k, err := protocol.ParseAgentKey(line)
	if err != nil {
		return fmt.Errorf("fc-agent keygen printed %q, not an ssh-ed25519 public key", line)
	}
	fp := k.Fingerprint
	in.res.Fingerprint = fp
	a, err := in.db.AgentByFingerprint(ctx, k.Fingerprint)
	switch {
	case err == nil && a.RevokedAt != nil:
		return fmt.Errorf("the key on the host (%s) belongs to agent %d (%s), which was revoked: remove %s/agent_key on the host to install a new agent",
			fp, a.ID, a.Name, p.StateDir)
	case err == nil && in.o.Name != "" && in.o.Name != a.Name:
		return fmt.Errorf("the host's agent is registered as %q (agent %d); an agent keeps its name: rerun with --name %s or without --name",
			a.Name, a.ID, a.Name)
	case err == nil:
		in.res.AgentID, in.res.Name, in.res.Upgraded = a.ID, a.Name, true
		fmt.Fprintf(in.o.Out, "agent %s (id %d, key %s) is registered already: upgrading it in place\n", a.Name, a.ID, k.Fingerprint)
		return nil
	case !errors.Is(err, storage.ErrNotFound):
		return err
	}
	return in.registerNew(ctx, k)
}

// registerNew pins the key as POST /api/v1/agents does.
func (in *installation) registerNew(ctx context.Context, k protocol.AgentKey) error {
	name := in.o.Name
	if name == "" {
		host, err := in.r.output(ctx, "uname -n")
		if err != nil {
			return fmt.Errorf("the host's name: %w", err)
		}
		name, _, _ = strings.Cut(host, ".")
	}
	if err := protocol.CheckAgentName("agent name", name); err != nil {
		return fmt.Errorf("%w; give --name", err)
	}
	a, err := in.db.RegisterAgent(ctx, name, k.Line, k.Fingerprint)
	var taken *storage.AgentNameTakenError
	if errors.As(err, &taken) {
		return fmt.Errorf("%w: give this agent another --name, or revoke agent %d", taken, taken.AgentID)
	}
	if err != nil {
		return err
	}
	in.res.AgentID, in.res.Name = a.ID, a.Name
	fmt.Fprintf(in.o.Out, "registered agent %s (id %d) with the key it made on the host: %s\n", a.Name, a.ID, k.Fingerprint)
	return nil
}

// writeConfig writes agent.toml, keeping a different one before it as
// agent.toml.previous.
func (in *installation) writeConfig(ctx context.Context, conf []byte) error {
	p := in.res.Paths
	tmp := p.Config + ".fc-install"
	if err := in.r.upload(ctx, tmp, 0o600, bytes.NewReader(conf)); err != nil {
		return err
	}
	out, err := in.r.output(ctx, fmt.Sprintf(`set -e; if [ -f %[1]s ] && ! cmp -s %[2]s %[1]s; then cp -p %[1]s %[1]s.previous; echo kept; fi; mv -f %[2]s %[1]s`,
		shQuote(p.Config), shQuote(tmp)))
	if err != nil {
		return fmt.Errorf("write %s: %w", p.Config, err)
	}
	fmt.Fprintf(in.o.Out, "wrote %s\n", p.Config)
	if out == "kept" {
		fmt.Fprintf(in.o.Out, "the previous, different %s is kept as %s.previous\n", p.Config, p.Config)
	}
	return nil
}

// binaryArch is what uname -m says on hosts the ELF executable at path runs on.
func binaryArch(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("agent binary %s: %w (give --agent-binary the fc-agent executable for the host)", path, err)
	}
	defer f.Close()
	switch f.Machine {
	case elf.EM_X86_64:
		return []string{"x86_64"}, nil
	case elf.EM_AARCH64:
		return []string{"aarch64", "arm64"}, nil
	case elf.EM_386:
		return []string{"i686", "i386", "i586"}, nil
	case elf.EM_RISCV:
		return []string{"riscv64"}, nil
	case elf.EM_ARM:
		return []string{"armv7l", "armv6l"}, nil
	}
	return nil, fmt.Errorf("agent binary %s is for %v, which the installer does not know", path, f.Machine)
}

// pid parses the PID a script printed.
func pid(s string) int {
	n, _ := strconv.Atoi(strings.TrimSpace(s))
	return n
}
