package projectapi

import (
	"errors"
	"strconv"
	"strings"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

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
	if err := validDeclarativeFile(p.DeclarativeFile, p.DeclarativeBranch); err != nil {
		return f, keyError(err, "declarative_file")
	}
	f.DeclarativeFile, f.DeclarativeBranch = p.DeclarativeFile, p.DeclarativeBranch
	return f, nil
}

// validDeclarativeFile checks a project's declarative_file (a file in the
// repository, or "") and declarative_branch (a branch name, or "").
func validDeclarativeFile(file, branch string) error {
	if file != "" && (strings.HasPrefix(file, "/") || strings.HasPrefix(file, "-") || strings.Contains(file, "..") ||
		strings.ContainsAny(file, "\x00\n:") || len(file) > 255) {
		return httpkit.Unprocessable("declarative_file", "declarative_file %q must be a path inside the repository (like .fc.toml)", file)
	}
	if err := validBranch(branch); err != nil {
		return httpkit.Unprocessable("declarative_branch", "declarative_branch %q is not a valid git branch name", branch)
	}
	return nil
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
		CheckInterval: js.CheckInterval, SchedulingShares: js.SchedulingShares, KeepNr: js.KeepNr,
		PullRequests: js.PullRequests, PullRequestDrafts: js.PullRequestDrafts}
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

// RepositoryMayDeclare refuses in a jobset a repository's file declares what only an
// admin may set through the API: path inputs and git inputs naming a local repository
// (paths on the agents' machines). Whoever may push to the repository is not an admin.
func RepositoryMayDeclare(f storage.JobsetFields) *config.JobsetError {
	for i, in := range f.Inputs {
		key := "inputs[" + strconv.Itoa(i) + "]"
		switch fields := strings.Fields(in.Value); {
		case in.Type == storage.InputTypePath:
			return &config.JobsetError{Key: key, Msg: "a repository's file may not declare a path input (only an admin may set one)"}
		case in.Type == storage.InputTypeGit && len(fields) > 0 && isLocalRepository(fields[0]):
			return &config.JobsetError{Key: key, Msg: "a repository's file may not declare a git input naming a local repository (only an admin may set one)"}
		}
	}
	return nil
}
