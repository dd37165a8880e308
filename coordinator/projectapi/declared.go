package projectapi

import (
	"errors"
	"net/http"
	"strings"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

// Declared is the 409 refusing a change to an object declared in source (a config
// file, or "repository:<project>/<file>"): it must be changed there.
func Declared(what, source string) error {
	if repo, ok := strings.CutPrefix(source, "repository:"); ok {
		return httpkit.Errorf(http.StatusConflict, "",
			"%s is declared in the repository's %s; change it there", what, repo)
	}
	return httpkit.Errorf(http.StatusConflict, "", "%s is declared in %s; change it there", what, source)
}

// ProjectFromDeclaration is a declared project's fields, checked by the API's rules;
// an error's key is the declaration's (name, repository_url).
func ProjectFromDeclaration(p config.DeclaredProject) (storage.ProjectFields, *config.JobsetError) {
	f := storage.ProjectFields{Name: p.Name, DisplayName: p.DisplayName, Description: p.Description,
		RepositoryURL: p.RepositoryURL, Enabled: p.Enabled == nil || *p.Enabled}
	if err := ValidName("name", f.Name); err != nil {
		return f, keyError(err, "name")
	}
	if err := validRepositoryURL(f.RepositoryURL); err != nil {
		return f, keyError(err, "repository_url")
	}
	if p.DeclarativeFile != "" && (strings.HasPrefix(p.DeclarativeFile, "/") || strings.Contains(p.DeclarativeFile, "..")) {
		return f, &config.JobsetError{Key: "declarative_file", Msg: "must be a path inside the repository (like .fc.toml)"}
	}
	if err := validBranch(p.DeclarativeBranch); err != nil {
		return f, keyError(err, "declarative_branch")
	}
	return f, nil
}

// JobsetFromDeclaration is a declared jobset's fields: the API's defaults for what
// it leaves out, checked by the API's rules (path inputs against allowedPaths,
// evaluator.allowed_input_paths). An error's key is the declaration's.
func JobsetFromDeclaration(js config.DeclaredJobset, allowedPaths []string) (storage.JobsetFields, *config.JobsetError) {
	f := storage.JobsetFields{FlakeMode: true, NixExpression: defaultExpression(true), CheckInterval: 60,
		SchedulingShares: 100, State: storage.JobsetEnabled, KeepNr: 3}
	if err := config.ValidJobset(js); err != nil {
		return f, err
	}
	in := jobsetInput{Name: &js.Name, Description: &js.Description, Branch: &js.Branch, FlakeMode: js.FlakeMode,
		CheckInterval: js.CheckInterval, SchedulingShares: js.SchedulingShares, KeepNr: js.KeepNr}
	if js.NixExpression != "" {
		in.NixExpression = &js.NixExpression
	}
	if js.State != "" {
		in.State = &js.State
	}
	inputs := make([]inputJSON, len(js.Inputs))
	for i, x := range js.Inputs {
		inputs[i] = inputJSON{Name: x.Name, Type: x.Type, Value: x.Value}
	}
	in.Inputs = &inputs
	if err := in.apply(&f); err != nil {
		return f, keyError(err, "")
	}
	for i, x := range f.Inputs {
		if x.Type != storage.InputTypePath {
			continue
		}
		clean, ok := config.PathInputAllowed(x.Value, allowedPaths)
		if !ok {
			return f, &config.JobsetError{Key: "inputs", Msg: "path input " + x.Name + " lies outside " + config.AllowedInputPathsKey}
		}
		f.Inputs[i].Value = clean
	}
	return f, nil
}

// keyError turns an API validation error into a declaration's: its field is the key.
func keyError(err error, key string) *config.JobsetError {
	var he *httpkit.Error
	if errors.As(err, &he) && he.Field != "" {
		key = he.Field
	}
	return &config.JobsetError{Key: key, Msg: err.Error()}
}
