package server_test

import (
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

const (
	noField  = "(none)" // the error must not name a field
	anyField = "(any)"  // the field is not checked
)

// TestValidation_RejectsAndChangesNothing sends every invalid request the foundation
// API must refuse and checks the status, the JSON error, the field at fault, and that
// no row of projects, jobsets, inputs or keys changed.
func TestValidation_RejectsAndChangesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	base := e.createProject("base", obj{"description": "keep me"})
	other := e.createProject("other", nil)
	e.createJobset(base.ID, "main", obj{"inputs": []obj{{"name": "x", "type": "string", "value": "1"}}})
	e.createJobset(base.ID, "staging", nil)
	e.createJobset(other.ID, "dev", nil)

	proj := func(extra obj) obj {
		b := obj{"name": "fresh", "repository_url": "https://example.org/fresh.git"}
		for k, v := range extra {
			if v == nil {
				delete(b, k)
			} else {
				b[k] = v
			}
		}
		return b
	}
	js := func(extra obj) obj {
		b := obj{"name": "fresh"}
		for k, v := range extra {
			b[k] = v
		}
		return b
	}
	in := func(name, typ, value string) obj { return obj{"name": name, "type": typ, "value": value} }

	const projects = "/api/v1/projects"
	jobsets := fmt.Sprintf("/api/v1/projects/%d/jobsets", base.ID)
	mainJS := "/api/v1/projects/base/jobsets/main"
	cases := []struct {
		name   string
		method string
		path   string
		body   any
		status int
		field  string
	}{
		// Project names.
		{"project name starting with a dash", "POST", projects, proj(obj{"name": "-x"}), 422, "name"},
		{"project name with a space", "POST", projects, proj(obj{"name": "a b"}), 422, "name"},
		{"empty project name", "POST", projects, proj(obj{"name": ""}), 422, "name"},
		{"missing project name", "POST", projects, proj(obj{"name": nil}), 422, "name"},
		{"project name of 101 characters", "POST", projects, proj(obj{"name": strings.Repeat("a", 101)}), 422, "name"},
		{"project name with a slash", "POST", projects, proj(obj{"name": "a/b"}), 422, "name"},
		{"project name with a non-ASCII letter", "POST", projects, proj(obj{"name": "café"}), 422, "name"},
		// Repository URLs.
		{"ftp repository", "POST", projects, proj(obj{"repository_url": "ftp://x"}), 422, "repository_url"},
		{"relative repository path", "POST", projects, proj(obj{"repository_url": "relative/path"}), 422, "repository_url"},
		{"https URL without a host", "POST", projects, proj(obj{"repository_url": "https://"}), 422, "repository_url"},
		{"missing repository URL", "POST", projects, proj(obj{"repository_url": nil}), 422, "repository_url"},
		{"repository URL with a space", "POST", projects, proj(obj{"repository_url": "https://e.org/a b"}), 422, "repository_url"},
		{"unclean repository path", "POST", projects, proj(obj{"repository_url": "/srv/../etc"}), 422, "repository_url"},
		// Other project fields.
		{"short webhook secret", "POST", projects, proj(obj{"webhook_secret": "short"}), 422, "webhook_secret"},
		{"display name over 200 characters", "POST", projects, proj(obj{"display_name": strings.Repeat("d", 201)}), 422, "display_name"},
		{"duplicate project name", "POST", projects, proj(obj{"name": "base"}), 409, "name"},
		{"all-digit project name (would read as an id)", "POST", projects, proj(obj{"name": "42"}), 422, "name"},
		{"project name starting with a digit", "POST", projects, proj(obj{"name": "1a"}), 422, "name"},
		{"repository URL embedding a token", "POST", projects, proj(obj{"repository_url": "https://user:ghp_secret@github.com/o/r.git"}), 422, "repository_url"},
		{"NUL in a description", "POST", projects, proj(obj{"description": "a\u0000b"}), 422, "description"},
		// Request bodies.
		{"unknown project field", "POST", projects, proj(obj{"colour": "red"}), 422, "colour"},
		{"project name of the wrong JSON type", "POST", projects, proj(obj{"name": 5}), 422, "name"},
		{"enabled of the wrong JSON type", "POST", projects, proj(obj{"enabled": "yes"}), 422, "enabled"},
		{"malformed JSON", "POST", projects, `{"name": "fresh", `, 400, noField},
		{"not JSON at all", "POST", projects, `name=fresh`, 400, noField},
		{"empty body", "POST", projects, ``, 400, noField},
		{"two JSON objects", "POST", projects, `{"name":"fresh","repository_url":"/r"}{"name":"x"}`, 400, noField},
		{"a JSON array", "POST", projects, `[{"name":"fresh","repository_url":"/r"}]`, 422, anyField},

		// Jobset fields.
		{"scheduling_shares 0", "POST", jobsets, js(obj{"scheduling_shares": 0}), 422, "scheduling_shares"},
		{"scheduling_shares -1", "POST", jobsets, js(obj{"scheduling_shares": -1}), 422, "scheduling_shares"},
		{"unknown state", "POST", jobsets, js(obj{"state": "paused"}), 422, "state"},
		{"check_interval -1", "POST", jobsets, js(obj{"check_interval": -1}), 422, "check_interval"},
		{"keep_nr -1", "POST", jobsets, js(obj{"keep_nr": -1}), 422, "keep_nr"},
		{"bad jobset name", "POST", jobsets, js(obj{"name": "a b"}), 422, "name"},
		{"empty jobset name", "POST", jobsets, js(obj{"name": ""}), 422, "name"},
		{"branch with ..", "POST", jobsets, js(obj{"branch": "a..b"}), 422, "branch"},
		{"branch with a space", "POST", jobsets, js(obj{"branch": "a b"}), 422, "branch"},
		{"nix_expression with shell syntax", "POST", jobsets, js(obj{"nix_expression": "x; rm -rf /"}), 422, "nix_expression"},
		{"nix_expression climbing out", "POST", jobsets, js(obj{"nix_expression": "../release.nix"}), 422, "nix_expression"},
		{"empty nix_expression", "POST", jobsets, js(obj{"nix_expression": ""}), 422, "nix_expression"},
		{"scheduling_shares of the wrong JSON type", "POST", jobsets, js(obj{"scheduling_shares": "many"}), 422, "scheduling_shares"},
		{"inputs of the wrong JSON type", "POST", jobsets, js(obj{"inputs": "x=1"}), 422, "inputs"},
		{"unknown jobset field", "POST", jobsets, js(obj{"priority": 3}), 422, "priority"},
		{"duplicate jobset name", "POST", jobsets, js(obj{"name": "main"}), 409, "name"},
		{"check_interval beyond PostgreSQL's integer", "POST", jobsets, js(obj{"check_interval": 3000000000}), 422, "check_interval"},
		{"scheduling_shares beyond the bound", "POST", jobsets, js(obj{"scheduling_shares": 1000001}), 422, "scheduling_shares"},
		{"keep_nr beyond the bound", "POST", jobsets, js(obj{"keep_nr": 1 << 40}), 422, "keep_nr"},
		{"NUL in an input value", "POST", jobsets, js(obj{"inputs": []obj{in("a", "string", "x\u0000")}}), 422, "inputs"},
		{"jobset in a missing project", "POST", "/api/v1/projects/nope/jobsets", js(nil), 404, noField},
		// Jobset inputs.
		{"unknown input type", "POST", jobsets, js(obj{"inputs": []obj{in("a", "number", "1")}}), 422, "inputs"},
		{"boolean input yes", "POST", jobsets, js(obj{"inputs": []obj{in("a", "boolean", "yes")}}), 422, "inputs"},
		{"duplicate input names", "POST", jobsets, js(obj{"inputs": []obj{in("a", "string", "1"), in("a", "string", "2")}}), 422, "inputs"},
		{"input name not an identifier", "POST", jobsets, js(obj{"inputs": []obj{in("1a", "string", "1")}}), 422, "inputs"},
		{"relative path input", "POST", jobsets, js(obj{"inputs": []obj{in("a", "path", "src")}}), 422, "inputs"},
		{"git input without a URL", "POST", jobsets, js(obj{"inputs": []obj{in("a", "git", "not a url")}}), 422, "inputs"},
		{"git input revision read as an option", "POST", jobsets, js(obj{"inputs": []obj{in("a", "git", "https://example.org/r.git --upload-pack=touch")}}), 422, "inputs"},
		{"git input revision of a single dash", "POST", jobsets, js(obj{"inputs": []obj{in("a", "git", "https://example.org/r.git -")}}), 422, "inputs"},
		{"git input with a third field", "POST", jobsets, js(obj{"inputs": []obj{in("a", "git", "https://example.org/r.git main extra")}}), 422, "inputs"},
		{"git input with a newline", "POST", jobsets, js(obj{"inputs": []obj{in("a", "git", "https://example.org/r.git main\n-x")}}), 422, "inputs"},
		{"git input with a tab", "POST", jobsets, js(obj{"inputs": []obj{in("a", "git", "https://example.org/r.git\tmain")}}), 422, "inputs"},
		{"git input with two spaces", "POST", jobsets, js(obj{"inputs": []obj{in("a", "git", "https://example.org/r.git  main")}}), 422, "inputs"},
		{"git input with a trailing space", "POST", jobsets, js(obj{"inputs": []obj{in("a", "git", "https://example.org/r.git main ")}}), 422, "inputs"},
		{"git input revision expression", "POST", jobsets, js(obj{"inputs": []obj{in("a", "git", "https://example.org/r.git main@{1}")}}), 422, "inputs"},
		{"git input revision range", "POST", jobsets, js(obj{"inputs": []obj{in("a", "git", "https://example.org/r.git a..b")}}), 422, "inputs"},
		{"git input revision with a control character", "POST", jobsets, js(obj{"inputs": []obj{in("a", "git", "https://example.org/r.git ma\u0007in")}}), 422, "inputs"},
		{"unknown input field", "POST", jobsets, js(obj{"inputs": []obj{{"name": "a", "type": "string", "value": "1", "default": "2"}}}), 422, "default"},

		// Updates that fail leave everything as it was.
		{"PUT project with a bad name", "PUT", "/api/v1/projects/base", obj{"name": "a b", "description": "changed"}, 422, "name"},
		{"PUT project with an ftp URL", "PUT", "/api/v1/projects/base", obj{"repository_url": "ftp://x", "description": "changed"}, 422, "repository_url"},
		{"PUT project to a taken name", "PUT", "/api/v1/projects/base", obj{"name": "other", "description": "changed"}, 409, "name"},
		{"PUT project with an unknown field", "PUT", "/api/v1/projects/base", obj{"description": "changed", "owner": "me"}, 422, "owner"},
		{"PUT project with malformed JSON", "PUT", "/api/v1/projects/base", `{"description":`, 400, noField},
		{"PUT missing project", "PUT", "/api/v1/projects/nope", obj{"description": "changed"}, 404, noField},
		{"PUT jobset with scheduling_shares 0", "PUT", mainJS, obj{"scheduling_shares": 0, "description": "changed"}, 422, "scheduling_shares"},
		{"PUT jobset with a bad input", "PUT", mainJS, obj{"inputs": []obj{in("y", "boolean", "yes")}, "description": "changed"}, 422, "inputs"},
		{"PUT jobset with a git revision read as an option", "PUT", mainJS, obj{"inputs": []obj{in("y", "git", "https://example.org/r.git -c")}, "description": "changed"}, 422, "inputs"},
		{"PUT jobset with an unknown state", "PUT", mainJS, obj{"state": "on", "description": "changed"}, 422, "state"},
		{"PUT jobset to a taken name", "PUT", mainJS, obj{"name": "staging", "description": "changed"}, 409, "name"},
		{"PUT jobset with a wrong JSON type", "PUT", mainJS, obj{"keep_nr": "3"}, 422, "keep_nr"},

		// Keys.
		{"key with an unknown role", "POST", "/api/v1/api-keys", obj{"name": "k", "role": "root"}, 422, "role"},
		{"key without a name", "POST", "/api/v1/api-keys", obj{"name": "", "role": "admin"}, 422, "name"},
		{"key with an unknown field", "POST", "/api/v1/api-keys", obj{"name": "k", "role": "admin", "expires": 1}, 422, "expires"},
		{"delete a missing key", "DELETE", "/api/v1/api-keys/999999", nil, 404, noField},
		{"delete a key by a non-number", "DELETE", "/api/v1/api-keys/abc", nil, 404, noField},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := e.in(t)
			before := e.snapshot()
			ae := e.do(c.method, c.path, e.admin, c.body).apiErr(t, c.status)
			switch c.field {
			case anyField:
			case noField:
				if ae.Field != "" {
					t.Errorf("field %q, want none (error %q)", ae.Field, ae.Error)
				}
			default:
				if ae.Field != c.field {
					t.Errorf("field %q, want %q (error %q)", ae.Field, c.field, ae.Error)
				}
			}
			if after := e.snapshot(); after != before {
				t.Errorf("the database changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// TestValidation_BoundariesAreAccepted pins the edge values the rules above must let
// through, so the rules cannot pass by rejecting everything.
func TestValidation_BoundariesAreAccepted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	name100 := strings.Repeat("n", 100)
	for _, body := range []obj{
		{"name": name100, "repository_url": "https://example.org/r.git"},
		{"name": "_0day", "repository_url": "git://example.org/r.git"},
		{"name": "ssh", "repository_url": "ssh://git@example.org/r.git"},
		{"name": "file", "repository_url": "file:///srv/git/r"},
		{"name": "path", "repository_url": "/srv/git/r"},
		{"name": "secret", "repository_url": "/srv/git/r", "webhook_secret": strings.Repeat("s", 16)},
		{"name": "disp", "repository_url": "/srv/git/r", "display_name": strings.Repeat("d", 200)},
	} {
		e.do("POST", "/api/v1/projects", e.admin, body).want(t, http.StatusCreated)
	}
	p := e.createProject("p", nil)
	for i, body := range []obj{
		{"scheduling_shares": 1, "check_interval": 0, "keep_nr": 0, "state": "disabled"},
		{"state": "one_at_a_time", "branch": "feature/x-1"},
		{"state": "one_shot", "flake_mode": false, "nix_expression": "release.nix"},
		{"inputs": []obj{{"name": "b", "type": "boolean", "value": "true"}, {"name": "_c'", "type": "string", "value": ""}}},
		{"inputs": []obj{{"name": "src", "type": "git", "value": "https://example.org/r.git main"}}},
		{"inputs": []obj{{"name": "src", "type": "git", "value": "https://example.org/r.git"}}},
		{"inputs": []obj{{"name": "src", "type": "git", "value": "https://example.org/r.git release/v1.2-x_y"}}},
		{"inputs": []obj{{"name": "src", "type": "git", "value": "https://example.org/r.git 0123456789abcdef0123456789abcdef01234567"}}},
	} {
		body["name"] = fmt.Sprintf("js%d", i)
		e.do("POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", p.ID), e.admin, body).want(t, http.StatusCreated)
	}
}

func TestJobsets_FailedPutLeavesOldValues(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	p := e.createProject("p", nil)
	j := e.createJobset(p.ID, "main", obj{"description": "old", "scheduling_shares": 5,
		"inputs": []obj{{"name": "a", "type": "string", "value": "1"}}})
	// Valid changes next to one invalid value: none of them may stick.
	e.do("PUT", jobsetPath(p.ID, j.ID), e.admin, obj{"description": "new", "keep_nr": 1,
		"inputs": []obj{{"name": "b", "type": "string", "value": "2"}}, "scheduling_shares": 0}).
		apiErr(t, http.StatusUnprocessableEntity)
	var got jobset
	e.do("GET", jobsetPath(p.ID, j.ID), "", nil).want(t, http.StatusOK).decode(t, &got)
	if !reflect.DeepEqual(got, j) {
		t.Errorf("after a rejected PUT =\n%+v\nwant unchanged\n%+v", got, j)
	}
	var pg project
	e.do("PUT", "/api/v1/projects/p", e.admin, obj{"description": "new", "enabled": false, "repository_url": "relative"}).
		apiErr(t, http.StatusUnprocessableEntity)
	e.do("GET", "/api/v1/projects/p", "", nil).want(t, http.StatusOK).decode(t, &pg)
	if pg != p {
		t.Errorf("after a rejected PUT = %+v, want unchanged %+v", pg, p)
	}
}
