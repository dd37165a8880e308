package openapi

func addBuilds(d *doc) {
	const t = "builds"
	id := []m{shared("buildID")}
	builds := jsonAnswer("a page of builds", buildPage())
	d.add("get", "/api/v1/builds", op{tag: t, summary: "List builds, newest first", who: "anyone", sec: anyone,
		desc: "total is exact (total_exact true) when fewer than 1,000 builds follow the page's first; otherwise it is a " +
			"lower bound, still past the page's end, so total > offset + len(items) says whether a next page exists. " +
			"Deep pages: ?before_id= with the last id of the page before (keyset), as fast at any depth as the first.",
		params: append([]m{
			query("evaluation_id", "every build of the evaluation, reused ones too", m{"type": "integer", "format": "int64", "minimum": 1}),
			shared("jobsetQuery"), shared("projectQuery"),
			query("status", "only builds with this status", enum("", buildStatuses...)),
			query("system", "only builds for this system", str("")),
			query("job", "only builds of this job", str("")),
			query("before_id", "only builds older than this one (the last id of the page before)",
				m{"type": "integer", "format": "int64", "minimum": 1}),
		}, pageParams...), ok: map[int]m{200: builds}})
	d.add("get", "/api/v1/builds/stats", op{tag: t, summary: "Builds by status; steps queued and running", who: "anyone",
		sec: anyone, ok: map[int]m{200: jsonAnswer("the counts", ref("BuildStats"))}})
	d.add("get", "/api/v1/builds/recent", op{tag: t, summary: "Finished builds, most recently finished first", who: "anyone",
		sec: anyone, desc: "total and total_exact as in GET /api/v1/builds.", params: pageParams, ok: map[int]m{200: builds}})
	d.add("get", "/api/v1/builds/{id}", op{tag: t, summary: "Get a build", who: "anyone", sec: anyone, params: id,
		desc: "With outputs, products, metrics, steps and constituents ([] when empty); an aborted build has reason.",
		ok:   map[int]m{200: jsonAnswer("the build", ref("Build"))}, errs: []int{404}})
	d.add("get", "/api/v1/builds/{id}/steps", op{tag: t, summary: "The steps a build needed, its own first", who: "anyone",
		sec: anyone, params: id, ok: map[int]m{200: jsonAnswer("the steps",
			object("items", m{"items": arr(ref("Step"), "")}))}, errs: []int{404}})
	logParams := append([]m{}, id...)
	logParams = append(logParams,
		query("step", "another step of the build (its id)", m{"type": "integer", "format": "int64", "minimum": 1}),
		query("tail", "only the last N lines", m{"type": "integer", "minimum": 1}))
	d.add("get", "/api/v1/builds/{id}/log", op{tag: t, summary: "A build's log as text", who: "anyone", sec: anyone,
		desc: "Works while the step runs and after; Range requests work. A step that ran and printed nothing is 200 " +
			"with an empty body; a dependency_failed build is 404 naming the failed build and its log's path.",
		params: append(logParams, header("Range", "bytes=...")),
		ok: map[int]m{200: textAnswer("the log", "text/plain"), 206: textAnswer("the requested part of the log", "text/plain"),
			416: textAnswer("the Range cannot be satisfied (Content-Range: bytes */<size>)", "text/plain")},
		errs: []int{404, 416}})
	d.add("get", "/api/v1/builds/{id}/log/stream", op{tag: t, summary: "Follow a build's log (WebSocket)", who: "anyone",
		sec: anyone, desc: "A WebSocket sending LogMessage JSON messages from ?offset= (bytes) or the last ?tail= lines, " +
			"following the step; reconnect with ?offset=<next> for no gap and no duplicate.",
		params: append(logParams, query("offset", "byte offset to start from", m{"type": "integer", "minimum": 0})),
		ok: map[int]m{101: m{"description": "switching to the WebSocket; each message is a LogMessage",
			"content": m{"application/json": m{"schema": ref("LogMessage")}}},
			400: textAnswer("not a WebSocket handshake", "text/plain")},
		errs: []int{404}})
	d.add("get", "/api/v1/builds/{id}/products/{nr}/download", op{tag: t, summary: "Download a file product",
		who: "anyone (an API key if cache.private)", sec: anyone,
		desc:   "Streamed out of the output's NAR in the cache; without a key while the cache is private, 401 with a basic challenge.",
		params: append(append([]m{}, id...), pathParam("nr", "the product's number", m{"type": "integer", "minimum": 1})),
		ok:     map[int]m{200: m{"description": "the file", "content": m{"application/octet-stream": m{"schema": m{"type": "string", "format": "binary"}}}}},
		errs:   []int{404}})
	action := func(path, summary, who, desc string, result m, errs ...int) {
		d.add("post", path, op{tag: t, summary: summary, who: who, sec: keyed, params: id, desc: desc,
			ok: map[int]m{200: jsonAnswer("what was done", result)}, errs: append([]int{403, 404}, errs...)})
	}
	action("/api/v1/builds/{id}/cancel", "Cancel a build (and what waits for it)", "admin, cancel-build",
		"A running builder is killed; 409 when there is nothing to cancel.",
		object("id cancelled", m{"id": integer(""), "cancelled": boolean("")}), 409)
	action("/api/v1/builds/{id}/restart", "Restart a build's failed steps", "admin, restart-jobs",
		"Runs its failed steps, and what failed because of them, again; 409 when nothing failed.",
		object("id restarted_steps", m{"id": integer(""), "restarted_steps": integer("")}), 409)
	action("/api/v1/builds/{id}/bump", "Move a build's unfinished steps to the front of the queue", "admin, bump-to-front",
		"409 when nothing is unfinished.", object("id bumped_steps", m{"id": integer(""), "bumped_steps": integer("")}), 409)
	d.add("put", "/api/v1/builds/{id}/keep/{keep}", op{tag: t, summary: "Keep (1) or stop keeping (0) a build's outputs in the cache",
		who: "admin", sec: keyed, params: append(append([]m{}, id...), pathParam("keep", "1 to keep, 0 not to (else 422)", enum("", "0", "1"))),
		ok:   map[int]m{200: jsonAnswer("the new setting", object("id keep", m{"id": integer(""), "keep": boolean("")}))},
		errs: []int{403, 404, 422}})
	d.add("get", "/api/v1/queue", op{tag: t, summary: "Steps queued and running, per system, and the first 200 in order",
		who: "anyone", sec: anyone, ok: map[int]m{200: jsonAnswer("the queue", ref("Queue"))}})
}

func addEvaluations(d *doc) {
	const t = "evaluations"
	id := []m{shared("evaluationID")}
	d.add("get", "/api/v1/evaluations", op{tag: t, summary: "List evaluations, newest first", who: "anyone", sec: anyone,
		params: append([]m{shared("projectQuery"), shared("jobsetQuery"),
			query("status", "only evaluations with this status", enum("", evalStatuses...))}, pageParams...),
		ok: map[int]m{200: jsonAnswer("a page of evaluations, each with nr_builds and builds_by_status",
			page(ref("Evaluation")))}})
	d.add("get", "/api/v1/evaluations/{id}", op{tag: t, summary: "Get an evaluation", who: "anyone", sec: anyone, params: id,
		desc: "With its counts and its errors per attribute.",
		ok:   map[int]m{200: jsonAnswer("the evaluation", ref("Evaluation"))}, errs: []int{404}})
	d.add("get", "/api/v1/evaluations/{id}/compare", op{tag: t, summary: "Compare an evaluation with another", who: "anyone",
		sec: anyone, desc: "Counts and builds per category, the first ?limit= of each by job; evaluation errors new and fixed. " +
			"?with= must name an evaluation (else 422; an unknown one is 404).",
		params: append(append([]m{}, id...),
			m{"name": "with", "in": "query", "required": true, "description": "the other evaluation's id",
				"schema": m{"type": "integer", "format": "int64", "minimum": 1}},
			query("limit", "builds listed per category (1 to 5000, default 500)", m{"type": "integer", "minimum": 1, "maximum": 5000, "default": 500})),
		ok: map[int]m{200: jsonAnswer("the comparison", ref("Comparison"))}, errs: []int{404}})
	trigger := "the result of the check"
	d.add("post", "/api/v1/evaluations/trigger", op{tag: t, summary: "Check a jobset now and evaluate if its inputs changed",
		who: "admin, eval-jobset", sec: keyed,
		desc: "202 {evaluation_id: N} when an evaluation was created; 200 {evaluation_id: null, reason: unchanged}; " +
			"202 with reason evaluation_in_progress or builds_unfinished (and waiting_for), or check_failed (and error): " +
			"the trigger stays pending for the scheduler. 409 for a disabled jobset.",
		body: closed(object("jobset_id", m{
			"jobset_id": m{"type": []string{"integer", "string"}, "description": "an id or \"project/jobset\""},
			"force":     boolean("evaluate even if nothing changed"),
		})),
		ok:   map[int]m{200: jsonAnswer(trigger, ref("TriggerResult")), 202: jsonAnswer(trigger, ref("TriggerResult"))},
		errs: []int{403, 404, 409}})
	action := func(path, summary, who string, result m) {
		d.add("post", path, op{tag: t, summary: summary, who: who, sec: keyed, params: id,
			ok: map[int]m{200: jsonAnswer("what was done", result)}, errs: []int{403, 404, 409}})
	}
	action("/api/v1/evaluations/{id}/cancel", "Cancel an evaluation's queued and running builds", "admin, cancel-build",
		object("id cancelled_builds", m{"id": integer(""), "cancelled_builds": integer("")}))
	action("/api/v1/evaluations/{id}/restart-failed", "Restart an evaluation's failed builds", "admin, restart-jobs",
		object("id restarted_steps", m{"id": integer(""), "restarted_steps": integer("")}))

	for _, f := range []struct{ forge, desc string }{
		{"github", "GitHub push and pull_request events (X-GitHub-Event, X-Hub-Signature-256)."},
		{"gitea", "Gitea (and Forgejo) push and pull_request events (X-Gitea-Event, X-Gitea-Signature)."},
		{"forgejo", "Forgejo push and pull_request events (X-Forgejo-Event, X-Forgejo-Signature)."},
		{"gitlab", "GitLab Push Hook and Merge Request Hook events (X-Gitlab-Event; X-Gitlab-Token is the project's webhook_secret)."},
	} {
		d.add("post", "/api/v1/webhooks/{project}/"+f.forge, op{tag: "webhooks", summary: "A " + f.forge + " webhook",
			who: "HMAC (the project's webhook_secret)", sec: none,
			desc:   f.desc + " A bad signature is 401 and triggers nothing; an event that changes nothing is 200 with ignored.",
			params: []m{pathParam("project", "the project's id or name", str(""))},
			body:   m{"type": "object", "description": "the forge's event payload"}, rawBody: true,
			ok: map[int]m{200: jsonAnswer("what the event did: the evaluations a push requested, why an event was ignored, "+
				"or what a pull request event changed", object("", m{
				"triggered": arr(integer(""), "the jobsets whose evaluation a push requested"),
				"ignored":   str("why the event changes nothing"),
			}))}, errs: []int{401, 404}})
	}
}

// buildPage is a page of builds: the list envelope and whether its total is exact.
func buildPage() m {
	p := page(ref("BuildSummary"))
	p["required"] = append(p["required"].([]string), "total_exact")
	p["properties"].(m)["total_exact"] = boolean("true: total is how many builds match; false: at least that many do " +
		"(counted no further than 1,000 builds past the page's first)")
	return p
}
