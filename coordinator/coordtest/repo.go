package coordtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Repo is a real git repository in a temp dir.
type Repo struct {
	t   testing.TB
	Dir string
}

// NewRepo makes an empty repository with a main branch.
func NewRepo(t testing.TB) *Repo {
	t.Helper()
	r := &Repo{t: t, Dir: t.TempDir()}
	r.Git("init", "-q", "-b", "main")
	return r
}

// Git runs git in the repository and returns its trimmed output.
func (r *Repo) Git(args ...string) string {
	r.t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "user.name=FC Test", "-c", "user.email=test@example.org"}, args...)...)
	cmd.Dir = r.Dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		r.t.Fatalf("git %v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// Commit writes files and commits them, returning the commit id.
func (r *Repo) Commit(files map[string]string) string {
	r.t.Helper()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(r.Dir, name), []byte(body), 0o644); err != nil {
			r.t.Fatal(err)
		}
	}
	r.Git("add", "-A")
	r.Git("commit", "-q", "-m", "change")
	return r.Git("rev-parse", "HEAD")
}

// Project creates a project on repoDir with one legacy release.nix jobset (fields in
// jobset override the defaults) through the API, and returns their ids.
func (c *Coordinator) Project(name, repoDir string, jobset map[string]any) (projectID, jobsetID int64) {
	c.t.Helper()
	var p struct{ ID int64 }
	if code := c.Do("POST", "/api/v1/projects", c.Admin, map[string]any{"name": name, "repository_url": repoDir,
		"webhook_secret": "a-very-secret-webhook-key"}, &p); code != 201 {
		c.t.Fatalf("create project: %d", code)
	}
	body := map[string]any{"name": "main", "branch": "main", "flake_mode": false, "nix_expression": "release.nix", "check_interval": 0}
	for k, v := range jobset {
		body[k] = v
	}
	var j struct{ ID int64 }
	if code := c.Do("POST", fmt.Sprintf("/api/v1/projects/%d/jobsets", p.ID), c.Admin, body, &j); code != 201 {
		c.t.Fatalf("create jobset: %d", code)
	}
	return p.ID, j.ID
}

// Trigger asks for an evaluation of a jobset and returns the id of the evaluation it
// created (0: none, the inputs are unchanged or it waits for the newest evaluation).
func (c *Coordinator) Trigger(jobsetID int64, force bool) int64 {
	c.t.Helper()
	var out struct {
		EvaluationID *int64 `json:"evaluation_id"`
	}
	if code := c.Do("POST", "/api/v1/evaluations/trigger", c.Admin, map[string]any{"jobset_id": jobsetID, "force": force}, &out); code != 202 && code != 200 {
		c.t.Fatalf("trigger: %d", code)
	}
	if out.EvaluationID == nil {
		return 0
	}
	return *out.EvaluationID
}
