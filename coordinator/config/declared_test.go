package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const declaredExample = `log_level = "info"

[[users]]
username = "alice"
role = "admin"
password_file = "alice.pw"

[[api_keys]]
name = "deploy"
role = "eval-jobset"
key_file = "deploy.key"

[[agents]]
name = "builder-1"
public_key_file = "/etc/fc/builder-1.pub"
push = true

[[projects]]
name = "one"
repository_url = "https://example.org/one.git"

[[projects.jobsets]]
name = "main"

[[projects]]
name = "two"
repository_url = "https://example.org/two.git"
owner = "alice"

[[projects.jobsets]]
name = "main"
branch = "main"

[[projects.jobsets]]
name = "release"
flake_mode = false
nix_expression = "release.nix"
inputs = [{ name = "nixpkgs", type = "git", value = "https://example.org/nixpkgs.git" }]
`

func TestLoad_Declarations(t *testing.T) {
	dir := t.TempDir()
	chdir(t, t.TempDir())
	path := filepath.Join(dir, "fc.toml")
	write(t, path, declaredExample)
	cfg, err := Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Declarations
	if d.File != path {
		t.Errorf("File = %q, want %q", d.File, path)
	}
	if len(d.Projects) != 2 || len(d.Projects[1].Jobsets) != 2 || d.Projects[1].Owner != "alice" ||
		d.Projects[1].Jobsets[1].FlakeMode == nil || *d.Projects[1].Jobsets[1].FlakeMode ||
		len(d.Projects[1].Jobsets[1].Inputs) != 1 || d.Projects[1].Jobsets[1].Inputs[0].Type != "git" {
		t.Errorf("projects = %+v", d.Projects)
	}
	if len(d.Users) != 1 || len(d.APIKeys) != 1 || len(d.Agents) != 1 || !d.Agents[0].Push {
		t.Errorf("users %+v keys %+v agents %+v", d.Users, d.APIKeys, d.Agents)
	}
	if got := d.Path("deploy.key"); got != filepath.Join(dir, "deploy.key") {
		t.Errorf("Path(deploy.key) = %q: a relative file is the config file's directory's", got)
	}
	if got := d.Path("/etc/fc/builder-1.pub"); got != "/etc/fc/builder-1.pub" {
		t.Errorf("Path(absolute) = %q", got)
	}
}

// TestLoad_DeclarationErrorsNameKeyAndLine: a malformed entry names the file, its
// line and the key path with indexes.
func TestLoad_DeclarationErrorsNameKeyAndLine(t *testing.T) {
	cases := []struct {
		name, old, new, want string
	}{
		{"jobset state", `branch = "main"`, "branch = \"main\"\nstate = \"sometimes\"",
			`line 33: projects[1].jobsets[0].state: "sometimes" must be enabled`},
		{"jobset name", `name = "release"`, `name = "re lease"`, `line 35: projects[1].jobsets[1].name:`},
		{"input type", `type = "git"`, `type = "svn"`, `line 34: projects[1].jobsets[1].inputs[0].type: "svn"`},
		{"key hash and file", `key_file = "deploy.key"`, "key_file = \"deploy.key\"\nkey_hash = \"00\"",
			`line 8: api_keys[0]: give key_hash or key_file`},
		{"key hash", `key_file = "deploy.key"`, `key_hash = "abc"`, `line 11: api_keys[0].key_hash: must be a SHA-256`},
		{"password", `password_file = "alice.pw"`, ``, `line 3: users[0].password_file: required`},
		{"no repository", `repository_url = "https://example.org/one.git"`, ``, `line 18: projects[0].repository_url: required`},
		{"twice", `name = "two"`, `name = "one"`, `line 25: projects[1]: "one" is declared twice (also projects[0])`},
		{"agent key", `public_key_file = "/etc/fc/builder-1.pub"`, ``, `line 13: agents[0]: give public_key or public_key_file`},
		{"unknown key", `push = true`, `pushy = true`, `line 16: unknown key "agents.pushy"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			chdir(t, t.TempDir())
			path := filepath.Join(dir, "fc.toml")
			if !strings.Contains(declaredExample, tc.old) {
				t.Fatalf("example lacks %q", tc.old)
			}
			write(t, path, strings.Replace(declaredExample, tc.old, tc.new, 1))
			_, err := Load(path, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
				t.Errorf("Load: %v\nwant an error naming %s and containing %q", err, path, tc.want)
			}
		})
	}
}

// TestLoad_DeclarationsInOneFile: two files that both declare objects are refused
// (each object must name one file as where it is declared).
func TestLoad_DeclarationsInOneFile(t *testing.T) {
	dir := t.TempDir()
	chdir(t, dir)
	write(t, FileName, "[[users]]\nusername = \"a\"\nrole = \"admin\"\npassword_file = \"a.pw\"\n")
	other := filepath.Join(dir, "other.toml")
	write(t, other, "[[api_keys]]\nname = \"k\"\nrole = \"admin\"\nkey_file = \"k\"\n")
	if _, err := Load(other, nil); err == nil || !strings.Contains(err.Error(), "declare them in one file") {
		t.Errorf("Load: %v, want the two files refused", err)
	}
}

// TestExampleFileDeclarationsLoad: the commented declarations at the end of
// coordinator.toml, uncommented, are a valid configuration.
func TestExampleFileDeclarationsLoad(t *testing.T) {
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
		l = strings.TrimPrefix(l, "#")
		b.WriteString(strings.TrimPrefix(l, " ") + "\n")
	}
	dir := t.TempDir()
	chdir(t, t.TempDir())
	path := filepath.Join(dir, "example.toml")
	write(t, path, b.String())
	cfg, err := Load(path, nil)
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	d := cfg.Declarations
	if len(d.Users) != 1 || len(d.APIKeys) != 1 || len(d.Agents) != 1 || len(d.Projects) != 1 || len(d.Projects[0].Jobsets) != 1 {
		t.Errorf("example declarations = %+v", d)
	}
}
