// Package nixos_test evaluates FC's NixOS modules and flake with nixpkgs' real lib
// (lib.evalModules) and typed stand-ins for the NixOS options they set
// (nixos/test/options.nix), then checks what they generate: the units with
// systemd-analyze verify, the TOML with the real binaries' `config check`.
package nixos_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func newHarness(t *testing.T) harness {
	t.Helper()
	for _, tool := range []string{"nix-instantiate", "systemd-analyze", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed (nix-bin, systemd, Go; .ci/run installs them): %v", tool, err)
		}
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return harness{repo: repo, lib: nixpkgsLib(t, repo), root: fixture(t)}
}

// check is one realistic machine: what it imports and sets, and what must follow.
type check struct {
	name    string
	imports []string
	module  string
	// coordinator / agent: expected in `config check`'s output (empty: no such unit).
	coordinator, agent []string
	also               func(t *testing.T, s summary)
}

func TestModules_EveryCombinationEvaluatesVerifiesAndLoads(t *testing.T) {
	h := newHarness(t)
	urlFile := filepath.Join(t.TempDir(), "db-url")
	keyFile := filepath.Join(t.TempDir(), "cache-key.sec")
	for f, text := range map[string]string{urlFile: "postgres://fc:secret@db.example/fc\n", keyFile: "k:x\n"} {
		if err := os.WriteFile(f, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range slices.Concat(coordinatorChecks(h, urlFile, keyFile), featureChecks(h), agentChecks(h)) {
		t.Run(c.name, func(t *testing.T) { runCheck(t, h, c) })
	}
}

// runCheck evaluates one machine and checks it: no failed assertion or warning, units
// systemd-analyze accepts, TOML the daemons load (saying what c expects), then c.also.
func runCheck(t *testing.T, h harness, c check) {
	t.Helper()
	s, err := h.eval(t, c.imports, c.module)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.FailedAssertions) > 0 || len(s.Warnings) > 0 {
		t.Fatalf("assertions failed: %q; warnings: %q", s.FailedAssertions, s.Warnings)
	}
	if err := verify(t, s); err != nil {
		t.Error(err)
	}
	for binary, want := range map[string][]string{"fc-coordinator": c.coordinator, "fc-agent": c.agent} {
		u, ok := s.Units[binary]
		if ok != (want != nil) {
			t.Errorf("unit %s present: %v, expected: %v", binary, ok, want != nil)
			continue
		}
		if !ok {
			continue
		}
		out, err := h.configCheck(t, u, binary)
		if err != nil {
			t.Error(err)
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("%s config check says %q; want %q in it", binary, out, w)
			}
		}
	}
	if c.also != nil {
		c.also(t, s)
	}
}

// coordinatorChecks are coordinators alone with a local database, and with a URL file
// and directories elsewhere.
func coordinatorChecks(h harness, urlFile, keyFile string) []check {
	return []check{
		{
			name: "coordinator alone, local database", imports: []string{"coordinator"},
			module:      `{ services.fc-coordinator.enable = true; }`,
			coordinator: []string{"listening on 127.0.0.1:3000", "state in /var/lib/fc", "database: database.url"},
			also: func(t *testing.T, s summary) {
				u := s.Units["fc-coordinator"]
				wantList(t, "requires", u.Requires, "postgresql.service")
				wantList(t, "ReadWritePaths", list(u.ServiceConfig["ReadWritePaths"]), "/var/lib/fc", "/var/lib/fc/cache", "/var/lib/fc/logs")
				wantList(t, "trusted users", s.TrustedUsers, "root")
				if slices.Contains(s.TrustedUsers, "fc") {
					t.Errorf("fc is a trusted user without a local agent: %v", s.TrustedUsers)
				}
				wantHardened(t, u)
				if !u.RestartIfChanged || u.ServiceConfig["Type"] != "notify" {
					t.Errorf("coordinator: restartIfChanged %v, Type %v", u.RestartIfChanged, u.ServiceConfig["Type"])
				}
			},
		},
		{
			name: "database URL file, signing key, directories elsewhere, open firewall", imports: []string{"coordinator"},
			module: `{ services.fc-coordinator = { enable = true; database.createLocally = false;
			  database.urlFile = "` + urlFile + `"; cache.secretKeyFile = "` + keyFile + `"; openFirewall = true;
			  settings = { state_dir = "/srv/fc"; server.host = "0.0.0.0"; server.port = 80; logs.log_dir = "/var/log/fc"; }; }; }`,
			coordinator: []string{"listening on 0.0.0.0:80,", "state in /srv/fc", "cache in /srv/fc/cache", "logs in /var/log/fc",
				"database: the URL in /run/credentials/fc-coordinator.service/database-url"},
			also: func(t *testing.T, s summary) {
				u := s.Units["fc-coordinator"]
				wantList(t, "LoadCredential", list(u.ServiceConfig["LoadCredential"]), "database-url:"+urlFile, "cache-key:"+keyFile)
				wantList(t, "ReadWritePaths", list(u.ServiceConfig["ReadWritePaths"]), "/srv/fc", "/srv/fc/cache", "/var/log/fc")
				wantList(t, "tmpfiles", s.Tmpfiles, "d /srv/fc 0700 fc fc - -", "d /var/log/fc 0700 fc fc - -")
				if len(u.Requires) != 0 || string(s.Postgresql["enable"]) != "false" || !slices.Equal(s.TCPPorts, []int{80}) ||
					u.ServiceConfig["AmbientCapabilities"] != "CAP_NET_BIND_SERVICE" {
					t.Errorf("requires %v, postgresql %s, ports %v", u.Requires, s.Postgresql["enable"], s.TCPPorts)
				}
				toml := readConfig(t, u)
				for _, want := range []string{`secret_key_file = "/run/credentials/fc-coordinator.service/cache-key"`, `url = ""`} {
					if !strings.Contains(toml, want) {
						t.Errorf("coordinator.toml lacks %s:\n%s", want, toml)
					}
				}
				if strings.Contains(toml, "secret@") {
					t.Errorf("the database password reached the store:\n%s", toml)
				}
				// The admin command runs fc-coordinator with the service's configuration and
				// a private copy of the URL file.
				if len(s.Scripts) != 1 || s.Scripts[0].Name != "fc-coordinator-admin" {
					t.Fatalf("admin command: %+v", s.Scripts)
				}
				out, err := h.runScript(t, s.Scripts[0], "config", "check")
				if err != nil || !strings.Contains(out, "listening on 0.0.0.0:80,") || !strings.Contains(out, "/database-url") ||
					strings.Contains(out, "/run/credentials") {
					t.Errorf("fc-coordinator-admin config check: %v\n%s", err, out)
				}
			},
		},
	}
}

// featureChecks are coordinators with nginx, e-mail and a local agent.
func featureChecks(h harness) []check {
	return []check{
		{
			name: "behind nginx", imports: []string{"coordinator"},
			module: `{ services.fc-coordinator = { enable = true; nginx = { enable = true; virtualHost = "ci.example.org"; };
			  settings.server = { max_body_size = 52428800; public_url = "https://ci.example.org"; rate_limit_rps = 20.0; }; }; }`,
			coordinator: []string{"listening on 127.0.0.1:3000"},
			also: func(t *testing.T, s summary) {
				vh, ok := s.Nginx.VirtualHosts["ci.example.org"]
				if !s.Nginx.Enable || !ok {
					t.Fatalf("nginx: %+v", s.Nginx)
				}
				for _, loc := range []string{"/", "/api/v1/agent/connect", "~ ^/api/v1/builds/[0-9]+/log/stream$"} {
					l := vh.Locations[loc]
					if l.ProxyPass != "http://127.0.0.1:3000" || !l.ProxyWebsockets ||
						!strings.Contains(l.ExtraConfig, "client_max_body_size 52428800;") ||
						!strings.Contains(l.ExtraConfig, "X-Forwarded-For $proxy_add_x_forwarded_for") {
						t.Errorf("nginx location %s: %+v", loc, l)
					}
				}
				if !strings.Contains(vh.Locations["/api/v1/agent/connect"].ExtraConfig, "proxy_read_timeout 1h") {
					t.Errorf("agent sessions would be cut by nginx's 60 s read timeout")
				}
				toml := readConfig(t, s.Units["fc-coordinator"])
				if !strings.Contains(toml, `trusted_proxies = [ "127.0.0.1", "::1" ]`) {
					t.Errorf("the coordinator does not trust the proxy's X-Forwarded-For:\n%s", toml)
				}
			},
		},
		{
			name: "e-mail with its password as a credential", imports: []string{"coordinator"},
			module: `{ services.fc-coordinator = { enable = true;
			  credentials.smtp-password = "/run/keys/fc-smtp-password";
			  settings.notifications = { smtp_host = "smtp.example.org"; from = "FC <ci@example.org>"; username = "ci";
			    password_file = "/run/credentials/fc-coordinator.service/smtp-password"; }; }; }`,
			coordinator: []string{"listening on 127.0.0.1:3000"},
			also: func(t *testing.T, s summary) {
				wantList(t, "LoadCredential", list(s.Units["fc-coordinator"].ServiceConfig["LoadCredential"]), "smtp-password:/run/keys/fc-smtp-password")
			},
		},
		{
			// Declarations pass through settings as written; their secrets are credentials.
			name: "declared projects, API keys, agents and users", imports: []string{"coordinator"},
			module: `{ services.fc-coordinator = { enable = true;
			  credentials = { deploy-key = "/run/keys/fc-deploy-key"; alice-password = "/run/keys/fc-alice-password"; };
			  settings = {
			    users = [ { username = "alice"; role = "admin"; email = "alice@example.org";
			      password_file = "/run/credentials/fc-coordinator.service/alice-password"; } ];
			    api_keys = [ { name = "deploy"; role = "eval-jobset"; key_file = "/run/credentials/fc-coordinator.service/deploy-key"; } ];
			    agents = [ { name = "rack1"; public_key_file = "/etc/fc/agents/rack1.pub"; push = true; } ];
			    projects = [ { name = "examples"; repository_url = "https://example.org/fc-examples.git"; owner = "alice";
			      jobsets = [ { name = "main"; branch = "main"; nix_expression = "release.nix"; check_interval = 300;
			        inputs = [ { name = "salt"; type = "string"; value = ""; } ]; } ]; } ];
			  }; }; }`,
			coordinator: []string{"declares 1 projects (1 jobsets), 1 API keys, 1 agents, 1 users"},
			also: func(t *testing.T, s summary) {
				wantList(t, "LoadCredential", list(s.Units["fc-coordinator"].ServiceConfig["LoadCredential"]),
					"deploy-key:/run/keys/fc-deploy-key", "alice-password:/run/keys/fc-alice-password")
			},
		},
		{
			name: "local agent", imports: []string{"coordinator"},
			module:      `{ services.fc-coordinator = { enable = true; settings.local_agent = { enabled = true; max_jobs = 2; }; }; }`,
			coordinator: []string{"listening on 127.0.0.1:3000"},
			also: func(t *testing.T, s summary) {
				u := s.Units["fc-coordinator"]
				wantList(t, "path", u.Path, filepath.Join(h.root, "nix"), filepath.Join(h.root, "git"))
				wantList(t, "trusted users", s.TrustedUsers, "fc")
				wantList(t, "after", u.After, "nix-daemon.socket")
				wantList(t, "ReadWritePaths", list(u.ServiceConfig["ReadWritePaths"]), "/var/lib/fc/local-agent")
				if u.Environment["NIX_REMOTE"] != "daemon" {
					t.Errorf("the local agent does not use the nix-daemon: %v", u.Environment)
				}
			},
		},
	}
}

// agentChecks are builders: the agent alone, and with the coordinator through default.
func agentChecks(h harness) []check {
	return []check{
		{
			name: "agent alone, own state directory and token", imports: []string{"agent"},
			module: `{ services.fc-agent = { enable = true; settings.coordinator.url = "https://ci.example.org";
			  settings.agent = { state_dir = "/srv/fc-agent"; max_jobs = 4; features = [ "kvm" ]; };
			  enrollmentTokenFile = "/run/keys/fc-token"; drainTimeout = "30min"; }; }`,
			agent: []string{"coordinator https://ci.example.org", "state in /srv/fc-agent", "key /srv/fc-agent/agent_key"},
			also: func(t *testing.T, s summary) {
				u := s.Units["fc-agent"]
				wantHardened(t, u)
				wantList(t, "trusted users", s.TrustedUsers, "root", "fc-agent")
				wantList(t, "after", u.After, "nix-daemon.socket")
				wantList(t, "wants", u.Wants, "nix-daemon.socket")
				wantList(t, "ReadWritePaths", list(u.ServiceConfig["ReadWritePaths"]), "/srv/fc-agent")
				wantList(t, "tmpfiles", s.Tmpfiles, "d /srv/fc-agent 0700 fc-agent fc-agent - -")
				wantList(t, "LoadCredential", list(u.ServiceConfig["LoadCredential"]), "enrollment-token:/run/keys/fc-token")
				if u.Environment["NIX_REMOTE"] != "daemon" || u.ServiceConfig["User"] != "fc-agent" || u.RestartIfChanged ||
					u.ServiceConfig["TimeoutStopSec"] != "30min" || len(list(u.ServiceConfig["StateDirectory"])) != 0 {
					t.Errorf("agent unit: NIX_REMOTE %q, User %v, restartIfChanged %v, TimeoutStopSec %v, StateDirectory %v",
						u.Environment["NIX_REMOTE"], u.ServiceConfig["User"], u.RestartIfChanged, u.ServiceConfig["TimeoutStopSec"], u.ServiceConfig["StateDirectory"])
				}
				if u.Environment["FC_CONFIG_FILE"] != "/etc/fc-agent/agent.toml" || !slices.Equal(u.ReloadTriggers, []string{u.ConfigFile}) ||
					u.ServiceConfig["ExecReload"] != filepath.Join(h.root, "coreutils/bin/kill")+" -HUP $MAINPID" || fmtValue(u.ServiceConfig["WatchdogSec"]) != "60" {
					t.Errorf("agent reload: FC_CONFIG_FILE %q (%s), reloadTriggers %q, ExecReload %v, WatchdogSec %v", u.Environment["FC_CONFIG_FILE"],
						u.ConfigFile, u.ReloadTriggers, u.ServiceConfig["ExecReload"], u.ServiceConfig["WatchdogSec"])
				}
				toml := readConfig(t, u)
				if !strings.Contains(toml, `enrollment_token_file = "/run/credentials/fc-agent.service/enrollment-token"`) {
					t.Errorf("agent.toml does not read the token from the credential:\n%s", toml)
				}
			},
		},
		{
			name: "default with coordinator and agent imported again", imports: []string{"default", "coordinator", "agent"},
			module: `{ services.fc-coordinator.enable = true;
			  services.fc-agent = { enable = true; settings.coordinator.urls = [ "http://127.0.0.1:3000" "https://ci2.example.org" ]; }; }`,
			coordinator: []string{"listening on 127.0.0.1:3000"},
			agent:       []string{"coordinator http://127.0.0.1:3000 then https://ci2.example.org", "state in /var/lib/fc-agent"},
			also: func(t *testing.T, s summary) {
				wantList(t, "groups", s.Groups, "fc", "fc-agent")
			},
		},
	}
}

func wantHardened(t *testing.T, u unit) {
	t.Helper()
	want := map[string]string{"ProtectSystem": "strict", "ProtectHome": "true", "PrivateTmp": "true",
		"NoNewPrivileges": "true", "UMask": "0077", "Type": "notify", "SystemCallFilter": "[@system-service]",
		"RestrictAddressFamilies": "[AF_UNIX AF_INET AF_INET6]"}
	for k, v := range want {
		if got := fmtValue(u.ServiceConfig[k]); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
}

func fmtValue(v any) string {
	if l, ok := v.([]any); ok {
		parts := make([]string, len(l))
		for i, x := range l {
			parts[i] = fmtValue(x)
		}
		return "[" + strings.Join(parts, " ") + "]"
	}
	return fmt.Sprint(v)
}

func list(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, x := range l {
		out = append(out, fmt.Sprint(x))
	}
	return out
}

func wantList(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("%s %q lacks %q", what, got, w)
		}
	}
}

func readConfig(t *testing.T, u unit) string {
	t.Helper()
	b, err := os.ReadFile(u.ConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// readmeModules are the Nix blocks of the README's NixOS section: the modules an
// operator copies.
func readmeModules(t *testing.T, repo string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	start := strings.Index(text, "\n## NixOS\n")
	if start < 0 {
		t.Fatal("README.md has no NixOS section")
	}
	section := text[start+1:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	var blocks []string
	for _, part := range strings.Split(section, "```nix\n")[1:] {
		block, _, ok := strings.Cut(part, "```")
		if !ok {
			t.Fatalf("unterminated nix block in README.md: %s", part)
		}
		blocks = append(blocks, block)
	}
	return blocks
}

// The README's NixOS examples, as written, evaluate with no failed assertion, give
// units systemd-analyze accepts and TOML the daemons load.
func TestModules_READMEExamplesAsWritten(t *testing.T) {
	h := newHarness(t)
	blocks := readmeModules(t, h.repo)
	if len(blocks) < 4 {
		t.Fatalf("README.md's NixOS section has %d nix blocks, want the coordinator, builder, external database and declarations examples", len(blocks))
	}
	for i, block := range blocks {
		t.Run(fmt.Sprint("block ", i+1), func(t *testing.T) {
			s, err := h.eval(t, []string{"default"}, block)
			if err != nil {
				t.Fatalf("%v\nthe block:\n%s", err, block)
			}
			if len(s.FailedAssertions) > 0 || len(s.Units) == 0 {
				t.Fatalf("assertions failed: %q; units: %d\nthe block:\n%s", s.FailedAssertions, len(s.Units), block)
			}
			if err := verify(t, s); err != nil {
				t.Error(err)
			}
			for name, u := range s.Units {
				if _, err := h.configCheck(t, u, name); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

// Every option of both modules is documented; a default computed from the
// configuration is shown as the expression (defaultText), not as this evaluation's value.
func TestModules_OptionsAreDocumented(t *testing.T) {
	h := newHarness(t)
	var docs []struct {
		Name        string `json:"name"`
		Description string `json:"description"`
		Default     string `json:"default"`
		Example     bool   `json:"example"`
	}
	if err := h.nix(&docs, "--arg", "docs", "true"); err != nil {
		t.Fatal(err)
	}
	shown := map[string]string{
		"services.fc-coordinator.package":                         "fc.packages.${pkgs.stdenv.hostPlatform.system}.fc",
		"services.fc-agent.package":                               "fc.packages.${pkgs.stdenv.hostPlatform.system}.fc",
		"services.fc-coordinator.settings.database.url":           "if database.createLocally",
		"services.fc-coordinator.settings.server.trusted_proxies": "if nginx.enable",
	}
	seen := 0
	for _, o := range docs {
		if strings.TrimSpace(o.Description) == "" {
			t.Errorf("option %s has no description", o.Name)
		}
		if want, ok := shown[o.Name]; ok {
			seen++
			if !strings.HasPrefix(o.Default, want) {
				t.Errorf("option %s shows its default as %q, want %q…", o.Name, o.Default, want)
			}
		}
		if strings.HasSuffix(o.Name, "File") && !o.Example {
			t.Errorf("option %s has no example path", o.Name)
		}
	}
	if seen != len(shown) || len(docs) < 20 {
		t.Errorf("%d options listed, %d of the %d with computed defaults: %+v", len(docs), seen, len(shown), docs)
	}
}
