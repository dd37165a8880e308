package server_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/storage"
)

// statusFor is the status each kind of caller must get from one route.
type statusFor struct {
	NoKey, UnknownKey, ReadOnly, CreateProjects, EvalJobset, CancelBuild, RestartJobs, BumpToFront, Admin int
}

// authzRoute is one row of the authorization table: a route and, for a fresh set of
// resources, the path and body of a request that succeeds when allowed.
type authzRoute struct {
	route string
	want  statusFor
	// req makes fresh resources (so each principal's DELETE has something to
	// delete) and returns the method, path and body of the request.
	req func(t *testing.T, f *fixtures) (method, path string, body any)
	// reqBy, if set instead of req, is told the calling key's id (0 for no key or
	// an unknown one), for rows about what the caller owns.
	reqBy func(t *testing.T, f *fixtures, caller int64) (method, path string, body any)
}

type fixtures struct {
	db *storage.DB
	n  atomic.Int64
	// other is a create-projects key that none of the principals is: the owner of
	// "another key's" projects.
	other int64
}

func (f *fixtures) unique(prefix string) string { return fmt.Sprintf("%s%d", prefix, f.n.Add(1)) }

func (f *fixtures) project(t *testing.T) storage.Project {
	t.Helper()
	p, err := f.db.CreateProject(context.Background(), storage.ProjectFields{
		Name: f.unique("p"), RepositoryURL: "https://example.org/r.git", Enabled: true})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// ownedProject makes a project owned by the key owner (0: no owner).
func (f *fixtures) ownedProject(t *testing.T, owner int64) storage.Project {
	t.Helper()
	fields := storage.ProjectFields{Name: f.unique("p"), RepositoryURL: "https://example.org/r.git", Enabled: true}
	if owner != 0 {
		fields.OwnerKeyID = &owner
	}
	p, err := f.db.CreateProject(context.Background(), fields)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// ownedJobset makes a jobset of a new project owned by the key owner (0: no owner).
func (f *fixtures) ownedJobset(t *testing.T, owner int64) storage.Jobset {
	t.Helper()
	p := f.ownedProject(t, owner)
	j, err := f.db.CreateJobset(context.Background(), p.ID, storage.JobsetFields{Name: f.unique("j"), FlakeMode: true,
		NixExpression: "hydraJobs", CheckInterval: 60, SchedulingShares: 100, State: storage.JobsetEnabled, KeepNr: 3})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// user makes an account with role (its password hash is never checked here).
func (f *fixtures) user(t *testing.T, role string) storage.User {
	t.Helper()
	u, err := f.db.CreateUser(context.Background(), storage.NewUser{Username: f.unique("u"), Role: role, PasswordHash: "$argon2id$unused"})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// userProject makes a project owned by a new create-projects user.
func (f *fixtures) userProject(t *testing.T) storage.Project {
	t.Helper()
	owner := f.user(t, storage.RoleCreateProjects).ID
	p, err := f.db.CreateProject(context.Background(), storage.ProjectFields{Name: f.unique("p"),
		RepositoryURL: "https://example.org/r.git", Enabled: true, OwnerUserID: &owner})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// people is what the accounts routes change, for the check that a refused request
// changed nothing.
func (f *fixtures) people(t *testing.T) string {
	t.Helper()
	var s string
	err := f.db.Pool().QueryRow(context.Background(), `SELECT jsonb_build_object(
		'users', (SELECT coalesce(jsonb_agg(to_jsonb(u) ORDER BY u.id), '[]') FROM users u),
		'sessions', (SELECT count(*) FROM sessions),
		'starred', (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.user_id, s.jobset_id, s.job), '[]') FROM starred_jobs s)
	)::text`).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (f *fixtures) publicKey(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))
}

func (f *fixtures) agent(t *testing.T) storage.Agent {
	t.Helper()
	line := f.publicKey(t)
	pub, _, _, _, _ := ssh.ParseAuthorizedKey([]byte(line))
	a, err := f.db.RegisterAgent(context.Background(), f.unique("agent"), line, ssh.FingerprintSHA256(pub))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (f *fixtures) build(t *testing.T) int64 {
	t.Helper()
	j := f.jobset(t)
	var id int64
	err := f.db.Pool().QueryRow(context.Background(), `WITH e AS (INSERT INTO evaluations (jobset_id) VALUES ($1) RETURNING id)
		INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system) SELECT e.id, $1, 'hello', '/nix/store/x.drv', 'x86_64-linux' FROM e
		RETURNING id`, j.ID).Scan(&id)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// stepBuild makes a build whose own step has status (and the build the same status),
// returning the build's and its evaluation's ids.
func (f *fixtures) stepBuild(t *testing.T, status string) (buildID, evalID int64) {
	t.Helper()
	j := f.jobset(t)
	drv := fmt.Sprintf("/nix/store/%032d-%s.drv", f.n.Add(1), status)
	err := f.db.Pool().QueryRow(context.Background(), `WITH e AS (INSERT INTO evaluations (jobset_id) VALUES ($1) RETURNING id),
		s AS (INSERT INTO steps (drv_path, system, status) VALUES ($2, 'x86_64-linux', $3) RETURNING id)
		INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, step_id, status)
		SELECT e.id, $1, 'hello', $2, 'x86_64-linux', s.id, $3 FROM e, s
		RETURNING id, evaluation_id`, j.ID, drv, status).Scan(&buildID, &evalID)
	if err != nil {
		t.Fatal(err)
	}
	return buildID, evalID
}

func (f *fixtures) jobset(t *testing.T) storage.Jobset {
	t.Helper()
	return f.ownedJobset(t, 0)
}

// TestAuthz_RouteTable checks every write route and every admin-only read, over the
// real router, for every kind of caller. The expected statuses are written out by
// hand on purpose (not computed from auth.Allows), so a change to the rules or to a
// route's permission shows up here. Later issues add their routes to this table.
func TestAuthz_RouteTable(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	f := &fixtures{db: e.db}
	f.other, _ = e.keyWithID(storage.RoleCreateProjects)
	// An unknown key that looks like a real one.
	unknown, _, err := auth.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	type principal struct {
		name string
		id   int64 // the key's id, 0 for none
		key  string
		want func(statusFor) int
	}
	withRole := func(role string, want func(statusFor) int) principal {
		id, key := e.keyWithID(role)
		return principal{role, id, key, want}
	}
	principals := []principal{
		{"no key", 0, "", func(s statusFor) int { return s.NoKey }},
		{"unknown key", 0, unknown, func(s statusFor) int { return s.UnknownKey }},
		withRole(storage.RoleReadOnly, func(s statusFor) int { return s.ReadOnly }),
		withRole(storage.RoleCreateProjects, func(s statusFor) int { return s.CreateProjects }),
		withRole(storage.RoleEvalJobset, func(s statusFor) int { return s.EvalJobset }),
		withRole(storage.RoleCancelBuild, func(s statusFor) int { return s.CancelBuild }),
		withRole(storage.RoleRestartJobs, func(s statusFor) int { return s.RestartJobs }),
		withRole(storage.RoleBumpToFront, func(s statusFor) int { return s.BumpToFront }),
		withRole(storage.RoleAdmin, func(s statusFor) int { return s.Admin }),
	}

	routes := []authzRoute{
		{"POST /api/v1/projects",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 201, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 201},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", "/api/v1/projects", obj{"name": f.unique("new"), "repository_url": "https://example.org/n.git"}
			}, nil},
		// Projects and their jobsets (ownership, Hydra's model): a create-projects key
		// manages the projects it owns, never another key's, nor one with no owner
		// (made before ownership, or whose key was deleted); admins manage all. Owning
		// a project grants nothing to a key whose role is not create-projects.
		{"PUT /api/v1/projects/{id} (no owner)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "PUT", fmt.Sprintf("/api/v1/projects/%d", f.project(t).ID), obj{"description": "changed"}
			}, nil},
		{"PUT /api/v1/projects/{id} (the caller's own)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 200, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			nil, func(t *testing.T, f *fixtures, caller int64) (string, string, any) {
				return "PUT", fmt.Sprintf("/api/v1/projects/%d", f.ownedProject(t, caller).ID), obj{"description": "changed"}
			}},
		{"PUT /api/v1/projects/{id} (another key's)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "PUT", fmt.Sprintf("/api/v1/projects/%d", f.ownedProject(t, f.other).ID), obj{"description": "changed"}
			}, nil},
		{"DELETE /api/v1/projects/{id} (no owner)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 204},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "DELETE", fmt.Sprintf("/api/v1/projects/%d", f.project(t).ID), nil
			}, nil},
		{"DELETE /api/v1/projects/{id} (the caller's own)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 204, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 204},
			nil, func(t *testing.T, f *fixtures, caller int64) (string, string, any) {
				return "DELETE", fmt.Sprintf("/api/v1/projects/%d", f.ownedProject(t, caller).ID), nil
			}},
		{"DELETE /api/v1/projects/{id} (another key's)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 204},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "DELETE", fmt.Sprintf("/api/v1/projects/%d", f.ownedProject(t, f.other).ID), nil
			}, nil},
		{"POST /api/v1/projects/{pid}/jobsets (no owner)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 201},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", f.project(t).ID), obj{"name": "main"}
			}, nil},
		{"POST /api/v1/projects/{pid}/jobsets (the caller's own)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 201, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 201},
			nil, func(t *testing.T, f *fixtures, caller int64) (string, string, any) {
				return "POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", f.ownedProject(t, caller).ID), obj{"name": "main"}
			}},
		{"POST /api/v1/projects/{pid}/jobsets (another key's)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 201},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", f.ownedProject(t, f.other).ID), obj{"name": "main"}
			}, nil},
		{"PUT /api/v1/projects/{pid}/jobsets/{id} (no owner)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				j := f.jobset(t)
				return "PUT", jobsetPath(j.ProjectID, j.ID), obj{"description": "changed"}
			}, nil},
		{"PUT /api/v1/projects/{pid}/jobsets/{id} (the caller's own)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 200, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			nil, func(t *testing.T, f *fixtures, caller int64) (string, string, any) {
				j := f.ownedJobset(t, caller)
				return "PUT", jobsetPath(j.ProjectID, j.ID), obj{"description": "changed"}
			}},
		{"PUT /api/v1/projects/{pid}/jobsets/{id} (another key's)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				j := f.ownedJobset(t, f.other)
				return "PUT", jobsetPath(j.ProjectID, j.ID), obj{"description": "changed"}
			}, nil},
		{"DELETE /api/v1/projects/{pid}/jobsets/{id} (no owner)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 204},
			func(t *testing.T, f *fixtures) (string, string, any) {
				j := f.jobset(t)
				return "DELETE", jobsetPath(j.ProjectID, j.ID), nil
			}, nil},
		{"DELETE /api/v1/projects/{pid}/jobsets/{id} (the caller's own)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 204, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 204},
			nil, func(t *testing.T, f *fixtures, caller int64) (string, string, any) {
				j := f.ownedJobset(t, caller)
				return "DELETE", jobsetPath(j.ProjectID, j.ID), nil
			}},
		{"DELETE /api/v1/projects/{pid}/jobsets/{id} (another key's)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 204},
			func(t *testing.T, f *fixtures) (string, string, any) {
				j := f.ownedJobset(t, f.other)
				return "DELETE", jobsetPath(j.ProjectID, j.ID), nil
			}, nil},
		// Local repositories (a path on the agents' machines) are for admins only.
		{"POST /api/v1/projects (file:// repository_url)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 201},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", "/api/v1/projects", obj{"name": f.unique("new"), "repository_url": "file:///srv/git/r.git"}
			}, nil},
		{"POST /api/v1/projects (absolute path repository_url)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 201},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", "/api/v1/projects", obj{"name": f.unique("new"), "repository_url": "/srv/git/r.git"}
			}, nil},
		{"PUT /api/v1/projects/{id} (the caller's own, to a local repository_url)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			nil, func(t *testing.T, f *fixtures, caller int64) (string, string, any) {
				return "PUT", fmt.Sprintf("/api/v1/projects/%d", f.ownedProject(t, caller).ID), obj{"repository_url": "file:///srv/git/r.git"}
			}},
		{"POST /api/v1/projects/{pid}/jobsets (the caller's own, a local git input)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 201},
			nil, func(t *testing.T, f *fixtures, caller int64) (string, string, any) {
				return "POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", f.ownedProject(t, caller).ID),
					obj{"name": "main", "inputs": []obj{{"name": "nixpkgs", "type": "git", "value": "/srv/git/nixpkgs main"}}}
			}},
		// Giving a project to another key is for admins only, even for its owner.
		{"PUT /api/v1/projects/{id} (the caller's own, owner_key_id another key)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			nil, func(t *testing.T, f *fixtures, caller int64) (string, string, any) {
				return "PUT", fmt.Sprintf("/api/v1/projects/%d", f.ownedProject(t, caller).ID), obj{"owner_key_id": f.other}
			}},
		{"GET /api/v1/api-keys",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "GET", "/api/v1/api-keys", nil
			}, nil},
		{"POST /api/v1/api-keys",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 201},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", "/api/v1/api-keys", obj{"name": f.unique("k"), "role": "read-only"}
			}, nil},
		{"DELETE /api/v1/api-keys/{id}",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 204},
			func(t *testing.T, f *fixtures) (string, string, any) {
				k, _, err := auth.CreateKey(context.Background(), f.db, f.unique("victim"), storage.RoleReadOnly)
				if err != nil {
					t.Fatal(err)
				}
				return "DELETE", fmt.Sprintf("/api/v1/api-keys/%d", k.ID), nil
			}, nil},
		// Agents (the fleet issue): every write, and nothing else, is for admins.
		{"POST /api/v1/agents",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 201},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", "/api/v1/agents", obj{"name": f.unique("a"), "public_key": f.publicKey(t)}
			}, nil},
		{"DELETE /api/v1/agents/{id}",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 204},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "DELETE", fmt.Sprintf("/api/v1/agents/%d", f.agent(t).ID), nil
			}, nil},
		{"PUT /api/v1/agents/{id}",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "PUT", fmt.Sprintf("/api/v1/agents/%d", f.agent(t).ID), obj{"push": true}
			}, nil},
		{"POST /api/v1/agents/{id}/drain",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", fmt.Sprintf("/api/v1/agents/%d/drain", f.agent(t).ID), nil
			}, nil},
		{"POST /api/v1/agents/{id}/enable",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", fmt.Sprintf("/api/v1/agents/%d/enable", f.agent(t).ID), nil
			}, nil},
		{"POST /api/v1/agents/{id}/disable",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", fmt.Sprintf("/api/v1/agents/%d/disable", f.agent(t).ID), nil
			}, nil},
		{"POST /api/v1/agents/tokens",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 201},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", "/api/v1/agents/tokens", obj{"name": f.unique("tok")}
			}, nil},
		{"GET /api/v1/agents",
			statusFor{NoKey: 200, UnknownKey: 401, ReadOnly: 200, CreateProjects: 200, EvalJobset: 200, CancelBuild: 200, RestartJobs: 200, BumpToFront: 200, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "GET", "/api/v1/agents", nil
			}, nil},
		// Deliveries of notifications (the forges issue): where they went and how they
		// fared is for admins.
		{"GET /api/v1/notifications/deliveries",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "GET", "/api/v1/notifications/deliveries?status=failed", nil
			}, nil},
		// Cache retention (the cache issue).
		{"PUT /api/v1/builds/{id}/keep/{keep}",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "PUT", fmt.Sprintf("/api/v1/builds/%d/keep/1", f.build(t)), nil
			}, nil},
		// Build actions (the builds issue): each needs its own role (or admin).
		{"POST /api/v1/builds/{id}/cancel",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 200, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				id, _ := f.stepBuild(t, "queued")
				return "POST", fmt.Sprintf("/api/v1/builds/%d/cancel", id), nil
			}, nil},
		{"POST /api/v1/builds/{id}/restart",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 200, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				id, _ := f.stepBuild(t, "failed")
				return "POST", fmt.Sprintf("/api/v1/builds/%d/restart", id), nil
			}, nil},
		{"POST /api/v1/builds/{id}/bump",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 200, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				id, _ := f.stepBuild(t, "queued")
				return "POST", fmt.Sprintf("/api/v1/builds/%d/bump", id), nil
			}, nil},
		{"POST /api/v1/evaluations/{id}/cancel",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 200, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				_, ev := f.stepBuild(t, "queued")
				return "POST", fmt.Sprintf("/api/v1/evaluations/%d/cancel", ev), nil
			}, nil},
		{"POST /api/v1/evaluations/{id}/restart-failed",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 200, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				_, ev := f.stepBuild(t, "failed")
				return "POST", fmt.Sprintf("/api/v1/evaluations/%d/restart-failed", ev), nil
			}, nil},
		{"GET /api/v1/queue",
			statusFor{NoKey: 200, UnknownKey: 401, ReadOnly: 200, CreateProjects: 200, EvalJobset: 200, CancelBuild: 200, RestartJobs: 200, BumpToFront: 200, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "GET", "/api/v1/queue", nil
			}, nil},
		{"GET /api/v1/cache/public-key",
			statusFor{NoKey: 200, UnknownKey: 401, ReadOnly: 200, CreateProjects: 200, EvalJobset: 200, CancelBuild: 200, RestartJobs: 200, BumpToFront: 200, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "GET", "/api/v1/cache/public-key", nil
			}, nil},
		// Evaluations (the evaluation issue).
		{"POST /api/v1/evaluations/trigger",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 202, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 202},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", "/api/v1/evaluations/trigger", obj{"jobset_id": f.jobset(t).ID}
			}, nil},
		// Webhooks answer to their HMAC signature only: an API key grants nothing there.
		{"POST /api/v1/webhooks/{project}/github",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 401, CreateProjects: 401, EvalJobset: 401, CancelBuild: 401, RestartJobs: 401, BumpToFront: 401, Admin: 401},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", fmt.Sprintf("/api/v1/webhooks/%d/github", f.project(t).ID), obj{"ref": "refs/heads/main"}
			}, nil},
		{"POST /api/v1/webhooks/{project}/gitea",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 401, CreateProjects: 401, EvalJobset: 401, CancelBuild: 401, RestartJobs: 401, BumpToFront: 401, Admin: 401},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", fmt.Sprintf("/api/v1/webhooks/%d/gitea", f.project(t).ID), obj{"ref": "refs/heads/main"}
			}, nil},
		{"POST /api/v1/webhooks/{project}/github by name",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 401, CreateProjects: 401, EvalJobset: 401, CancelBuild: 401, RestartJobs: 401, BumpToFront: 401, Admin: 401},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", "/api/v1/webhooks/" + f.project(t).Name + "/github", obj{"ref": "refs/heads/main"}
			}, nil},
		{"GET /api/v1/evaluations",
			statusFor{NoKey: 200, UnknownKey: 401, ReadOnly: 200, CreateProjects: 200, EvalJobset: 200, CancelBuild: 200, RestartJobs: 200, BumpToFront: 200, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "GET", "/api/v1/evaluations", nil
			}, nil},
		// Accounts (the people part of the dashboard issue): admins manage them.
		{"GET /api/v1/users",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "GET", "/api/v1/users", nil
			}, nil},
		{"POST /api/v1/users",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 201},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", "/api/v1/users", obj{"username": f.unique("new"), "password": "long-enough", "role": "read-only"}
			}, nil},
		{"GET /api/v1/users/{id}",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "GET", fmt.Sprintf("/api/v1/users/%d", f.user(t, storage.RoleReadOnly).ID), nil
			}, nil},
		{"PUT /api/v1/users/{id}",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "PUT", fmt.Sprintf("/api/v1/users/%d", f.user(t, storage.RoleReadOnly).ID), obj{"role": "admin"}
			}, nil},
		{"DELETE /api/v1/users/{id}",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 204},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "DELETE", fmt.Sprintf("/api/v1/users/%d", f.user(t, storage.RoleReadOnly).ID), nil
			}, nil},
		// The signed-in user's own: an API key has no account (403), even an admin's.
		{"GET /api/v1/me",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 403},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "GET", "/api/v1/me", nil
			}, nil},
		{"PUT /api/v1/me",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 403},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "PUT", "/api/v1/me", obj{"full_name": "Someone"}
			}, nil},
		{"POST /api/v1/me/password",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 403},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", "/api/v1/me/password", obj{"current": "long-enough", "new": "longer-still"}
			}, nil},
		{"GET /api/v1/me/starred-jobs",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 403},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "GET", "/api/v1/me/starred-jobs", nil
			}, nil},
		{"POST /api/v1/me/starred-jobs",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 403},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", "/api/v1/me/starred-jobs", obj{"jobset_id": f.jobset(t).ID, "job": "hello"}
			}, nil},
		{"DELETE /api/v1/me/starred-jobs",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 403},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "DELETE", "/api/v1/me/starred-jobs", obj{"jobset_id": f.jobset(t).ID, "job": "hello"}
			}, nil},
		// A project a user owns: no key manages it but an admin's.
		{"PUT /api/v1/projects/{id} (a user's)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "PUT", fmt.Sprintf("/api/v1/projects/%d", f.userProject(t).ID), obj{"description": "changed"}
			}, nil},
		{"POST /api/v1/projects/{pid}/jobsets (a user's)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 201},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", f.userProject(t).ID), obj{"name": "main"}
			}, nil},
		{"DELETE /api/v1/projects/{id} (a user's)",
			statusFor{NoKey: 401, UnknownKey: 401, ReadOnly: 403, CreateProjects: 403, EvalJobset: 403, CancelBuild: 403, RestartJobs: 403, BumpToFront: 403, Admin: 204},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "DELETE", fmt.Sprintf("/api/v1/projects/%d", f.userProject(t).ID), nil
			}, nil},
		// Public reads: anyone, except a caller presenting a key nobody knows.
		{"GET /api/v1/projects",
			statusFor{NoKey: 200, UnknownKey: 401, ReadOnly: 200, CreateProjects: 200, EvalJobset: 200, CancelBuild: 200, RestartJobs: 200, BumpToFront: 200, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				return "GET", "/api/v1/projects", nil
			}, nil},
		{"GET /api/v1/projects/{pid}/jobsets/{id}",
			statusFor{NoKey: 200, UnknownKey: 401, ReadOnly: 200, CreateProjects: 200, EvalJobset: 200, CancelBuild: 200, RestartJobs: 200, BumpToFront: 200, Admin: 200},
			func(t *testing.T, f *fixtures) (string, string, any) {
				j := f.jobset(t)
				return "GET", jobsetPath(j.ProjectID, j.ID), nil
			}, nil},
	}

	for _, rt := range routes {
		t.Run(rt.route, func(t *testing.T) {
			for _, p := range principals {
				want := p.want(rt.want)
				if want == 0 {
					t.Fatalf("the table has no status for %s", p.name)
				}
				var method, path string
				var body any
				if rt.reqBy != nil {
					method, path, body = rt.reqBy(t, f, p.id)
				} else {
					method, path, body = rt.req(t, f)
				}
				before, beforePeople := e.in(t).snapshot(), f.people(t)
				r := do(t, e.srv.URL, method, path, p.key, body)
				if r.Status != want {
					t.Errorf("%s: %s %s = %d, want %d; body: %s", p.name, method, path, r.Status, want, r.Body)
					continue
				}
				if want >= 400 {
					r.apiErr(t, want)
					if after := e.in(t).snapshot(); after != before || f.people(t) != beforePeople {
						t.Errorf("%s: refused %s %s changed the database", p.name, method, path)
					}
				}
			}
		})
	}
}

func TestAuthz_MalformedAuthorizationIs401(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	for _, h := range []string{"Bearer", "Bearer ", "Basic YWRtaW46YWRtaW4=", e.admin, "Token " + e.admin} {
		req, err := http.NewRequest("GET", e.srv.URL+"/api/v1/projects", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", h)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("Authorization %q: status %d, want 401", h, resp.StatusCode)
		}
	}
	// The scheme is case-insensitive.
	req, _ := http.NewRequest("GET", e.srv.URL+"/api/v1/api-keys", nil)
	req.Header.Set("Authorization", "bearer "+e.admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("lower-case bearer: status %d, want 200", resp.StatusCode)
	}
}

// The key as the password of HTTP basic authentication (a netrc, a browser's prompt)
// authenticates reads; never a write or a WebSocket, which a browser would send it
// with by itself.
func TestAuthz_BasicKeyAuthenticatesReadsOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	send := func(method, path string, upgrade bool) int {
		req, err := http.NewRequest(method, e.srv.URL+path, strings.NewReader(`{"name": "basic", "repository_url": "https://example.com/r.git"}`))
		if err != nil {
			t.Fatal(err)
		}
		req.SetBasicAuth("anyone", e.admin)
		if upgrade {
			req.Header.Set("Connection", "Upgrade")
			req.Header.Set("Upgrade", "websocket")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := send("GET", "/api/v1/api-keys", false); got != http.StatusOK {
		t.Errorf("admin read with the key as basic password: %d, want 200", got)
	}
	if got := send("POST", "/api/v1/projects", false); got != http.StatusUnauthorized {
		t.Errorf("write with the key as basic password: %d, want 401", got)
	}
	if got := send("GET", "/api/v1/agent/connect", true); got != http.StatusUnauthorized {
		t.Errorf("WebSocket with the key as basic password: %d, want 401", got)
	}
}
