package declare_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/declare"
	"github.com/fc-ci/fc/coordinator/projectapi"
)

// TestParseJobsets: a repository's file is checked by the API's rules, may not
// declare what only an admin may set, and its errors name the line and key.
func TestParseJobsets(t *testing.T) {
	const head = "[[jobsets]]\nname = \"main\"\n\n[[jobsets]]\nname = \"other\"\n"
	for _, tc := range []struct {
		name, body, want string
	}{
		{"remote git input", head + `inputs = [{ name = "nixpkgs", type = "git", value = "https://example.org/nixpkgs.git main" }]`, ""},
		{"path input", head + `inputs = [{ name = "src", type = "path", value = "/srv/src" }]`, "line 4: jobsets[1].inputs"},
		{"path input anywhere", head + `inputs = [{ name = "src", type = "path", value = "/srv/src" }]`, "may not declare a path input"},
		{"local git input", head + `inputs = [{ name = "src", type = "git", value = "/srv/repo" }]`, "local repository"},
		{"file git input", head + `inputs = [{ name = "src", type = "git", value = "file:///srv/repo" }]`, "local repository"},
		{"twice", head + "\n[[jobsets]]\nname = \"main\"\n", `line 8: jobsets[2].name: "main" is declared twice`},
		{"bad branch", head + "branch = \"a..b\"\n", "line 6: jobsets[1].branch"},
		{"unknown key", head + "brunch = \"main\"\n", `line 6: unknown key "jobsets.brunch"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js, err := declare.ParseJobsets(".fc.toml at abc", []byte(tc.body), []string{"/srv"})
			switch {
			case tc.want == "" && (err != nil || len(js) != 2 || len(js[1].Inputs) != 1):
				t.Errorf("ParseJobsets: %+v %v, want two jobsets", js, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), ".fc.toml at abc")):
				t.Errorf("ParseJobsets: %v, want an error naming the file and %q", err, tc.want)
			}
		})
	}
}

// TestExampleProjectPassesTheAPIsRules: the project and jobset coordinator.toml shows
// (uncommented) pass the API's rules, as applying them checks.
func TestExampleProjectPassesTheAPIsRules(t *testing.T) {
	example, err := os.ReadFile("../../coordinator.toml")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(example), "# [[users]]")
	if !ok {
		t.Fatal("coordinator.toml has no declaration examples")
	}
	var b strings.Builder
	for _, l := range strings.Split("# [[users]]"+block, "\n") {
		b.WriteString(strings.TrimPrefix(strings.TrimPrefix(l, "#"), " ") + "\n")
	}
	path := filepath.Join(t.TempDir(), "example.toml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range cfg.Projects {
		if _, kerr := projectapi.ProjectFromDeclaration(p); kerr != nil {
			t.Errorf("project %s: %v", p.Name, kerr)
		}
		for _, js := range p.Jobsets {
			if _, kerr := projectapi.JobsetFromDeclaration(js, nil); kerr != nil {
				t.Errorf("jobset %s: %v", js.Name, kerr)
			}
		}
	}
}
