package openapi

// declaredNote says how the API treats objects declared in configuration.
const declaredNote = " An object declared in configuration (declared: true) is refused with 409 naming the file that declares it."

func addProjects(d *doc) {
	const t = "projects"
	project := jsonAnswer("the project", ref("Project"))
	d.add("get", "/api/v1/projects", op{tag: t, summary: "List projects", who: "anyone", sec: anyone,
		params: pageParams, ok: map[int]m{200: jsonAnswer("a page of projects", page(ref("Project")))}})
	d.add("post", "/api/v1/projects", op{tag: t, summary: "Create a project", who: "admin, create-projects", sec: keyed,
		desc: "The creating key (or user) owns it unless an admin names owner_key_id. 409 when the name is taken; " +
			"403 for a file URL or local path from a non-admin.",
		body: ref("ProjectInput"), ok: map[int]m{201: project}, errs: []int{403, 409}})
	d.add("get", "/api/v1/projects/{id}", op{tag: t, summary: "Get a project", who: "anyone", sec: anyone,
		params: []m{shared("projectRef")}, ok: map[int]m{200: project}, errs: []int{404}})
	d.add("put", "/api/v1/projects/{id}", op{tag: t, summary: "Change a project", who: "admin, its owner", sec: keyed,
		desc: "Changes the fields given (in forge and notifications too: a token or secret left out stays, \"\" clears it). " +
			"A declared project is refused (409, naming the file) unless the request sets only what configuration " +
			"cannot declare (webhook_secret, fetch_credentials, forge, notifications).",
		params: []m{shared("projectRef")}, body: ref("ProjectInput"), ok: map[int]m{200: project}, errs: []int{403, 404, 409}})
	d.add("delete", "/api/v1/projects/{id}", op{tag: t, summary: "Delete a project with its jobsets, evaluations and builds",
		who: "admin, its owner", sec: keyed, params: []m{shared("projectRef")}, desc: declaredNote,
		ok: map[int]m{204: noContent("deleted")}, errs: []int{403, 404, 409}})

	jobset := jsonAnswer("the jobset", ref("Jobset"))
	jsParams := []m{shared("projectPID"), shared("jobsetRef")}
	d.add("get", "/api/v1/projects/{pid}/jobsets", op{tag: t, summary: "List a project's jobsets", who: "anyone", sec: anyone,
		params: append([]m{shared("projectPID"), query("all", "also the hidden ones (closed pull requests'); other values are 422",
			m{"type": "string", "enum": []string{"true", "false", "1", "0"}})}, pageParams...),
		ok: map[int]m{200: jsonAnswer("a page of jobsets", page(ref("Jobset")))}, errs: []int{404, 422}})
	d.add("post", "/api/v1/projects/{pid}/jobsets", op{tag: t, summary: "Create a jobset", who: "admin, the project's owner",
		sec: keyed, desc: "A git input naming a local repository and a path input only from an admin (else 403). " +
			"409 for a taken name, and in a declared project (its jobsets are what configuration declares).",
		params: []m{shared("projectPID")}, body: ref("JobsetInput"), ok: map[int]m{201: jobset}, errs: []int{403, 404, 409}})
	d.add("get", "/api/v1/projects/{pid}/jobsets/{id}", op{tag: t, summary: "Get a jobset", who: "anyone", sec: anyone,
		params: jsParams, ok: map[int]m{200: jobset}, errs: []int{404}})
	d.add("put", "/api/v1/projects/{pid}/jobsets/{id}", op{tag: t, summary: "Change a jobset", who: "admin, the project's owner",
		sec: keyed, desc: "Changes the fields given; inputs replaces the list." + declaredNote,
		params: jsParams, body: ref("JobsetInput"), ok: map[int]m{200: jobset}, errs: []int{403, 404, 409}})
	d.add("delete", "/api/v1/projects/{pid}/jobsets/{id}", op{tag: t, summary: "Delete a jobset", who: "admin, the project's owner",
		sec: keyed, params: jsParams, desc: declaredNote, ok: map[int]m{204: noContent("deleted")}, errs: []int{403, 404, 409}})

	d.add("get", "/api/v1/api-keys", op{tag: t, summary: "List API keys (never the key)", who: "admin", sec: keyed,
		params: pageParams, ok: map[int]m{200: jsonAnswer("a page of keys", page(ref("APIKey")))}, errs: []int{403, 422}})
	d.add("post", "/api/v1/api-keys", op{tag: t, summary: "Create an API key", who: "admin", sec: keyed,
		desc: "Answers the key (fc_ + 32 hex digits) once, in key.",
		body: closed(object("name role", m{"name": str(""), "role": enum("", roles...)})),
		ok:   map[int]m{201: jsonAnswer("the key, with its secret", ref("APIKey"))}, errs: []int{403, 409}})
	d.add("delete", "/api/v1/api-keys/{id}", op{tag: t, summary: "Revoke an API key", who: "admin", sec: keyed,
		params: []m{pathParam("id", "the key's id", m{"type": "integer", "format": "int64"})},
		desc:   declaredNote, ok: map[int]m{204: noContent("revoked")}, errs: []int{403, 404, 409}})
}
