package config

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/fc-ci/fc/internal/tomlenv"
	"github.com/fc-ci/fc/protocol"
)

// Declarations are the objects the configuration declares ([[projects]],
// [[api_keys]], [[agents]], [[users]]): applied to the database at start and on
// SIGHUP (coordinator/declare). Secrets come from files, never from the TOML.
type Declarations struct {
	Projects []DeclaredProject `toml:"projects"`
	APIKeys  []DeclaredAPIKey  `toml:"api_keys"`
	Agents   []DeclaredAgent   `toml:"agents"`
	Users    []DeclaredUser    `toml:"users"`
	// File is the absolute path of the file that declares them ("" when none does),
	// set by Load; data is its text, for the line numbers of errors.
	File string `toml:"-"`
	data []byte
}

// Empty says whether nothing is declared.
func (d Declarations) Empty() bool {
	return len(d.Projects) == 0 && len(d.APIKeys) == 0 && len(d.Agents) == 0 && len(d.Users) == 0
}

// DeclaredProject is a [[projects]] entry: the fields the API takes (no secrets).
type DeclaredProject struct {
	Name          string `toml:"name"`
	DisplayName   string `toml:"display_name"`
	Description   string `toml:"description"`
	RepositoryURL string `toml:"repository_url"`
	Enabled       *bool  `toml:"enabled"` // default true
	// Owner is the username of the account that owns the project ("": none; admins
	// manage it).
	Owner string `toml:"owner"`
	// DeclarativeFile is a file in the repository declaring more jobsets (.fc.toml),
	// read from DeclarativeBranch (default: the repository's default branch).
	DeclarativeFile   string           `toml:"declarative_file"`
	DeclarativeBranch string           `toml:"declarative_branch"`
	Jobsets           []DeclaredJobset `toml:"jobsets"`
}

// DeclaredJobset is a [[projects.jobsets]] entry (and a [[jobsets]] entry of a
// repository's .fc.toml). Unset fields take the API's defaults.
type DeclaredJobset struct {
	Name             string          `toml:"name" json:"name"`
	Description      string          `toml:"description" json:"description"`
	Branch           string          `toml:"branch" json:"branch"`
	FlakeMode        *bool           `toml:"flake_mode" json:"flake_mode"`
	NixExpression    string          `toml:"nix_expression" json:"nix_expression"`
	Inputs           []DeclaredInput `toml:"inputs" json:"inputs"`
	CheckInterval    *int            `toml:"check_interval" json:"check_interval"`
	State            string          `toml:"state" json:"state"`
	KeepNr           *int            `toml:"keep_nr" json:"keep_nr"`
	SchedulingShares *int            `toml:"scheduling_shares" json:"scheduling_shares"`
	// PullRequests gives each open pull request to Branch a jobset of its own (the
	// project needs a forge); PullRequestDrafts includes drafts.
	PullRequests      *bool `toml:"pull_requests" json:"pull_requests"`
	PullRequestDrafts *bool `toml:"pull_request_drafts" json:"pull_request_drafts"`
}

// DeclaredInput is one jobset input: type string, boolean, git or path.
type DeclaredInput struct {
	Name  string `toml:"name" json:"name"`
	Type  string `toml:"type" json:"type"`
	Value string `toml:"value" json:"value"`
}

// DeclaredAPIKey is an [[api_keys]] entry: KeyHash (the SHA-256 of the key, hex, as
// sha256sum prints it) or KeyFile (a file holding the key itself).
type DeclaredAPIKey struct {
	Name    string `toml:"name"`
	Role    string `toml:"role"`
	KeyHash string `toml:"key_hash"`
	KeyFile string `toml:"key_file"`
}

// DeclaredAgent is an [[agents]] entry: an agent's public key (an ssh-ed25519
// authorized_keys line), inline or in a file, pinned as if an admin registered it.
type DeclaredAgent struct {
	Name          string `toml:"name"`
	PublicKey     string `toml:"public_key"`
	PublicKeyFile string `toml:"public_key_file"`
	Push          bool   `toml:"push"`
}

// DeclaredUser is a [[users]] entry; PasswordFile holds the password.
type DeclaredUser struct {
	Username     string `toml:"username"`
	Role         string `toml:"role"`
	Email        string `toml:"email"`
	FullName     string `toml:"full_name"`
	PasswordFile string `toml:"password_file"`
}

// findDeclarations sets d.File and d.data to the one file among files that declares
// anything (none: the last file read); declarations spread over two files are an
// error.
func findDeclarations(d *Declarations, files []tomlenv.Source) error {
	var last string
	for _, f := range files {
		data, err := os.ReadFile(f.Path)
		if err != nil {
			continue // tomlenv.Load has said what was wrong with it
		}
		abs, err := filepath.Abs(f.Path)
		if err != nil {
			return fmt.Errorf("config %s: %w", f.Path, err)
		}
		last = abs
		var only Declarations
		if _, err := toml.Decode(string(data), &only); err != nil || only.Empty() {
			continue
		}
		if d.File != "" {
			return fmt.Errorf("config %s and %s both declare projects, api_keys, agents or users: declare them in one file", d.File, abs)
		}
		d.File, d.data = abs, data
	}
	if d.File == "" {
		// Declaring nothing in the last file read undoes what it declared before.
		d.File = last
	}
	return nil
}

// KeyError is an error about the declared key path (projects[2].jobsets[0].branch),
// naming the file and, when it can be found, the line.
func (d Declarations) KeyError(path, format string, args ...any) error {
	return fmt.Errorf("config %w", KeyErrorIn(d.File, d.data, path, fmt.Sprintf(format, args...)))
}

// KeyErrorIn is an error about the key path (jobsets[1].branch) of the TOML document
// data read from file: "FILE line N: PATH: MSG" (without the line when it cannot be
// found).
func KeyErrorIn(file string, data []byte, path, msg string) error {
	where := file
	if n := declLine(data, path); n > 0 {
		where += " line " + strconv.Itoa(n)
	}
	return fmt.Errorf("%s: %s: %s", where, path, msg)
}

// Path resolves a file a declaration names, relative to the declaring file's directory.
func (d Declarations) Path(p string) string {
	if filepath.IsAbs(p) || d.File == "" {
		return p
	}
	return filepath.Join(filepath.Dir(d.File), p)
}

// validate checks what can be checked without reading files or the database.
func (d Declarations) validate() error {
	seen := map[string]string{}
	unique := func(kind, name, path string) error {
		if prev, ok := seen[kind+"\x00"+name]; ok {
			return d.KeyError(path, "%q is declared twice (also %s)", name, prev)
		}
		seen[kind+"\x00"+name] = path
		return nil
	}
	for i, p := range d.Projects {
		at := fmt.Sprintf("projects[%d]", i)
		if err := protocol.CheckName("name", p.Name, 100); err != nil {
			return d.KeyError(at+".name", "%v", err)
		}
		if err := unique("project", p.Name, at); err != nil {
			return err
		}
		if p.RepositoryURL == "" {
			return d.KeyError(at+".repository_url", "required")
		}
		for j, js := range p.Jobsets {
			jat := fmt.Sprintf("%s.jobsets[%d]", at, j)
			if err := ValidJobset(js); err != nil {
				return d.KeyError(jat+"."+err.Key, "%s", err.Msg)
			}
			if err := unique("jobset "+p.Name, js.Name, jat); err != nil {
				return err
			}
		}
	}
	for i, k := range d.APIKeys {
		at := fmt.Sprintf("api_keys[%d]", i)
		if err := protocol.CheckName("name", k.Name, 100); err != nil {
			return d.KeyError(at+".name", "%v", err)
		}
		if err := unique("key", k.Name, at); err != nil {
			return err
		}
		if k.Role == "" {
			return d.KeyError(at+".role", "required")
		}
		switch {
		case (k.KeyHash == "") == (k.KeyFile == ""):
			return d.KeyError(at, "give key_hash or key_file (one of them)")
		case k.KeyHash != "":
			if b, err := hex.DecodeString(k.KeyHash); err != nil || len(b) != 32 {
				return d.KeyError(at+".key_hash", "must be a SHA-256 in hex (64 characters; sha256sum of the key)")
			}
		}
	}
	for i, a := range d.Agents {
		at := fmt.Sprintf("agents[%d]", i)
		if err := protocol.CheckAgentName("name", a.Name); err != nil {
			return d.KeyError(at+".name", "%v", err)
		}
		if err := unique("agent", a.Name, at); err != nil {
			return err
		}
		if (a.PublicKey == "") == (a.PublicKeyFile == "") {
			return d.KeyError(at, "give public_key or public_key_file (one of them)")
		}
	}
	for i, u := range d.Users {
		at := fmt.Sprintf("users[%d]", i)
		if u.Username == "" {
			return d.KeyError(at+".username", "required")
		}
		if err := unique("user", u.Username, at); err != nil {
			return err
		}
		if u.Role == "" {
			return d.KeyError(at+".role", "required")
		}
		if u.PasswordFile == "" {
			return d.KeyError(at+".password_file", "required (a file holding the password; passwords are never in the config)")
		}
	}
	return nil
}

// JobsetError is a declared jobset's error: the key and what is wrong with it.
type JobsetError struct{ Key, Msg string }

func (e *JobsetError) Error() string { return e.Key + ": " + e.Msg }

// ValidJobset checks what a jobset declaration must have before the API's rules
// (projectapi) are applied to it: a name, and known state and input types.
func ValidJobset(js DeclaredJobset) *JobsetError {
	if err := protocol.CheckName("name", js.Name, 100); err != nil {
		return &JobsetError{"name", err.Error()}
	}
	switch js.State {
	case "", "enabled", "disabled", "one_shot", "one_at_a_time":
	default:
		return &JobsetError{"state", fmt.Sprintf("%q must be enabled, disabled, one_shot or one_at_a_time", js.State)}
	}
	for i, in := range js.Inputs {
		switch in.Type {
		case "string", "boolean", "git", "path":
		default:
			return &JobsetError{fmt.Sprintf("inputs[%d].type", i), fmt.Sprintf("%q must be string, boolean, git or path", in.Type)}
		}
	}
	return nil
}

// declLine finds the line of a declared key path (projects[2].jobsets[0].branch) in
// data, a document of [[arrays]] and key = value lines: the key's own line, else
// the header of the innermost array entry found; 0 when none is.
func declLine(data []byte, path string) int {
	type step struct {
		name  string
		index int
	}
	var want []step
	key := ""
	for _, part := range strings.Split(path, ".") {
		name, idx, ok := strings.Cut(part, "[")
		if !ok {
			key = part
			continue
		}
		n, err := strconv.Atoi(strings.TrimSuffix(idx, "]"))
		if err != nil {
			return 0
		}
		want = append(want, step{name, n})
	}
	counts := map[string]int{} // entries seen of each array table, within the current parent
	var cur []step
	best, bestDepth := 0, 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(s, "[[") {
			names := strings.Split(strings.TrimSpace(strings.Trim(strings.SplitN(s, "]]", 2)[0], "[")), ".")
			full := strings.Join(names, ".")
			for k := range counts { // a new parent entry restarts its children's count
				if strings.HasPrefix(k, full+".") {
					delete(counts, k)
				}
			}
			counts[full]++
			cur = cur[:0]
			for i, n := range names {
				cur = append(cur, step{n, counts[strings.Join(names[:i+1], ".")] - 1})
			}
			if len(cur) <= len(want) && slices.Equal(cur, want[:len(cur)]) && len(cur) > bestDepth {
				best, bestDepth = line, len(cur)
			}
			continue
		}
		if strings.HasPrefix(s, "[") {
			cur = cur[:0]
			continue
		}
		if k, _, ok := strings.Cut(s, "="); ok && key != "" && strings.TrimSpace(k) == key &&
			len(cur) == len(want) && slices.Equal(cur, want) {
			return line
		}
	}
	return best
}
