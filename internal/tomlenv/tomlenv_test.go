package tomlenv

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

type testSettings struct {
	StateDir string `toml:"state_dir"`
	Server   struct {
		Host  string   `toml:"host"`
		Port  int      `toml:"port"`
		Cors  bool     `toml:"cors_permissive"`
		Rate  float64  `toml:"rate_limit_rps"`
		Hosts []string `toml:"allowed_origins"`
	} `toml:"server"`
}

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoad_Precedence(t *testing.T) {
	cwd := writeFile(t, "coordinator.toml", "state_dir = \"/cwd\"\n[server]\nhost = \"cwd-host\"\nport = 1\n")
	flag := writeFile(t, "flag.toml", "[server]\nport = 2\nrate_limit_rps = 2.5\n")
	var s testSettings
	s.Server.Host = "default-host"
	s.Server.Port = 3000
	err := Load(&s, []Source{{Path: cwd, Optional: true}, {Path: flag}}, "FC_",
		[]string{"FC_SERVER__PORT=3", "FC_SERVER__ALLOWED_ORIGINS=a.example, b.example", "FC_UNKNOWN__THING=1", "HOME=/root"})
	if err != nil {
		t.Fatal(err)
	}
	if s.StateDir != "/cwd" || s.Server.Host != "cwd-host" {
		t.Errorf("file values not applied: %+v", s)
	}
	if s.Server.Port != 3 {
		t.Errorf("port = %d, want env value 3 to win over --config (2) and the cwd file (1)", s.Server.Port)
	}
	if s.Server.Rate != 2.5 {
		t.Errorf("rate = %v, want 2.5 from the --config file", s.Server.Rate)
	}
	if !reflect.DeepEqual(s.Server.Hosts, []string{"a.example", "b.example"}) {
		t.Errorf("allowed_origins = %q", s.Server.Hosts)
	}
}

func TestLoad_MissingOptionalFileIsSkippedButNamedFileIsRequired(t *testing.T) {
	var s testSettings
	missing := filepath.Join(t.TempDir(), "nope.toml")
	if err := Load(&s, []Source{{Path: missing, Optional: true}}, "FC_", nil); err != nil {
		t.Fatalf("optional missing file: %v", err)
	}
	err := Load(&s, []Source{{Path: missing}}, "FC_", nil)
	if err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("required missing file: err = %v, want it to name %s", err, missing)
	}
}

func TestDecodeFile_Errors(t *testing.T) {
	cases := []struct {
		name, body string
		want       []string
	}{
		{"unknown key in table", "[server]\nhost = \"x\"\n\nprot = 3\n", []string{"line 4", `"server.prot"`, "unknown key"}},
		{"unknown top-level key", "# comment\nstate_dirr = \"/x\"\n", []string{"line 2", `"state_dirr"`}},
		{"unknown table", "[servr]\nport = 1\n", []string{"line 1", `"servr"`}},
		{"wrong type", "[server]\nhost = \"x\"\nport = \"eighty\"\n", []string{"line 3", "server.port"}},
		{"syntax error", "[server\nport = 1\n", []string{"line 2", "end table name"}},
		// Caught by the configuration fuzz targets (tomlenvtest.Check): these named line 0.
		{"unknown key in an inline table", "state_dir = \"/x\"\nserver = { prot = 3 }\n", []string{"line 2", `"server.prot"`}},
		{"unknown quoted key with a dot", "# c\n\"state.dir\" = \"/x\"\n", []string{"line 2", `state.dir`}},
		{"unknown key in a quoted table", "[\"server\"]\nhost = \"x\"\n'prot' = 3\n", []string{"line 3", `"server.prot"`}},
		{"unknown array of tables", "\n[[servers]]\nport = 1\n", []string{"line 2", `"servers"`}},
		// NaN and infinities pass every "> 0" check of the settings that use them.
		{"nan", "[server]\nhost = \"x\"\nrate_limit_rps = nan\n", []string{"line 3", `"server.rate_limit_rps"`, "finite"}},
		{"infinity", "[server]\nrate_limit_rps = -inf\n", []string{"line 2", `"server.rate_limit_rps"`, "finite"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, "bad.toml", tc.body)
			var s testSettings
			err := Load(&s, []Source{{Path: p}}, "FC_", nil)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range append(tc.want, p) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestApplyEnv_MalformedValueNamesVariable(t *testing.T) {
	for _, kv := range []string{"FC_SERVER__PORT=abc", "FC_SERVER__CORS_PERMISSIVE=maybe", "FC_SERVER__RATE_LIMIT_RPS=fast",
		"FC_SERVER__RATE_LIMIT_RPS=NaN", "FC_SERVER__RATE_LIMIT_RPS=+Inf"} {
		var s testSettings
		err := ApplyEnv(&s, "FC_", []string{kv})
		name, _, _ := strings.Cut(kv, "=")
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: err = %v, want it to name the variable", kv, err)
		}
	}
}

func TestEnvNames(t *testing.T) {
	got := EnvNames(&testSettings{}, "FC_")
	want := []string{"FC_STATE_DIR", "FC_SERVER__HOST", "FC_SERVER__PORT", "FC_SERVER__CORS_PERMISSIVE", "FC_SERVER__RATE_LIMIT_RPS", "FC_SERVER__ALLOWED_ORIGINS"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("EnvNames = %q, want %q", got, want)
	}
}
