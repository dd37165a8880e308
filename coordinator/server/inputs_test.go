package server_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func pathInput(value string) obj {
	return obj{"inputs": []obj{{"name": "src", "type": "path", "value": value}}}
}

// A path input reads a file or directory on the evaluating agent: by default the
// coordinator refuses every one, naming the setting that allows them.
func TestPathInputs_RefusedByDefaultNamingTheSetting(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	p := e.createProject("p", nil)
	before := e.snapshot()
	for _, v := range []string{"/srv/inputs/src", "/var/lib/fc-agent/agent_key", "/"} {
		body := pathInput(v)
		body["name"] = "main"
		ae := e.do("POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", p.ID), e.admin, body).apiErr(t, http.StatusUnprocessableEntity)
		if ae.Field != "inputs" || !strings.Contains(ae.Error, "evaluator.allowed_input_paths") {
			t.Errorf("path input %q: field %q error %q, want inputs and the setting named", v, ae.Field, ae.Error)
		}
	}
	if after := e.snapshot(); after != before {
		t.Errorf("a refused path input changed the database:\nbefore %s\nafter  %s", before, after)
	}
}

// With evaluator.allowed_input_paths set, a path input is accepted only under one of
// its directories once ".." is resolved, and only from an admin.
func TestPathInputs_OnlyUnderAllowedDirectoriesAndOnlyFromAdmins(t *testing.T) {
	t.Parallel()
	e := newEnvConfig(t, storagetest.New(t), func(c *config.Config) {
		c.Eval.AllowedInputPaths = []string{"/srv/inputs", "/opt/shared/"}
	})
	// The project belongs to a create-projects key, which may manage its jobsets but
	// still not set path inputs.
	creatorID, creator := e.keyWithID(storage.RoleCreateProjects)
	p := e.createProject("p", obj{"owner_key_id": creatorID})
	jobsets := fmt.Sprintf("/api/v1/projects/%d/jobsets", p.ID)

	before := e.snapshot()
	t.Run("outside the allowed directories", func(t *testing.T) {
		e := e.in(t)
		for i, v := range []string{
			"/srv/inputs/../../etc",         // climbs out
			"/srv/inputs/../../../../etc",   // and past the root
			"/../../etc",                    // the finding's value
			"/srv/inputs-other",             // a sibling sharing the prefix
			"/srv",                          // the parent
			"/etc/passwd",                   // elsewhere
			"/var/lib/fc-agent/agent_key",   // the agent's key
			"/opt/shared/../secret",         // out of the second directory
			"/srv/inputs/a/../../inputsX/b", // cleans to /srv/inputsX/b
		} {
			body := pathInput(v)
			body["name"] = fmt.Sprintf("refused%d", i)
			ae := e.do("POST", jobsets, e.admin, body).apiErr(t, http.StatusUnprocessableEntity)
			if ae.Field != "inputs" || !strings.Contains(ae.Error, "evaluator.allowed_input_paths") {
				t.Errorf("path input %q: field %q error %q, want inputs and the setting named", v, ae.Field, ae.Error)
			}
		}
	})
	t.Run("from another role than admin", func(t *testing.T) {
		e := e.in(t)
		// Another role may create jobsets, but not with a path input, even an allowed one.
		for _, v := range []string{"/srv/inputs/src", "/etc"} {
			body := pathInput(v)
			body["name"] = "bycreator"
			ae := e.do("POST", jobsets, creator, body).apiErr(t, http.StatusForbidden)
			if !strings.Contains(ae.Error, "admin") {
				t.Errorf("path input %q from a create-projects key: error %q, want one saying only admins may", v, ae.Error)
			}
		}
	})
	if after := e.snapshot(); after != before {
		t.Errorf("refused path inputs changed the database:\nbefore %s\nafter  %s", before, after)
	}
	e.do("POST", jobsets, creator, obj{"name": "plain", "inputs": []obj{{"name": "s", "type": "string", "value": "x"}}}).
		want(t, http.StatusCreated)

	t.Run("accepted under them, stored cleaned", func(t *testing.T) {
		e := e.in(t)
		for i, c := range []struct{ value, stored string }{
			{"/srv/inputs", "/srv/inputs"},
			{"/srv/inputs/src", "/srv/inputs/src"},
			{"/srv/inputs/a/../b//c/", "/srv/inputs/b/c"},
			{"/opt/shared/x", "/opt/shared/x"},
		} {
			body := pathInput(c.value)
			body["name"] = fmt.Sprintf("ok%d", i)
			var j jobset
			e.do("POST", jobsets, e.admin, body).want(t, http.StatusCreated).decode(t, &j)
			if len(j.Inputs) != 1 || j.Inputs[0].Value != c.stored {
				t.Errorf("path input %q stored as %+v, want %q", c.value, j.Inputs, c.stored)
			}
		}
	})

	t.Run("updates follow the same rules", func(t *testing.T) {
		e := e.in(t)
		j := e.createJobset(p.ID, "upd", nil)
		ae := e.do("PUT", jobsetPath(p.ID, j.ID), e.admin, pathInput("/srv/inputs/../../root/.ssh")).apiErr(t, http.StatusUnprocessableEntity)
		if ae.Field != "inputs" || !strings.Contains(ae.Error, "evaluator.allowed_input_paths") {
			t.Errorf("PUT outside: field %q error %q", ae.Field, ae.Error)
		}
		var got jobset
		e.do("PUT", jobsetPath(p.ID, j.ID), e.admin, pathInput("/srv/inputs/src")).want(t, http.StatusOK).decode(t, &got)
		if len(got.Inputs) != 1 || got.Inputs[0].Value != "/srv/inputs/src" {
			t.Errorf("PUT inside: inputs %+v", got.Inputs)
		}
	})
}
