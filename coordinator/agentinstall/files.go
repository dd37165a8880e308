package agentinstall

import (
	"bytes"
	"fmt"
	"path"
	"regexp"
	"strings"

	"github.com/BurntSushi/toml"
)

// Paths are where the agent's files go on the host.
type Paths struct {
	Binary   string // /usr/local/bin/fc-agent
	Config   string // /etc/fc/agent.toml
	StateDir string // /var/lib/fc-agent
	Unit     string // /etc/systemd/system/fc-agent.service
	PIDFile  string // state_dir/fc-agent.pid (--no-service)
	LogFile  string // state_dir/fc-agent.log (--no-service)
}

// UnitName is the systemd unit the agent runs as.
const UnitName = "fc-agent.service"

// safePath is what a root may contain: the paths go into a unit file and a shell
// command unquoted by systemd's rules.
var safePath = regexp.MustCompile(`^/[A-Za-z0-9/._+-]*$`)

// PathsUnder are the default paths, each below root ("" or "/": the host's own root).
func PathsUnder(root string) (Paths, error) {
	if root == "" {
		root = "/"
	}
	if !safePath.MatchString(root) || strings.Contains(root, "/../") || strings.HasSuffix(root, "/..") {
		return Paths{}, fmt.Errorf("--root %q must be an absolute path of letters, digits and / . _ + -", root)
	}
	at := func(p string) string { return path.Join(root, p) }
	state := at("/var/lib/fc-agent")
	return Paths{Binary: at("/usr/local/bin/fc-agent"), Config: at("/etc/fc/agent.toml"), StateDir: state,
		Unit: at("/etc/systemd/system/" + UnitName), PIDFile: path.Join(state, "fc-agent.pid"),
		LogFile: path.Join(state, "fc-agent.log")}, nil
}

// agentTOML is the agent.toml the installer writes.
func agentTOML(coordinatorURL, name string, p Paths) ([]byte, error) {
	type coord struct {
		URL string `toml:"url"`
	}
	type agent struct {
		Name     string `toml:"name"`
		StateDir string `toml:"state_dir"`
	}
	var b bytes.Buffer
	b.WriteString("# Written by fc-coordinator agent install; a rerun rewrites it (keeping the one\n" +
		"# before as agent.toml.previous). Every key is described in the agent.toml of FC's\n" +
		"# source; the agent's key is state_dir/agent_key, registered with the coordinator.\n")
	err := toml.NewEncoder(&b).Encode(struct {
		Coordinator coord `toml:"coordinator"`
		Agent       agent `toml:"agent"`
	}{coord{coordinatorURL}, agent{name, p.StateDir}})
	if err != nil {
		return nil, fmt.Errorf("encode agent.toml: %w", err)
	}
	return b.Bytes(), nil
}

// unitFile is the systemd unit. Exit codes 3 and 4 (incompatible protocol, refused
// by the coordinator) are permanent: restarting would only repeat them.
func unitFile(p Paths) []byte {
	return fmt.Appendf(nil, `# Written by fc-coordinator agent install.
[Unit]
Description=FC build agent
Documentation=https://github.com/fc-ci/fc
Wants=network-online.target
After=network-online.target nix-daemon.socket nix-daemon.service

[Service]
# The agent says READY=1 once it is connected to the coordinator, and pings the
# watchdog; reaching the coordinator at boot may take long, so no start timeout.
Type=notify
NotifyAccess=main
TimeoutStartSec=infinity
WatchdogSec=2min
ExecStart=%s --config %s run
ExecReload=/bin/kill -HUP $MAINPID
WorkingDirectory=%s
Environment=PATH=/nix/var/nix/profiles/default/bin:/run/current-system/sw/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
Restart=on-failure
RestartSec=5s
RestartPreventExitStatus=3 4
# The first SIGTERM drains: running work finishes. Past this, it is cancelled and
# the coordinator gives the steps to other agents.
TimeoutStopSec=15min
KillMode=mixed
UMask=0077

[Install]
WantedBy=multi-user.target
`, p.Binary, p.Config, p.StateDir)
}

// startDetached starts the agent in a session of its own, its output appended to
// the log file, and records its PID (--no-service). setsid execs the agent, so $!
// is the agent's PID.
func startDetached(p Paths) string {
	return fmt.Sprintf(`set -e; cd %[1]s
setsid nohup %[2]s --config %[3]s run >>%[4]s 2>&1 </dev/null &
echo $! > %[5]s; cat %[5]s`,
		shQuote(p.StateDir), shQuote(p.Binary), shQuote(p.Config), shQuote(p.LogFile), shQuote(p.PIDFile))
}

// stopDetached stops the agent the PID file names, if it runs (and is this agent:
// its command line names this agent.toml): SIGTERM drains it, a second SIGTERM
// after drain seconds cancels its work, SIGKILL 30 s later. It prints the PID it
// stopped.
func stopDetached(p Paths, drainSeconds int) string {
	return fmt.Sprintf(`pid=$(cat %[1]s 2>/dev/null) || exit 0
running() { [ -r /proc/$pid/cmdline ] && tr '\0' ' ' </proc/$pid/cmdline | grep -qF -- %[2]s && ! grep -q '^State:.*Z' /proc/$pid/status; }
running || exit 0
kill -TERM "$pid"; n=0
while running; do
  n=$((n+1))
  [ $n -eq %[3]d ] && kill -TERM "$pid"
  [ $n -eq %[4]d ] && kill -KILL "$pid"
  sleep 1
done
rm -f %[1]s; echo "$pid"`, shQuote(p.PIDFile), shQuote(p.Config), drainSeconds, drainSeconds+30)
}

// permanentHint tells an operator of a host without systemd how to keep the agent
// running across reboots.
func permanentHint(p Paths) string {
	return fmt.Sprintf(`The agent runs detached (no service manager was used); it will not start again after a reboot.
To make it permanent, have the host's init start, as root:
  cd %[1]s && %[2]s --config %[3]s run >>%[4]s 2>&1
for example with a line in /etc/cron.d/fc-agent: @reboot root cd %[1]s && setsid %[2]s --config %[3]s run >>%[4]s 2>&1
or, on a host with systemd, rerun without --no-service (the unit is %[5]s).
`, p.StateDir, p.Binary, p.Config, p.LogFile, UnitName)
}
