package client

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Table columns of each list, and the sections of each show (functions: fc keeps
// no package-level state).
func projectCols() []column {
	return []column{{Key: "id", Header: "ID"}, {Key: "name", Header: "NAME"}, {Key: "enabled", Header: "ENABLED"},
		{Key: "owner_key_name", Header: "OWNER"}, {Key: "repository_url", Header: "REPOSITORY"}}
}

func jobsetCols() []column {
	return []column{{Key: "id", Header: "ID"}, {Key: "name", Header: "NAME"}, {Key: "state", Header: "STATE"},
		{Key: "branch", Header: "BRANCH"}, {Key: "check_interval", Header: "INTERVAL"}, {Key: "last_checked_at", Header: "CHECKED"},
		{Key: "last_check_error", Header: "ERROR", Format: short(60)}}
}

func evalCols() []column {
	return []column{{Key: "id", Header: "ID"}, {Key: "status", Header: "STATUS"}, {Key: "commit", Header: "COMMIT", Format: short(12)},
		{Key: "nr_jobs", Header: "JOBS"}, {Key: "nr_new_builds", Header: "NEW"}, {Key: "nr_builds", Header: "BUILDS"},
		{Key: "nr_errors", Header: "ERRORS"}, {Key: "builds_by_status", Header: "BY STATUS"}, {Key: "created_at", Header: "CREATED"}}
}

func buildCols() []column {
	return []column{{Key: "id", Header: "ID"}, {Key: "evaluation_id", Header: "EVAL"}, {Key: "project", Header: "PROJECT"},
		{Key: "jobset", Header: "JOBSET"}, {Key: "job", Header: "JOB"}, {Key: "system", Header: "SYSTEM"}, {Key: "status", Header: "STATUS"}}
}

func agentCols() []column {
	return []column{{Key: "id", Header: "ID"}, {Key: "name", Header: "NAME"}, {Key: "connected", Header: "CONNECTED"},
		{Key: "enabled", Header: "ENABLED"}, {Key: "draining", Header: "DRAINING"}, {Key: "running", Header: "RUNNING"},
		{Key: "max_jobs", Header: "MAX JOBS"}, {Key: "roles", Header: "ROLES"}, {Key: "systems", Header: "SYSTEMS"},
		{Key: "agent_version", Header: "VERSION"}, {Key: "last_seen", Header: "LAST SEEN"}}
}

func evalSections() map[string][]column {
	return map[string][]column{"errors": {{Key: "attr", Header: "ATTRIBUTE"}, {Key: "message", Header: "MESSAGE", Format: short(120)}}}
}

func buildSections() map[string][]column {
	return map[string][]column{
		"steps": {{Key: "id", Header: "ID"}, {Key: "status", Header: "STATUS"}, {Key: "agent", Header: "AGENT"},
			{Key: "attempts", Header: "ATTEMPTS"}, {Key: "log_size", Header: "LOG"}, {Key: "drv_path", Header: "DERIVATION", Format: storeName}},
		"products": {{Key: "nr", Header: "NR"}, {Key: "type", Header: "TYPE"}, {Key: "subtype", Header: "SUBTYPE"},
			{Key: "name", Header: "NAME"}, {Key: "path", Header: "PATH"}},
		"metrics": {{Key: "name", Header: "NAME"}, {Key: "value", Header: "VALUE"}, {Key: "unit", Header: "UNIT"}},
	}
}

// listOut prints a list as a table, or its JSON.
func (c *cmdEnv) listOut(ctx context.Context, path string, q url.Values, cols []column) error {
	items, raw, err := c.api.list(ctx, path, q, c.limit, c.offset)
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(c.Stdout, raw)
	}
	return writeTable(c.Stdout, cols, items)
}

// showOut prints one object as key/value lines, or its JSON.
func (c *cmdEnv) showOut(ctx context.Context, path string, sections map[string][]column) error {
	raw, err := c.api.do(ctx, http.MethodGet, path, nil, nil)
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(c.Stdout, raw)
	}
	return writeShow(c.Stdout, raw, sections)
}

func runProjects(ctx context.Context, c *cmdEnv, args []string) error {
	if err := wantArgs("projects", args, 0, 1, "[NAME]"); err != nil {
		return err
	}
	if len(args) == 1 {
		return c.showOut(ctx, "/projects/"+url.PathEscape(args[0]), nil)
	}
	return c.listOut(ctx, "/projects", nil, projectCols())
}

func runJobsets(ctx context.Context, c *cmdEnv, args []string) error {
	if len(args) == 1 && strings.Contains(args[0], "/") { // fc jobsets P/J shows one too
		args = strings.SplitN(args[0], "/", 2)
	}
	if err := wantArgs("jobsets", args, 1, 2, "PROJECT [JOBSET]"); err != nil {
		return err
	}
	path := "/projects/" + url.PathEscape(args[0]) + "/jobsets"
	if len(args) == 2 {
		return c.showOut(ctx, path+"/"+url.PathEscape(args[1]), nil)
	}
	return c.listOut(ctx, path, nil, jobsetCols())
}

// jobsetRef checks a PROJECT/JOBSET argument.
func jobsetRef(s string) (string, error) {
	p, j, ok := strings.Cut(s, "/")
	if !ok || p == "" || j == "" || strings.Contains(j, "/") {
		return "", usagef("%q is not PROJECT/JOBSET", s)
	}
	return s, nil
}

func runEvals(ctx context.Context, c *cmdEnv, args []string) error {
	if err := wantArgs("evals", args, 1, 1, "PROJECT/JOBSET"); err != nil {
		return err
	}
	ref, err := jobsetRef(args[0])
	if err != nil {
		return err
	}
	return c.listOut(ctx, "/evaluations", url.Values{"jobset_id": {ref}}, evalCols())
}

// idArg reads a positive numeric id.
func idArg(what, s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, usagef("%s must be a number, not %q", what, s)
	}
	return n, nil
}

func runEval(ctx context.Context, c *cmdEnv, args []string) error {
	if len(args) > 0 && args[0] == "trigger" {
		if err := wantArgs("eval trigger", args[1:], 1, 1, "PROJECT/JOBSET [--force]"); err != nil {
			return err
		}
		return c.trigger(ctx, args[1])
	}
	if err := wantArgs("eval", args, 1, 1, "ID | trigger PROJECT/JOBSET"); err != nil {
		return err
	}
	if c.force {
		return usagef("eval: --force is for fc eval trigger")
	}
	id, err := idArg("an evaluation's id", args[0])
	if err != nil {
		return err
	}
	return c.showOut(ctx, fmt.Sprintf("/evaluations/%d", id), evalSections())
}

// trigger asks for an evaluation and prints its id, or why there is none.
func (c *cmdEnv) trigger(ctx context.Context, arg string) error {
	ref, err := jobsetRef(arg)
	if err != nil {
		return err
	}
	if err := c.api.needKey(); err != nil {
		return err
	}
	raw, err := c.api.do(ctx, http.MethodPost, "/evaluations/trigger", nil, map[string]any{"jobset_id": ref, "force": c.force})
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(c.Stdout, raw)
	}
	var out struct {
		EvaluationID *int64 `json:"evaluation_id"`
		Reason       string `json:"reason"`
		WaitingFor   *int64 `json:"waiting_for"`
		Error        string `json:"error"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("decode trigger answer: %w", err)
	}
	switch {
	case out.EvaluationID != nil:
		fmt.Fprintln(c.Stdout, *out.EvaluationID)
	case out.WaitingFor != nil:
		fmt.Fprintf(c.Stdout, "%s %d\n", out.Reason, *out.WaitingFor)
	case out.Error != "":
		fmt.Fprintf(c.Stdout, "%s: %s\n", out.Reason, out.Error)
	default:
		fmt.Fprintln(c.Stdout, out.Reason)
	}
	return nil
}

func runBuilds(ctx context.Context, c *cmdEnv, args []string) error {
	if err := wantArgs("builds", args, 0, 0, "[--jobset P/J] [--status S] …"); err != nil {
		return err
	}
	q := url.Values{}
	if c.jobset != "" {
		ref, err := jobsetRef(c.jobset)
		if err != nil {
			return err
		}
		q.Set("jobset_id", ref)
	}
	if c.project != "" {
		q.Set("project_id", c.project)
	}
	if c.eval != 0 {
		q.Set("evaluation_id", strconv.FormatInt(c.eval, 10))
	}
	for k, v := range map[string]string{"status": c.status, "system": c.system, "job": c.job} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return c.listOut(ctx, "/builds", q, buildCols())
}

func runBuild(ctx context.Context, c *cmdEnv, args []string) error {
	if len(args) > 0 {
		switch act := args[0]; act {
		case "restart", "cancel", "bump":
			if err := wantArgs("build "+act, args[1:], 1, 1, "ID"); err != nil {
				return err
			}
			id, err := idArg("a build's id", args[1])
			if err != nil {
				return err
			}
			return c.buildAction(ctx, act, id)
		}
	}
	if err := wantArgs("build", args, 1, 1, "ID | restart ID | cancel ID | bump ID"); err != nil {
		return err
	}
	id, err := idArg("a build's id", args[0])
	if err != nil {
		return err
	}
	return c.showOut(ctx, fmt.Sprintf("/builds/%d", id), buildSections())
}

func (c *cmdEnv) buildAction(ctx context.Context, act string, id int64) error {
	if err := c.api.needKey(); err != nil {
		return err
	}
	raw, err := c.api.do(ctx, http.MethodPost, fmt.Sprintf("/builds/%d/%s", id, act), nil, nil)
	if err != nil {
		return err
	}
	if c.json {
		return writeJSON(c.Stdout, raw)
	}
	var out struct {
		Restarted int `json:"restarted_steps"`
		Bumped    int `json:"bumped_steps"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	switch act {
	case "restart":
		fmt.Fprintf(c.Stdout, "build %d: %s restarted\n", id, plural(out.Restarted, "step"))
	case "bump":
		fmt.Fprintf(c.Stdout, "build %d: %s moved to the front of the queue\n", id, plural(out.Bumped, "step"))
	default:
		fmt.Fprintf(c.Stdout, "build %d: cancelled\n", id)
	}
	return nil
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func runAgents(ctx context.Context, c *cmdEnv, args []string) error {
	if err := wantArgs("agents", args, 0, 1, "[NAME|ID]"); err != nil {
		return err
	}
	if len(args) == 0 {
		return c.listOut(ctx, "/agents", nil, agentCols())
	}
	if id, err := strconv.ParseInt(args[0], 10, 64); err == nil {
		return c.showOut(ctx, fmt.Sprintf("/agents/%d", id), nil)
	}
	// The API names agents by id; find the name in the list (a revoked agent may
	// share its name with a newer one: the one not revoked wins).
	items, _, err := c.api.list(ctx, "/agents", nil, 0, 0)
	if err != nil {
		return err
	}
	var found int64
	for _, it := range items {
		var a struct {
			ID      int64  `json:"id"`
			Name    string `json:"name"`
			Revoked bool   `json:"revoked"`
		}
		if json.Unmarshal(it, &a) == nil && a.Name == args[0] && (found == 0 || !a.Revoked) {
			found = a.ID
		}
	}
	if found == 0 {
		return &APIError{Status: http.StatusNotFound, Message: fmt.Sprintf("no agent is named %q", args[0])}
	}
	return c.showOut(ctx, fmt.Sprintf("/agents/%d", found), nil)
}
