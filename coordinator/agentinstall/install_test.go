package agentinstall_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"debug/elf"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/fc-ci/fc/coordinator/cli"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

// installer runs "fc-coordinator agent install" in-process with a configuration
// that names the test's database, and a HOME of its own (no ~/.ssh, no ssh-agent).
type installer struct {
	t     *testing.T
	dbURL string
	home  string
	env   []string // more, e.g. SSH_AUTH_SOCK
}

func (in installer) run(args ...string) (stdout, stderr string, code int) {
	in.t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	code = cli.Main(ctx, cli.Env{Args: append([]string{"agent", "install"}, args...),
		Environ: append([]string{"FC_DATABASE__URL=" + in.dbURL, "HOME=" + in.home}, in.env...), Stdout: &out, Stderr: &errOut})
	in.t.Logf("agent install %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errOut.String())
	return out.String(), errOut.String(), code
}

func countAgents(t *testing.T, db *storage.DB) int64 {
	t.Helper()
	_, n, err := db.ListAgents(context.Background(), storage.Page{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func sha(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

var startedRE = regexp.MustCompile(`started the agent detached: PID (\d+)`)

func startedPID(t *testing.T, out string) string {
	t.Helper()
	m := startedRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no PID in the installer's output:\n%s", out)
	}
	return m[1]
}

// TestInstall_OverSSH installs an agent on a fresh host (a real sshd, a directory
// as its root) from a real coordinator's configuration: an unknown host key is
// refused, then accepted with its fingerprint printed; the agent connects and
// builds a step; a second install upgrades it in place; a changed host key is
// refused.
func TestInstall_OverSSH(t *testing.T) {
	url := storagetest.URL(t)
	db, err := storage.Open(context.Background(), storage.Config{URL: url, MaxConnections: 10}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	c := coordtest.Start(t, coordtest.Options{DB: db})
	host := startSSHD(t)
	t.Cleanup(func() { stopAgent(t, host.Root) })
	in := installer{t: t, dbURL: url, home: t.TempDir()}
	knownHosts := filepath.Join(t.TempDir(), "known_hosts")
	bin := coordtest.AgentBinary(t)
	args := []string{host.URL(), "--name", "ssh-builder", "--identity", host.ClientKey, "--known-hosts", knownHosts,
		"--agent-binary", bin, "--coordinator-url", c.URL, "--root", host.Root, "--no-service"}
	fp := ssh.FingerprintSHA256(host.HostKey)

	// An unknown host is refused, and nothing is registered.
	_, stderr, code := in.run(args...)
	if code != cli.ExitError || !strings.Contains(stderr, "--accept-new-host-key") || !strings.Contains(stderr, fp) {
		t.Fatalf("unknown host: exit %d, stderr %q; want a refusal naming --accept-new-host-key and %s", code, stderr, fp)
	}
	if n := countAgents(t, db); n != 0 {
		t.Fatalf("%d agents registered after the refusal", n)
	}

	// Accepted: the fingerprint is printed and recorded; the agent connects.
	out, _, code := in.run(append(args, "--accept-new-host-key")...)
	if code != cli.ExitOK {
		t.Fatalf("install: exit %d", code)
	}
	if !strings.Contains(out, "accepted new host key for [127.0.0.1]:") || !strings.Contains(out, fp) {
		t.Errorf("install output does not name the accepted key %s:\n%s", fp, out)
	}
	if b, _ := os.ReadFile(knownHosts); !bytes.Contains(b, bytes.TrimSpace(ssh.MarshalAuthorizedKey(host.HostKey))) {
		t.Errorf("known_hosts does not hold the host key: %q", b)
	}
	if !strings.Contains(out, "To make it permanent") {
		t.Errorf("--no-service did not say how to make the agent permanent:\n%s", out)
	}
	firstPID := startedPID(t, out)
	agent := connectedAgent(t, db, "ssh-builder")
	// The key was made on the host and stays there; the coordinator pinned its public half.
	keyFile := filepath.Join(host.Root, "var/lib/fc-agent/agent_key")
	if signer, err := ssh.ParsePrivateKey(mustRead(t, keyFile)); err != nil || ssh.FingerprintSHA256(signer.PublicKey()) != agent.Fingerprint {
		t.Errorf("the host's key %s is not the registered one (%s): %v", keyFile, agent.Fingerprint, err)
	}
	buildOn(t, c, "ssh-builder")

	// A rerun upgrades in place: a new binary, the same key and agent, a new process.
	newBin := filepath.Join(t.TempDir(), "fc-agent")
	if err := os.WriteFile(newBin, append(mustRead(t, bin), []byte("\nfc upgrade test "+time.Now().String())...), 0o755); err != nil {
		t.Fatal(err)
	}
	args[8] = newBin // --agent-binary
	out, _, code = in.run(args...)
	if code != cli.ExitOK || !strings.Contains(out, "upgrading it in place") {
		t.Fatalf("upgrade: exit %d:\n%s", code, out)
	}
	if sha(t, filepath.Join(host.Root, "usr/local/bin/fc-agent")) != sha(t, newBin) {
		t.Error("the installed binary is not the new one")
	}
	if secondPID := startedPID(t, out); secondPID == firstPID {
		t.Errorf("the upgraded agent runs as the same PID %s", firstPID)
	}
	upgraded := connectedAgent(t, db, "ssh-builder")
	if upgraded.ID != agent.ID || upgraded.Fingerprint != agent.Fingerprint {
		t.Errorf("after the upgrade: agent %d %s, want %d %s", upgraded.ID, upgraded.Fingerprint, agent.ID, agent.Fingerprint)
	}
	if n := countAgents(t, db); n != 1 {
		t.Errorf("%d agent records after the upgrade, want 1", n)
	}

	// The host's key changes (or someone is in between): refused, whatever the flag.
	forged := filepath.Join(t.TempDir(), "known_hosts")
	other := newPublicKey(t)
	line := knownhosts.Line([]string{knownhosts.Normalize(fmt.Sprintf("127.0.0.1:%d", host.Port))}, other) + "\n"
	if err := os.WriteFile(forged, []byte(line), 0o600); err != nil {
		t.Fatal(err)
	}
	args[6] = forged // --known-hosts
	for _, extra := range [][]string{nil, {"--accept-new-host-key"}} {
		_, stderr, code = in.run(append(args, extra...)...)
		if code != cli.ExitError || !strings.Contains(stderr, "HOST KEY MISMATCH") || !strings.Contains(stderr, fp) {
			t.Errorf("changed host key %v: exit %d, stderr %q; want a mismatch refusal", extra, code, stderr)
		}
	}
	if b := mustRead(t, forged); string(b) != line {
		t.Errorf("the mismatch changed known_hosts: %q", b)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newPublicKey(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// connectedAgent is the one agent registered as name, which must be connected.
func connectedAgent(t *testing.T, db *storage.DB, name string) storage.Agent {
	t.Helper()
	as, _, err := db.ListAgents(context.Background(), storage.Page{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		if a.Name == name {
			if !a.Connected {
				t.Fatalf("agent %s is not connected after the install", name)
			}
			return a
		}
	}
	t.Fatalf("no agent %s registered", name)
	return storage.Agent{}
}

// buildOn evaluates a one-derivation jobset and checks that agent built its step.
func buildOn(t *testing.T, c *coordtest.Coordinator, agent string) {
	t.Helper()
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf(`let
  %s
in { hello = mk "hello" { args = sh "echo built over ssh > $out"; }; }
`, coordtest.MkLet(coordtest.Salt(t)))})
	_, js := c.Project("ssh-install", repo.Dir, nil)
	c.Trigger(js, false)
	evalID := coordtest.Evaluated(t, c, js, 0)
	b := coordtest.WaitBuild(t, c, coordtest.BuildsOf(t, c, evalID)["hello"].ID, 2*time.Minute, "finished", coordtest.Build.Finished)
	b = coordtest.GetBuild(t, c, b.ID)
	if b.Status != "succeeded" || len(b.Steps) == 0 || b.Steps[0].Agent != agent {
		t.Fatalf("build %d: %s, steps %+v; want succeeded on %s", b.ID, b.Status, b.Steps, agent)
	}
}

// TestInstall_StagedUnitVerifies installs into a root as a service: the files are
// staged (nothing started), and systemd-analyze verify accepts the unit, whose
// ExecStart is the installed binary.
func TestInstall_StagedUnitVerifies(t *testing.T) {
	if _, err := os.Stat("/usr/bin/systemd-analyze"); err != nil {
		t.Fatalf("no /usr/bin/systemd-analyze (Debian's systemd package): %v", err)
	}
	url := storagetest.URL(t)
	host := startSSHD(t)
	in := installer{t: t, dbURL: url, home: t.TempDir()}
	out, _, code := in.run(host.URL(), "--name", "staged", "--identity", host.ClientKey, "--accept-new-host-key",
		"--known-hosts", filepath.Join(t.TempDir(), "known_hosts"), "--agent-binary", coordtest.AgentBinary(t),
		"--coordinator-url", "https://ci.example.org", "--root", host.Root)
	if code != cli.ExitOK || !strings.Contains(out, "nothing was enabled or started") || !strings.Contains(out, "systemctl link "+filepath.Join(host.Root, "etc/systemd/system/fc-agent.service")) {
		t.Fatalf("staged install: exit %d:\n%s", code, out)
	}
	unit := filepath.Join(host.Root, "etc/systemd/system/fc-agent.service")
	if !bytes.Contains(mustRead(t, unit), []byte("ExecStart="+filepath.Join(host.Root, "usr/local/bin/fc-agent")+" --config ")) {
		t.Errorf("unit's ExecStart is not the installed binary:\n%s", mustRead(t, unit))
	}
	res, err := exec.Command("/usr/bin/systemd-analyze", "verify", unit).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(res)) != 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unit, err, res)
	}
	conf := string(mustRead(t, filepath.Join(host.Root, "etc/fc/agent.toml")))
	for _, want := range []string{`url = "https://ci.example.org"`, `name = "staged"`, `state_dir = "` + filepath.Join(host.Root, "var/lib/fc-agent") + `"`} {
		if !strings.Contains(conf, want) {
			t.Errorf("agent.toml lacks %s:\n%s", want, conf)
		}
	}
}

// TestInstall_RefusesUnfitHosts: a host without Nix, and a binary for another
// architecture than the host's, are refused before anything is installed.
func TestInstall_RefusesUnfitHosts(t *testing.T) {
	host := hostWithoutNix(t)
	in := installer{t: t, dbURL: storagetest.URL(t), home: t.TempDir()}
	args := []string{host.URL(), "--identity", host.ClientKey, "--accept-new-host-key",
		"--known-hosts", filepath.Join(t.TempDir(), "known_hosts"), "--coordinator-url", "https://ci.example.org",
		"--root", host.Root, "--no-service"}
	_, stderr, code := in.run(append(args, "--agent-binary", coordtest.AgentBinary(t))...)
	if code != cli.ExitError || !strings.Contains(stderr, "nix-store --version failed on the host: install Nix there first") {
		t.Errorf("host without Nix: exit %d, stderr %q", code, stderr)
	}

	// The same binary, marked as built for another architecture (ELF e_machine at
	// offset 18).
	machine, hostArch, otherArch := elf.EM_AARCH64, "x86_64", "aarch64"
	if runtime.GOARCH == "arm64" {
		machine, hostArch, otherArch = elf.EM_X86_64, "aarch64", "x86_64"
	}
	other := filepath.Join(t.TempDir(), "fc-agent")
	b := mustRead(t, coordtest.AgentBinary(t))
	b[18], b[19] = byte(machine), byte(machine>>8)
	if err := os.WriteFile(other, b, 0o755); err != nil {
		t.Fatal(err)
	}
	_, stderr, code = in.run(append(args, "--agent-binary", other)...)
	if code != cli.ExitError || !strings.Contains(stderr, "the host is "+hostArch+" but "+other+" is built for "+otherArch) {
		t.Errorf("binary for another architecture: exit %d, stderr %q", code, stderr)
	}
	if entries, _ := os.ReadDir(host.Root); len(entries) != 0 {
		t.Errorf("the refused installs left files in the host's root: %v", entries)
	}
}

// TestInstall_Usage: a missing or malformed target is a usage error (exit 2) that
// says what is wrong, before any database or host is touched.
func TestInstall_Usage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"agent"}, "agent needs a command: install"},
		{[]string{"agent", "install"}, "needs one target, ssh://user@host[:port]"},
		{[]string{"agent", "install", "--name", "x"}, "needs one target"},
		{[]string{"agent", "install", "https://builder1"}, `target "https://builder1" is not ssh://user@host[:port]`},
		{[]string{"agent", "install", "ssh://root@builder1/srv"}, "is not ssh://user@host[:port]"},
		{[]string{"agent", "install", "ssh://root@builder1:99999"}, `port "99999" is not a port number`},
		{[]string{"agent", "install", "ssh://root:secret@builder1"}, "passwords are not accepted"},
		{[]string{"agent", "install", "ssh://a", "ssh://b"}, "needs one target"},
		{[]string{"agent", "install", "ssh://root@builder1", "--name", "<b>"}, `--name "<b>"`},
	} {
		var out, errOut bytes.Buffer
		code := cli.Main(context.Background(), cli.Env{Args: c.args, Stdout: &out, Stderr: &errOut})
		if code != cli.ExitUsage || !strings.Contains(errOut.String(), c.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", c.args, code, errOut.String(), cli.ExitUsage, c.want)
		}
	}
}

// TestInstall_AgentThatCannotConnect: an agent that does not reach the coordinator
// fails the install within --timeout, with the agent's log to say why.
func TestInstall_AgentThatCannotConnect(t *testing.T) {
	host := startSSHD(t)
	t.Cleanup(func() { stopAgent(t, host.Root) })
	in := installer{t: t, dbURL: storagetest.URL(t), home: t.TempDir()}
	closed := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	_, stderr, code := in.run(host.URL(), "--name", "lost", "--identity", host.ClientKey, "--accept-new-host-key",
		"--known-hosts", filepath.Join(t.TempDir(), "known_hosts"), "--agent-binary", coordtest.AgentBinary(t),
		"--coordinator-url", closed, "--root", host.Root, "--no-service", "--timeout", "3s")
	if code != cli.ExitError || !strings.Contains(stderr, "did not connect within 3s") ||
		!strings.Contains(stderr, "check that the host reaches "+closed) || !strings.Contains(stderr, "connection refused") {
		t.Errorf("agent that cannot connect: exit %d, stderr %q; want the timeout, the URL and the agent's log", code, stderr)
	}
}

// hostWithoutNix is a host whose sessions' PATH has only what the checks before
// Nix's need.
func hostWithoutNix(t *testing.T) *sshHost {
	t.Helper()
	bin := t.TempDir()
	for _, tool := range []string{"sh", "id", "uname"} {
		path, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(path, filepath.Join(bin, tool)); err != nil {
			t.Fatal(err)
		}
	}
	return startSSHD(t, "SetEnv PATH="+bin)
}

// TestInstall_LogsInWithSSHAgentOrHomeKeys: without --identity the installer logs
// in with ssh-agent's keys, or with ~/.ssh/id_ed25519, and says so when it has none
// (the host has no Nix: getting as far as that check proves the login).
func TestInstall_LogsInWithSSHAgentOrHomeKeys(t *testing.T) {
	host := hostWithoutNix(t)
	dbURL := storagetest.URL(t)
	args := []string{host.URL(), "--accept-new-host-key", "--known-hosts", filepath.Join(t.TempDir(), "known_hosts"),
		"--agent-binary", coordtest.AgentBinary(t), "--coordinator-url", "https://ci.example.org", "--root", host.Root, "--no-service"}
	const loggedIn = "nix-store --version failed on the host"

	_, stderr, _ := installer{t: t, dbURL: dbURL, home: t.TempDir()}.run(args...)
	if !strings.Contains(stderr, "no SSH key to log in with") {
		t.Errorf("no keys anywhere: stderr %q", stderr)
	}

	sock := filepath.Join(t.TempDir(), "agent.sock")
	agent := exec.Command("ssh-agent", "-D", "-a", sock)
	if err := agent.Start(); err != nil {
		t.Fatalf("ssh-agent (openssh-client): %v", err)
	}
	t.Cleanup(func() { _ = agent.Process.Kill(); _ = agent.Wait() })
	coordtest.Eventually(t, 10*time.Second, "ssh-agent listens", func() bool { _, err := os.Stat(sock); return err == nil })
	add := exec.Command("ssh-add", host.ClientKey)
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v\n%s", err, out)
	}
	_, stderr, _ = installer{t: t, dbURL: dbURL, home: t.TempDir(), env: []string{"SSH_AUTH_SOCK=" + sock}}.run(args...)
	if !strings.Contains(stderr, loggedIn) {
		t.Errorf("with ssh-agent: stderr %q, want %q", stderr, loggedIn)
	}

	home := t.TempDir()
	if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, ".ssh", "id_ed25519"), mustRead(t, host.ClientKey), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, _ = installer{t: t, dbURL: dbURL, home: home}.run(args...)
	if !strings.Contains(stderr, loggedIn) {
		t.Errorf("with ~/.ssh/id_ed25519: stderr %q, want %q", stderr, loggedIn)
	}
}
