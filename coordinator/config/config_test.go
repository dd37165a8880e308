package config

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/fc-ci/fc/internal/tomlenv"
)

// chdir changes the working directory of the whole test binary (Load reads
// ./coordinator.toml): the tests that use it stay serial, and the rest are too quick
// to gain from running in parallel.
func chdir(t *testing.T, dir string) {
	t.Helper()
	old, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chdir(old) })
}

func write(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestLoad_FileThenConfigFlagThenEnv(t *testing.T) {
	dir := t.TempDir()
	chdir(t, dir)
	write(t, FileName, "state_dir = \"/from-cwd\"\n[server]\nport = 1001\nhost = \"0.0.0.0\"\n[database]\nmax_connections = 7\n")
	flagFile := filepath.Join(dir, "flag.toml")
	write(t, flagFile, "[server]\nport = 1002\n[database]\nurl = \"postgres://flag/db\"\n")

	cfg, err := Load(flagFile, []string{"FC_SERVER__PORT=1003"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Server.Port != 1003 {
		t.Errorf("port %d: env must win over --config and ./coordinator.toml", cfg.Server.Port)
	}
	if cfg.Database.URL != "postgres://flag/db" || cfg.Server.Host != "0.0.0.0" || cfg.StateDir != "/from-cwd" || cfg.Database.MaxConnections != 7 {
		t.Errorf("file values lost: %+v", cfg)
	}
	if cfg.Server.RequestTimeout != Defaults().Server.RequestTimeout {
		t.Errorf("default request_timeout lost: %d", cfg.Server.RequestTimeout)
	}

	cfg, err = Load(flagFile, nil)
	if err != nil || cfg.Server.Port != 1002 {
		t.Errorf("--config must win over ./coordinator.toml: port %d, err %v", cfg.Server.Port, err)
	}
	cfg, err = Load("", nil)
	if err != nil || cfg.Server.Port != 1001 {
		t.Errorf("./coordinator.toml must win over defaults: port %d, err %v", cfg.Server.Port, err)
	}
	// FC_CONFIG_FILE names the file when --config is absent; --config wins when both are given.
	cfg, err = Load("", []string{"FC_CONFIG_FILE=" + flagFile})
	if err != nil || cfg.Server.Port != 1002 {
		t.Errorf("FC_CONFIG_FILE: port %d, err %v", cfg.Server.Port, err)
	}
	other := filepath.Join(dir, "other.toml")
	write(t, other, "[server]\nport = 1004\n")
	cfg, err = Load(other, []string{"FC_CONFIG_FILE=" + flagFile})
	if err != nil || cfg.Server.Port != 1004 {
		t.Errorf("--config over FC_CONFIG_FILE: port %d, err %v", cfg.Server.Port, err)
	}
}

func TestLoad_ErrorsNameKeyFileAndLine(t *testing.T) {
	dir := t.TempDir()
	chdir(t, dir)
	cases := []struct {
		name, body, env string
		want            []string
	}{
		{"unknown key", "[server]\nport = 3000\nhots = \"x\"\n", "", []string{"line 3", "server.hots", "bad.toml"}},
		{"wrong type", "[database]\n\nmax_connections = \"many\"\n", "", []string{"line 3", "database.max_connections", "bad.toml"}},
		{"unknown section", "[queue]\nworkers = 2\n", "", []string{"line 1", "queue", "bad.toml"}},
		{"malformed env value", "", "FC_SERVER__PORT=eighty", []string{"FC_SERVER__PORT", "eighty"}},
		{"nonsense value", "[server]\nport = 70000\n", "", []string{"server.port"}},
		{"relative allowed input path", "[evaluator]\nallowed_input_paths = [\"/srv/in\", \"inputs\"]\n", "",
			[]string{"evaluator.allowed_input_paths", `"inputs"`}},
		{"no header timeout", "[server]\nheader_timeout = 0\n", "", []string{"server.header_timeout"}},
		{"negative idle timeout", "", "FC_SERVER__IDLE_TIMEOUT=-1", []string{"server.idle_timeout"}},
		{"url and url_file", "[database]\nurl = \"postgres:///x\"\nurl_file = \"/run/keys/db\"\n", "", []string{"database.url_file", "database.url empty"}},
		{"relative url_file", "[database]\nurl_file = \"db-url\"\n", "", []string{"database.url_file", `"db-url"`, "absolute"}},
		{"trusted proxy that is no address", "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"proxy.example\"]\n", "",
			[]string{"server.trusted_proxies", `"proxy.example"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, "bad.toml")
			write(t, p, c.body)
			var env []string
			if c.env != "" {
				env = []string{c.env}
			}
			_, err := Load(p, env)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestLoad_EnvForAnotherProgramIsIgnored(t *testing.T) {
	chdir(t, t.TempDir())
	cfg, err := Load("", []string{"FC_AGENT__MAX_JOBS=4", "FC_COORDINATOR__URL=http://x", "FC_NOPE=1"})
	if err != nil {
		t.Fatalf("agent variables must be ignored by the coordinator: %v", err)
	}
	if !reflect.DeepEqual(cfg, Defaults()) {
		t.Errorf("config changed by foreign variables: %+v", cfg)
	}
}

// The example file at the repository root documents every key, commented out with
// its compiled default, and loading it changes nothing.
func TestExampleFileDocumentsEveryKeyWithItsDefault(t *testing.T) {
	example, err := os.ReadFile("../../coordinator.toml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg Config = Defaults()
	if err := tomlenv.DecodeFile(&cfg, "coordinator.toml", example); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg, Defaults()) {
		t.Errorf("coordinator.toml sets values; every key must be commented out")
	}
	// Uncomment every "# key = value" line: the result must load and equal the defaults.
	uncommented := regexp.MustCompile(`(?m)^# ([a-z_]+ = .*)$`).ReplaceAll(example, []byte("$1"))
	cfg = Config{}
	if err := tomlenv.DecodeFile(&cfg, "coordinator.toml (uncommented)", uncommented); err != nil {
		t.Fatal(err)
	}
	want := Defaults()
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("documented defaults differ from compiled ones:\n doc  %+v\n code %+v", cfg, want)
	}
	for _, name := range tomlenv.EnvNames(&want, "FC_") {
		key := strings.ToLower(name[strings.LastIndex(name, "_"+"_")+2:])
		if !strings.Contains(name, "__") {
			key = strings.ToLower(strings.TrimPrefix(name, "FC_"))
		}
		if !regexp.MustCompile(`(?m)^# ` + key + ` = `).Match(example) {
			t.Errorf("coordinator.toml does not document %s (env %s)", key, name)
		}
	}
}

func TestLoad_LocalAgentSection(t *testing.T) {
	chdir(t, t.TempDir())
	cfg, err := Load("", []string{"FC_STATE_DIR=/srv/fc", "FC_LOCAL_AGENT__ENABLED=true", "FC_LOCAL_AGENT__MAX_JOBS=2", "FC_LOCAL_AGENT__ROLES=build"})
	if err != nil {
		t.Fatal(err)
	}
	la := cfg.LocalAgent
	if !la.Enabled || la.MaxJobs != 2 || !reflect.DeepEqual(la.Roles, []string{"build"}) || la.Name != "local" || la.DrainTimeout != 10 {
		t.Errorf("local_agent = %+v", la)
	}
	if got := cfg.AgentStateDir(); got != "/srv/fc/local-agent" {
		t.Errorf("agent state dir %q, want state_dir/local-agent", got)
	}
	cfg.LocalAgent.StateDir = "/elsewhere"
	if got := cfg.AgentStateDir(); got != "/elsewhere" {
		t.Errorf("agent state dir %q, want the configured one", got)
	}
	if d := Defaults().LocalAgent; d.Enabled || !reflect.DeepEqual(d.Roles, []string{"build", "eval"}) {
		t.Errorf("default local_agent = %+v: must be off, with build and eval roles", d)
	}
	for _, bad := range [][]string{
		{"FC_LOCAL_AGENT__ENABLED=true", "FC_LOCAL_AGENT__ROLES=cook"},
		{"FC_LOCAL_AGENT__ENABLED=true", "FC_LOCAL_AGENT__MAX_JOBS=-1"},
		{"FC_LOCAL_AGENT__ENABLED=true", "FC_LOCAL_AGENT__NAME="},
		{"FC_LOCAL_AGENT__ENABLED=true", "FC_LOCAL_AGENT__NAME=<script>"},
		{"FC_LOCAL_AGENT__ENABLED=true", "FC_LOCAL_AGENT__NAME=" + strings.Repeat("l", 64)},
		{"FC_LOCAL_AGENT__ENABLED=true", "FC_LOCAL_AGENT__DRAIN_TIMEOUT=-1"},
	} {
		if _, err := Load("", bad); err == nil || !strings.Contains(err.Error(), "local_agent.") {
			t.Errorf("%v: error %v, want one naming the local_agent key", bad, err)
		}
	}
}

func TestLoad_NotificationsSection(t *testing.T) {
	chdir(t, t.TempDir())
	cfg, err := Load("", []string{"FC_NOTIFICATIONS__SMTP_HOST=mail.example.org", "FC_NOTIFICATIONS__FROM=FC <ci@example.org>",
		"FC_NOTIFICATIONS__USERNAME=ci", "FC_NOTIFICATIONS__PASSWORD_FILE=/run/secrets/smtp", "FC_NOTIFICATIONS__STARTTLS=false",
		"FC_NOTIFICATIONS__RUN_COMMAND=logger fc"})
	if err != nil {
		t.Fatal(err)
	}
	n := cfg.Notifications
	if n.SMTPHost != "mail.example.org" || n.SMTPPort != 587 || n.StartTLS || n.Username != "ci" ||
		n.PasswordFile != "/run/secrets/smtp" || n.RunCommand != "logger fc" || n.RunCommandTimeout != 60 {
		t.Errorf("notifications = %+v", n)
	}
	if d := Defaults().Notifications; !d.StartTLS || d.SMTPHost != "" || d.MaxAttempts < 1 {
		t.Errorf("default notifications = %+v: STARTTLS on, no server", d)
	}
	for _, c := range []struct{ env, key string }{
		{"FC_NOTIFICATIONS__SMTP_PORT=0", "notifications.smtp_port"},
		{"FC_NOTIFICATIONS__SMTP_PORT=70000", "notifications.smtp_port"},
		{"FC_NOTIFICATIONS__SMTP_HOST=mail.example.org:25", "notifications.smtp_host"},
		{"FC_NOTIFICATIONS__SMTP_HOST=mail.example.org", "notifications.from"},
		{"FC_NOTIFICATIONS__FROM=not an address", "notifications.from"},
		{"FC_NOTIFICATIONS__USERNAME=ci", "notifications.username"},
		{"FC_NOTIFICATIONS__PASSWORD_FILE=/run/secrets/smtp", "notifications.username"},
		{"FC_NOTIFICATIONS__RUN_COMMAND_TIMEOUT=0", "notifications.run_command_timeout"},
		{"FC_NOTIFICATIONS__RETRY_BACKOFF=0", "notifications.retry_backoff"},
		{"FC_NOTIFICATIONS__MAX_ATTEMPTS=0", "notifications.max_attempts"},
		{"FC_NOTIFICATIONS__KEEP_DAYS=0", "notifications.keep_days"},
	} {
		if _, err := Load("", []string{c.env}); err == nil || !strings.Contains(err.Error(), c.key) {
			t.Errorf("%s: error %v, want one naming %s", c.env, err, c.key)
		}
	}
	if _, err := Load("", []string{"FC_NOTIFICATIONS__USERNAME=ci", "FC_NOTIFICATIONS__PASSWORD_FILE=smtp"}); err == nil ||
		!strings.Contains(err.Error(), "notifications.password_file") {
		t.Errorf("a relative password_file: %v", err)
	}
}

// database.url_file keeps the URL's password out of the configuration: it is read when
// the database is opened (not when the configuration loads), trimmed, and an empty or
// missing file is an error naming the key.
func TestDatabaseURL_FromFile(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "db-url")
	write(t, f, "postgres://fc:s3cret@db.example/fc\n")
	c := Defaults()
	c.Database.URLFile = f
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if u, err := c.DatabaseURL(); err != nil || u != "postgres://fc:s3cret@db.example/fc" {
		t.Errorf("DatabaseURL() = %q, %v", u, err)
	}
	write(t, f, " \n")
	if _, err := c.DatabaseURL(); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Errorf("empty file: %v", err)
	}
	c.Database.URLFile = filepath.Join(dir, "absent")
	if _, err := c.DatabaseURL(); err == nil || !strings.Contains(err.Error(), "database.url_file") {
		t.Errorf("missing file: %v", err)
	}
}
