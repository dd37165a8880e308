// Package declare applies the coordinator's declarative configuration: the projects,
// jobsets, API keys, agent keys and users its config file declares (config.
// Declarations), at start and on SIGHUP, and the jobsets a project's repository
// declares in its .fc.toml (repository.go), on each check of the project.
package declare

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/projectapi"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// Resolve turns the declarations into what storage applies: it reads the secret and
// key files, checks every entry by the API's rules and hashes passwords (only those
// that changed: a password file that still verifies against the account's hash keeps
// it). Errors name the file, line and key. allowedPaths is
// evaluator.allowed_input_paths.
func Resolve(ctx context.Context, db *storage.DB, d config.Declarations, allowedPaths []string) (storage.Declarations, error) {
	out := storage.Declarations{Source: d.File}
	for i, u := range d.Users {
		at := fmt.Sprintf("users[%d]", i)
		du, err := resolveUser(ctx, db, d, at, u)
		if err != nil {
			return storage.Declarations{}, err
		}
		out.Users = append(out.Users, du)
	}
	for i, k := range d.APIKeys {
		at := fmt.Sprintf("api_keys[%d]", i)
		if !auth.ValidRole(k.Role) {
			return storage.Declarations{}, d.KeyError(at+".role", "%q is not one of %v", k.Role, auth.RoleNames())
		}
		dk := storage.DeclaredAPIKey{Name: k.Name, Role: k.Role}
		if k.KeyFile != "" {
			key, err := readSecret(d.Path(k.KeyFile))
			if err != nil {
				return storage.Declarations{}, d.KeyError(at+".key_file", "%v", err)
			}
			dk.Hash = auth.HashKey(key)
		} else {
			dk.Hash = decodeHex(k.KeyHash) // config checked it is 64 hex digits
		}
		out.APIKeys = append(out.APIKeys, dk)
	}
	for i, a := range d.Agents {
		da, err := resolveAgent(d, fmt.Sprintf("agents[%d]", i), a)
		if err != nil {
			return storage.Declarations{}, err
		}
		out.Agents = append(out.Agents, da)
	}
	for i, p := range d.Projects {
		at := fmt.Sprintf("projects[%d]", i)
		f, kerr := projectapi.ProjectFromDeclaration(p)
		if kerr != nil {
			return storage.Declarations{}, d.KeyError(at+"."+kerr.Key, "%s", kerr.Msg)
		}
		dp := storage.DeclaredProject{Fields: f, OwnerUser: p.Owner, DeclarativeFile: p.DeclarativeFile,
			DeclarativeBranch: p.DeclarativeBranch}
		for j, js := range p.Jobsets {
			jf, kerr := projectapi.JobsetFromDeclaration(js, allowedPaths)
			if kerr != nil {
				return storage.Declarations{}, d.KeyError(fmt.Sprintf("%s.jobsets[%d].%s", at, j, kerr.Key), "%s", kerr.Msg)
			}
			dp.Jobsets = append(dp.Jobsets, jf)
		}
		out.Projects = append(out.Projects, dp)
	}
	return out, nil
}

func resolveUser(ctx context.Context, db *storage.DB, d config.Declarations, at string, u config.DeclaredUser) (storage.DeclaredUser, error) {
	if !auth.ValidRole(u.Role) {
		return storage.DeclaredUser{}, d.KeyError(at+".role", "%q is not one of %v", u.Role, auth.RoleNames())
	}
	password, err := readSecret(d.Path(u.PasswordFile))
	if err != nil {
		return storage.DeclaredUser{}, d.KeyError(at+".password_file", "%v", err)
	}
	if err := auth.CheckPasswordLength(password); err != nil {
		return storage.DeclaredUser{}, d.KeyError(at+".password_file", "the password %v", err)
	}
	du := storage.DeclaredUser{Username: u.Username, Email: u.Email, FullName: u.FullName, Role: u.Role}
	_, hash, err := db.UserCredentials(ctx, u.Username)
	switch {
	case errors.Is(err, storage.ErrNotFound):
	case err != nil:
		return storage.DeclaredUser{}, err
	default:
		// Hashing costs on purpose; an unchanged file keeps the hash (and the sessions).
		if ok, _ := auth.CheckPassword(hash, password); ok {
			return du, nil
		}
	}
	if du.PasswordHash, err = auth.HashPassword(password); err != nil {
		return storage.DeclaredUser{}, err
	}
	return du, nil
}

func resolveAgent(d config.Declarations, at string, a config.DeclaredAgent) (storage.DeclaredAgent, error) {
	line, key := a.PublicKey, at+".public_key"
	if a.PublicKeyFile != "" {
		b, err := os.ReadFile(d.Path(a.PublicKeyFile))
		if err != nil {
			return storage.DeclaredAgent{}, d.KeyError(at+".public_key_file", "%v", err)
		}
		line, key = string(b), at+".public_key_file"
	}
	k, err := protocol.ParseAgentKey(line)
	if err != nil {
		return storage.DeclaredAgent{}, d.KeyError(key, "must be one ssh-ed25519 authorized_keys line (the agent's key.pub)")
	}
	return storage.DeclaredAgent{Name: a.Name, PublicKey: k.Line, Fingerprint: k.Fingerprint, Push: a.Push}, nil
}

// readSecret is a secret file's content without its final line break.
func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimRight(string(b), "\r\n")
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}

// Apply resolves d and applies it to db in one transaction. A config without a file
// (defaults only) declares nothing and changes nothing.
func Apply(ctx context.Context, db *storage.DB, d config.Declarations, allowedPaths []string) (storage.DeclarationReport, error) {
	if d.File == "" {
		return storage.DeclarationReport{Counts: map[string]*storage.DeclarationCounts{}}, nil
	}
	resolved, err := Resolve(ctx, db, d, allowedPaths)
	if err != nil {
		return storage.DeclarationReport{}, err
	}
	return db.ApplyDeclarations(ctx, resolved)
}

func decodeHex(s string) []byte {
	b, _ := hex.DecodeString(s)
	return b
}
