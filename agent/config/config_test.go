package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/internal/tomlenv"
)

// These tests stay serial: Load reads ./agent.toml, so most of them change the working
// directory of the whole test binary (t.Chdir), and the rest are too quick to gain.

func write(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestLoad_FileThenConfigFlagThenEnv(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	write(t, FileName, "log_level = \"warn\"\n[coordinator]\nurl = \"http://cwd:1\"\n[agent]\nname = \"cwd\"\nmax_jobs = 1\nfeatures = [\"kvm\"]\n")
	flagFile := filepath.Join(dir, "flag.toml")
	write(t, flagFile, "[coordinator]\nurl = \"https://flag:2\"\n[agent]\nmax_jobs = 2\nroles = [\"build\"]\n")

	cfg, err := Load(flagFile, []string{"FC_AGENT__MAX_JOBS=3", "FC_AGENT__SYSTEMS=x86_64-linux, i686-linux"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Agent.MaxJobs != 3 {
		t.Errorf("max_jobs %d: env must win over --config and ./agent.toml", cfg.Agent.MaxJobs)
	}
	if !reflect.DeepEqual(cfg.Agent.Systems, []string{"x86_64-linux", "i686-linux"}) {
		t.Errorf("systems from a comma-separated variable: %q", cfg.Agent.Systems)
	}
	if cfg.Coordinator.URL != "https://flag:2" || cfg.Agent.Name != "cwd" || cfg.LogLevel != "warn" ||
		!reflect.DeepEqual(cfg.Agent.Features, []string{"kvm"}) || !reflect.DeepEqual(cfg.Agent.Roles, []string{"build"}) {
		t.Errorf("file values lost: %+v", cfg)
	}
	if cfg.Agent.StateDir != Defaults().Agent.StateDir || cfg.Agent.SpeedFactor != 1 {
		t.Errorf("defaults lost: %+v", cfg.Agent)
	}

	cfg, err = Load(flagFile, nil)
	if err != nil || cfg.Agent.MaxJobs != 2 {
		t.Errorf("--config must win over ./agent.toml: max_jobs %d, err %v", cfg.Agent.MaxJobs, err)
	}
	cfg, err = Load("", nil)
	if err != nil || cfg.Agent.MaxJobs != 1 || cfg.Coordinator.URL != "http://cwd:1" {
		t.Errorf("./agent.toml must win over defaults: %+v, err %v", cfg, err)
	}
	// FC_CONFIG_FILE names the file when --config is absent; --config wins when both are given.
	cfg, err = Load("", []string{"FC_CONFIG_FILE=" + flagFile})
	if err != nil || cfg.Agent.MaxJobs != 2 {
		t.Errorf("FC_CONFIG_FILE: max_jobs %d, err %v", cfg.Agent.MaxJobs, err)
	}
	other := filepath.Join(dir, "other.toml")
	write(t, other, "[agent]\nmax_jobs = 4\n")
	cfg, err = Load(other, []string{"FC_CONFIG_FILE=" + flagFile})
	if err != nil || cfg.Agent.MaxJobs != 4 {
		t.Errorf("--config over FC_CONFIG_FILE: max_jobs %d, err %v", cfg.Agent.MaxJobs, err)
	}
	// Naming ./agent.toml itself with --config reads it once, as the named file.
	cfg, err = Load(FileName, nil)
	if err != nil || cfg.Agent.MaxJobs != 1 {
		t.Errorf("--config ./agent.toml: max_jobs %d, err %v", cfg.Agent.MaxJobs, err)
	}
}

func TestLoad_CoordinatorURLs(t *testing.T) {
	t.Chdir(t.TempDir())
	cfg, err := Load("", nil)
	if err != nil || !reflect.DeepEqual(cfg.URLs(), []string{DefaultURL}) {
		t.Errorf("neither url nor urls: %q, err %v; want [%s]", cfg.URLs(), err, DefaultURL)
	}
	cfg, err = Load("", []string{"FC_COORDINATOR__URL=https://one:1"})
	if err != nil || !reflect.DeepEqual(cfg.URLs(), []string{"https://one:1"}) {
		t.Errorf("url alone: %q, err %v", cfg.URLs(), err)
	}
	cfg, err = Load("", []string{"FC_COORDINATOR__URLS=http://a:1, https://b:2/fc ,http://c:3"})
	if want := []string{"http://a:1", "https://b:2/fc", "http://c:3"}; err != nil || !reflect.DeepEqual(cfg.URLs(), want) {
		t.Errorf("urls from a comma-separated variable: %q, err %v; want %q", cfg.URLs(), err, want)
	}
	file := filepath.Join(t.TempDir(), "agent.toml")
	write(t, file, "[coordinator]\nurls = [\"http://a:1\", \"http://b:2\"]\n")
	cfg, err = Load(file, nil)
	if want := []string{"http://a:1", "http://b:2"}; err != nil || !reflect.DeepEqual(cfg.URLs(), want) {
		t.Errorf("urls from TOML: %q, err %v; want %q", cfg.URLs(), err, want)
	}
	// The environment replaces the file's list rather than adding to it.
	cfg, err = Load(file, []string{"FC_COORDINATOR__URLS=http://c:3"})
	if err != nil || !reflect.DeepEqual(cfg.URLs(), []string{"http://c:3"}) {
		t.Errorf("urls from the environment over the file: %q, err %v", cfg.URLs(), err)
	}
	// An empty variable clears the file's list: url alone is then the coordinator.
	cfg, err = Load(file, []string{"FC_COORDINATOR__URLS=", "FC_COORDINATOR__URL=http://d:4"})
	if err != nil || !reflect.DeepEqual(cfg.URLs(), []string{"http://d:4"}) {
		t.Errorf("urls cleared, url set: %q, err %v", cfg.URLs(), err)
	}
}

func TestLoad_NoFilesGivesTheDefaults(t *testing.T) {
	t.Chdir(t.TempDir())
	cfg, err := Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg, Defaults()) {
		t.Errorf("config without files or variables:\n got  %+v\n want %+v", cfg, Defaults())
	}
}

func TestLoad_NamedFileMustExist(t *testing.T) {
	t.Chdir(t.TempDir())
	missing := filepath.Join(t.TempDir(), "absent.toml")
	for _, tc := range []struct {
		flag string
		env  []string
	}{{missing, nil}, {"", []string{"FC_CONFIG_FILE=" + missing}}} {
		if _, err := Load(tc.flag, tc.env); err == nil || !strings.Contains(err.Error(), missing) {
			t.Errorf("missing named file (flag %q, env %q): err = %v, want it to name the file", tc.flag, tc.env, err)
		}
	}
}

func TestLoad_CoordinatorVariablesAreIgnored(t *testing.T) {
	t.Chdir(t.TempDir())
	cfg, err := Load("", []string{"FC_SERVER__PORT=4000", "FC_DATABASE__URL=postgres://x/y", "FC_STATE_DIR=/var/lib/fc",
		"FC_SERVER__AGENT_HEARTBEAT=zzz", "FC_NOPE=1", "HOME=/root"})
	if err != nil {
		t.Fatalf("coordinator variables must be ignored by the agent: %v", err)
	}
	if !reflect.DeepEqual(cfg, Defaults()) {
		t.Errorf("config changed by the coordinator's variables: %+v", cfg)
	}
}

func TestLoad_ErrorsNameTheSettingFileAndLine(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	cases := []struct {
		name, body, env string
		want            []string
	}{
		{"unknown key", "[agent]\nname = \"x\"\nmax_jobz = 3\n", "", []string{"line 3", "agent.max_jobz", "bad.toml"}},
		{"unknown section", "[builder]\nname = \"x\"\n", "", []string{"line 1", "builder", "bad.toml"}},
		{"coordinator key in agent file", "[server]\nport = 3000\n", "", []string{"line 1", "server", "bad.toml"}},
		{"wrong type", "[agent]\n\nmax_jobs = \"four\"\n", "", []string{"line 3", "agent.max_jobs", "bad.toml"}},
		{"malformed env integer", "", "FC_AGENT__MAX_JOBS=abc", []string{"FC_AGENT__MAX_JOBS", "abc"}},
		{"malformed env float", "", "FC_AGENT__SPEED_FACTOR=fast", []string{"FC_AGENT__SPEED_FACTOR", "fast"}},
		{"url scheme", "", "FC_COORDINATOR__URL=ftp://ci.example.org", []string{"coordinator.url", "ftp://ci.example.org"}},
		{"url websocket scheme", "[coordinator]\nurl = \"wss://ci.example.org\"\n", "", []string{"coordinator.url", "http"}},
		{"url without scheme", "", "FC_COORDINATOR__URL=ci.example.org:3000", []string{"coordinator.url"}},
		{"url without host", "", "FC_COORDINATOR__URL=http://", []string{"coordinator.url"}},
		{"url and urls", "[coordinator]\nurl = \"http://a:1\"\n", "FC_COORDINATOR__URLS=http://b:1", []string{"coordinator.url", "coordinator.urls", "http://a:1", "both"}},
		{"urls scheme", "[coordinator]\nurls = [\"http://a:1\", \"ftp://b:1\"]\n", "", []string{"coordinator.urls", "ftp://b:1"}},
		{"urls without host", "", "FC_COORDINATOR__URLS=http://a:1,https://", []string{"coordinator.urls", "https://"}},
		{"urls twice", "", "FC_COORDINATOR__URLS=http://a:1,http://a:1/", []string{"coordinator.urls", "twice"}},
		{"urls wrong type", "[coordinator]\nurls = \"http://a:1\"\n", "", []string{"line 2", "coordinator.urls", "bad.toml"}},
		{"speed_factor 0", "[agent]\nspeed_factor = 0.0\n", "", []string{"agent.speed_factor"}},
		{"speed_factor negative", "", "FC_AGENT__SPEED_FACTOR=-1", []string{"agent.speed_factor"}},
		{"max_jobs negative", "", "FC_AGENT__MAX_JOBS=-2", []string{"agent.max_jobs"}},
		{"unknown role", "[agent]\nroles = [\"build\", \"deploy\"]\n", "", []string{"agent.roles", `"deploy"`}},
		{"no roles", "[agent]\nroles = []\n", "", []string{"agent.roles"}},
		{"no roles by env", "", "FC_AGENT__ROLES=", []string{"agent.roles"}},
		{"empty state_dir", "", "FC_AGENT__STATE_DIR=", []string{"agent.state_dir"}},
		{"min_free_disk negative", "[agent]\nmin_free_disk = -1\n", "", []string{"agent.min_free_disk"}},
		{"gc_interval negative", "", "FC_AGENT__GC_INTERVAL=-5", []string{"agent.gc_interval"}},
		{"name with markup", "[agent]\nname = \"<script>\"\n", "", []string{"agent.name", `"<script>"`}},
		{"name with a newline", "[agent]\nname = \"a\\nb\"\n", "", []string{"agent.name", `"a\nb"`}},
		{"name too long", "", "FC_AGENT__NAME=" + strings.Repeat("a", 64), []string{"agent.name", "at most 63"}},
		{"name starting with a digit", "", "FC_AGENT__NAME=1builder", []string{"agent.name", `"1builder"`}},
		{"relative allowed input path", "[agent]\nallowed_input_paths = [\"/srv/in\", \"srv/in\"]\n", "", []string{"agent.allowed_input_paths", `"srv/in"`}},
		{"gc_interval as a duration string", "[agent]\ngc_interval = \"1h\"\n", "", []string{"agent.gc_interval", "line 2"}},
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

// The example file at the repository root documents every key, commented out with
// its compiled default, and loading it changes nothing.
func TestExampleFileDocumentsEveryKeyWithItsDefault(t *testing.T) {
	example, err := os.ReadFile("../../agent.toml")
	if err != nil {
		t.Fatal(err)
	}
	var cfg Config = Defaults()
	if err := tomlenv.DecodeFile(&cfg, "agent.toml", example); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg, Defaults()) {
		t.Errorf("agent.toml sets values; every key must be commented out")
	}
	// Uncomment every "# key = value" line: the result must load and equal the defaults.
	uncommented := regexp.MustCompile(`(?m)^# ([a-z_]+ = .*)$`).ReplaceAll(example, []byte("$1"))
	cfg = Config{}
	if err := tomlenv.DecodeFile(&cfg, "agent.toml (uncommented)", uncommented); err != nil {
		t.Fatal(err)
	}
	want := Defaults()
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("documented defaults differ from compiled ones:\n doc  %+v\n code %+v", cfg, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("the documented defaults do not validate: %v", err)
	}
	// Every setting is documented in its own table: "section.key" for FC_SECTION__KEY.
	documented := map[string]bool{}
	section := ""
	for _, line := range strings.Split(string(example), "\n") {
		if m := regexp.MustCompile(`^\[([a-z_]+)\]`).FindStringSubmatch(line); m != nil {
			section = m[1] + "."
		} else if m := regexp.MustCompile(`^# ([a-z_]+) = `).FindStringSubmatch(line); m != nil {
			documented[section+m[1]] = true
		}
	}
	for _, name := range tomlenv.EnvNames(&want, "FC_") {
		key := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(name, "FC_"), "__", "."))
		if !documented[key] {
			t.Errorf("agent.toml does not document %s (env %s)", key, name)
		}
	}
}

func TestEnrollmentToken_FromSettingOrTrimmedFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "token")
	write(t, file, "  fcagent_from_file \n\n")

	c := Defaults()
	if tok, err := c.EnrollmentToken(); err != nil || tok != "" {
		t.Errorf("no token configured: %q, %v", tok, err)
	}
	c.Coordinator.EnrollmentTokenFile = file
	if tok, err := c.EnrollmentToken(); err != nil || tok != "fcagent_from_file" {
		t.Errorf("token from file: %q, %v; want it trimmed", tok, err)
	}
	c.Coordinator.EnrollmentToken = "fcagent_setting"
	if tok, err := c.EnrollmentToken(); err != nil || tok != "fcagent_setting" {
		t.Errorf("enrollment_token must win over the file: %q, %v", tok, err)
	}
	c = Defaults()
	c.Coordinator.EnrollmentTokenFile = filepath.Join(dir, "absent")
	if _, err := c.EnrollmentToken(); err == nil || !strings.Contains(err.Error(), "enrollment_token_file") {
		t.Errorf("missing token file: err = %v, want it to name enrollment_token_file", err)
	}
}

func TestEnrollmentToken_FileNamedByEnvironment(t *testing.T) {
	t.Chdir(t.TempDir())
	file := filepath.Join(t.TempDir(), "token")
	write(t, file, "fcagent_abc\n")
	cfg, err := Load("", []string{"FC_COORDINATOR__ENROLLMENT_TOKEN_FILE=" + file})
	if err != nil {
		t.Fatal(err)
	}
	if tok, err := cfg.EnrollmentToken(); err != nil || tok != "fcagent_abc" {
		t.Errorf("token %q, %v", tok, err)
	}
}

func TestKeyPathNameAndMaxJobs_Defaults(t *testing.T) {
	c := Defaults()
	if got := c.KeyPath(); got != "/var/lib/fc-agent/agent_key" {
		t.Errorf("default KeyPath %q", got)
	}
	c.Agent.StateDir = "/srv/agent"
	if got := c.KeyPath(); got != "/srv/agent/agent_key" {
		t.Errorf("KeyPath under state_dir %q", got)
	}
	c.Agent.KeyFile = "/etc/fc/key"
	if got := c.KeyPath(); got != "/etc/fc/key" {
		t.Errorf("key_file must win: %q", got)
	}

	if got := c.MaxJobs(); got != runtime.NumCPU() {
		t.Errorf("MaxJobs with max_jobs 0 = %d, want one per core (%d)", got, runtime.NumCPU())
	}
	c.Agent.MaxJobs = 7
	if got := c.MaxJobs(); got != 7 {
		t.Errorf("MaxJobs = %d, want 7", got)
	}

	c.Agent.Name = "builder-7"
	if got := c.Name(); got != "builder-7" {
		t.Errorf("Name = %q", got)
	}
	c.Agent.Name = ""
	host, _ := os.Hostname()
	if got := c.Name(); got == "" || strings.Contains(got, ".") || !strings.HasPrefix(host, got) {
		t.Errorf("Name without a setting = %q, want the short host name of %q", got, host)
	}
}

func TestLoad_DiskMinimumAndGCInterval(t *testing.T) {
	t.Chdir(t.TempDir())
	cfg, err := Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Agent.MinFreeDisk != 0 || cfg.GCEvery() != 0 {
		t.Errorf("defaults: min_free_disk %d, gc every %v; want both off", cfg.Agent.MinFreeDisk, cfg.GCEvery())
	}
	write(t, FileName, "[agent]\nmin_free_disk = 10737418240\ngc_interval = 3600\n")
	cfg, err = Load("", []string{"FC_AGENT__GC_INTERVAL=600"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Agent.MinFreeDisk != 10<<30 || cfg.GCEvery() != 10*time.Minute {
		t.Errorf("min_free_disk %d, gc every %v", cfg.Agent.MinFreeDisk, cfg.GCEvery())
	}
}

func TestStepSlots_DefaultIsSixteenTimesMaxJobsAndNegativeIsRejected(t *testing.T) {
	cfg := Defaults()
	cfg.Agent.MaxJobs = 3
	if got := cfg.StepSlots(); got != 48 {
		t.Errorf("step slots %d, want 48 (16 × max_jobs)", got)
	}
	cfg.Agent.StepSlots = 5
	if got := cfg.StepSlots(); got != 5 {
		t.Errorf("step slots %d, want 5", got)
	}
	cfg.Agent.StepSlots = -1
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "step_slots") {
		t.Errorf("negative step_slots: %v", err)
	}
}

func TestEvalStoreParentAndName(t *testing.T) {
	cfg := Defaults()
	cfg.Agent.EvalStore = "system"
	if dir, auto := cfg.EvalStoreParent(); dir != "" || auto {
		t.Errorf("system: %q %v", dir, auto)
	}
	cfg.Agent.EvalStore = "/srv/fc-eval"
	if dir, auto := cfg.EvalStoreParent(); dir != "/srv/fc-eval" || auto {
		t.Errorf("a directory: %q %v", dir, auto)
	}
	cfg.Agent.EvalStore = "auto"
	dir, auto := cfg.EvalStoreParent()
	if !auto || (dir != "" && dir != fmt.Sprintf("/dev/shm/fc-agent-%d", os.Getuid())) {
		t.Errorf("auto: %q %v", dir, auto)
	}
	cfg.Agent.EvalStoreMaxSize = 1 << 60 // no /dev/shm has room for that
	if dir, _ := cfg.EvalStoreParent(); dir != "" {
		t.Errorf("auto without room in /dev/shm: %q, want Nix's own store", dir)
	}
	for _, bad := range []string{"", "relative/dir", "sometimes"} {
		cfg := Defaults()
		cfg.Agent.EvalStore = bad
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "agent.eval_store") {
			t.Errorf("eval_store %q: %v", bad, err)
		}
	}
	a, b := Defaults(), Defaults()
	a.Agent.StateDir, b.Agent.StateDir = "/var/lib/a", "/var/lib/b"
	if a.EvalStoreName() == b.EvalStoreName() || a.EvalStoreName() != a.EvalStoreName() || !strings.HasPrefix(a.EvalStoreName(), "eval-") {
		t.Errorf("names: %q %q", a.EvalStoreName(), b.EvalStoreName())
	}
}
