package openapi

func addPeople(d *doc) {
	const t = "people"
	id := []m{shared("userID")}
	u := jsonAnswer("the user", ref("User"))
	d.add("get", "/api/v1/users", op{tag: t, summary: "List users (never a password or its hash)", who: "admin", sec: keyed,
		params: pageParams, ok: map[int]m{200: jsonAnswer("a page of users", page(ref("User")))}, errs: []int{403}})
	d.add("post", "/api/v1/users", op{tag: t, summary: "Create a user", who: "admin", sec: keyed,
		body: closed(object("username password role", m{
			"username": str(""), "password": str("at least 8 characters"), "role": enum("an API-key role", roles...),
			"email": str(""), "full_name": str("at most 200 characters"),
		})), ok: map[int]m{201: u}, errs: []int{403, 409}})
	d.add("get", "/api/v1/users/{id}", op{tag: t, summary: "Get a user", who: "admin", sec: keyed, params: id,
		ok: map[int]m{200: u}, errs: []int{403, 404}})
	d.add("put", "/api/v1/users/{id}", op{tag: t, summary: "Change a user", who: "admin", sec: keyed, params: id,
		desc: "A new password or disabling ends the user's sessions; an admin may not take the admin role from, " +
			"nor disable, themselves (422)." + declaredNote,
		body: closed(object("", m{
			"role": enum("", roles...), "email": str(""), "full_name": str(""), "enabled": boolean(""),
			"password": str("at least 8 characters"),
		})), ok: map[int]m{200: u}, errs: []int{403, 404, 409}})
	d.add("delete", "/api/v1/users/{id}", op{tag: t, summary: "Delete a user", who: "admin", sec: keyed, params: id,
		desc: "409 for one's own account." + declaredNote, ok: map[int]m{204: noContent("deleted")}, errs: []int{403, 404, 409}})

	me := "a signed-in user"
	d.add("get", "/api/v1/me", op{tag: t, summary: "The signed-in user", who: me, sec: user,
		desc: "401 without a session; 403 for an API key that belongs to no user.",
		ok:   map[int]m{200: u}, errs: []int{403}})
	d.add("put", "/api/v1/me", op{tag: t, summary: "Change one's e-mail address and full name", who: me, sec: user,
		desc: "409 for a declared account.",
		body: closed(object("", m{"email": str(""), "full_name": str("")})), ok: map[int]m{200: u}, errs: []int{403, 409}})
	d.add("post", "/api/v1/me/password", op{tag: t, summary: "Change one's password", who: me, sec: user,
		desc: "403 when current is wrong; 409 for a declared account (its password is the config's password_file).",
		body: closed(object("current new", m{"current": str(""), "new": str("at least 8 characters")})),
		ok:   map[int]m{204: noContent("changed")}, errs: []int{403, 409}})
	star := closed(object("jobset_id job", m{
		"jobset_id": m{"type": []string{"integer", "string"}, "description": "an id or \"project/jobset\""},
		"job":       str(""),
	}))
	d.add("get", "/api/v1/me/starred-jobs", op{tag: t, summary: "One's starred jobs, with each job's newest build",
		who: me, sec: user, params: pageParams,
		ok: map[int]m{200: jsonAnswer("a page of starred jobs", page(ref("StarredJob")))}, errs: []int{403}})
	d.add("post", "/api/v1/me/starred-jobs", op{tag: t, summary: "Star a job", who: me, sec: user, body: star,
		ok:   map[int]m{201: jsonAnswer("the starred job", object("jobset_id job", m{"jobset_id": integer(""), "job": str("")}))},
		errs: []int{403}})
	d.add("delete", "/api/v1/me/starred-jobs", op{tag: t, summary: "Unstar a job", who: me, sec: user,
		desc: "The job is named by the JSON body or by ?jobset_id=&job=.", body: star, bodyOptional: true,
		params: []m{query("jobset_id", "an id or \"project/jobset\" (with job, instead of a body)", str("")),
			query("job", "the job's name", str(""))},
		ok: map[int]m{204: noContent("unstarred")}, errs: []int{403}})
}

func addChannels(d *doc) {
	const t = "channels"
	name := []m{shared("channel")}
	ch := jsonAnswer("the channel", ref("Channel"))
	who := "admin, create-projects (the project's owner)"
	d.add("get", "/api/v1/channels", op{tag: t, summary: "List channels by name", who: "anyone", sec: anyone, params: pageParams,
		ok: map[int]m{200: jsonAnswer("a page of channels", page(ref("Channel")))}})
	d.add("post", "/api/v1/channels", op{tag: t, summary: "Create a channel following a jobset", who: who, sec: keyed,
		desc: "jobset is an id or name within project, or \"project/jobset\"; aggregate (optional) a job whose success " +
			"alone advances the channel. 422 for an unknown project or jobset, 409 for a taken name.",
		body: closed(object("name jobset", m{
			"name":      str(""),
			"project":   m{"type": []string{"integer", "string"}, "description": "the project's id or name"},
			"jobset":    m{"type": []string{"integer", "string"}, "description": "an id or name within project, or \"project/jobset\""},
			"aggregate": str(""),
		})), ok: map[int]m{201: ch}, errs: []int{403, 409}})
	d.add("get", "/api/v1/channels/{name}", op{tag: t, summary: "Get a channel", who: "anyone", sec: anyone, params: name,
		ok: map[int]m{200: ch}, errs: []int{404}})
	d.add("delete", "/api/v1/channels/{name}", op{tag: t, summary: "Delete a channel", who: who, sec: keyed, params: name,
		ok: map[int]m{204: noContent("deleted")}, errs: []int{403, 404}})
	d.add("post", "/api/v1/channels/{name}/promote", op{tag: t, summary: "Point a channel at a finished evaluation of its jobset",
		who: who, sec: keyed, params: name, desc: "422 for any evaluation that is not a finished one of the channel's jobset.",
		body: closed(object("evaluation_id", m{"evaluation_id": integer("")})), ok: map[int]m{200: ch}, errs: []int{403, 404}})
	d.add("get", "/api/v1/channels/{name}/latest", op{tag: t, summary: "The evaluation a channel serves", who: "anyone",
		sec: anyone, params: name, desc: "404 before its first evaluation.",
		ok: map[int]m{200: jsonAnswer("what it serves", ref("ChannelLatest"))}, errs: []int{404}})
	addChannelFiles(d)
}

// addChannelFiles describes /channel/{name}, what nix-channel fetches.
func addChannelFiles(d *doc) {
	files := []struct{ path, summary, media string }{
		{"/channel/{name}", "The channel's index page", "text/html"},
		{"/channel/{name}/", "The channel's index page", "text/html"},
		{"/channel/{name}/binary-cache-url", "The binary cache's URL", "text/plain"},
		{"/channel/{name}/store-paths.xz", "The evaluation's output paths, one a line, xz-compressed", "application/x-xz"},
		{"/channel/{name}/nixexprs.tar.xz", "The evaluated source (git archive of the commit)", "application/x-xz"},
	}
	for _, f := range files {
		d.add("get", f.path, op{tag: "channels", summary: f.summary, who: "anyone (an API key if cache.private)", sec: anyone,
			desc: "404 for an unknown channel or one with no evaluation yet.", params: []m{shared("channel")},
			ok: map[int]m{200: textAnswer(f.summary, f.media)}, errs: []int{401, 404}})
	}
}

func addOther(d *doc) {
	const t = "misc"
	d.add("get", "/health", op{tag: t, summary: "Whether the coordinator and its database answer", who: "anyone", sec: none,
		ok: map[int]m{200: jsonAnswer("healthy", ref("Health")), 503: jsonAnswer("the database is unreachable", ref("Health"))}})
	d.add("get", "/metrics", op{tag: t, summary: "Prometheus metrics", who: "anyone", sec: none,
		ok: map[int]m{200: textAnswer("the metrics in Prometheus' text format", "text/plain")}})
	d.add("get", "/api/v1/openapi.json", op{tag: t, summary: "This document", who: "anyone", sec: none,
		desc: "Served without authentication (a presented key is not even checked).",
		ok:   map[int]m{200: jsonAnswer("the OpenAPI 3.1 document", m{"type": "object"}), 304: noContent("not modified (If-None-Match)")}})
	d.add("get", "/api/v1/search", op{tag: t, summary: "Search projects, jobsets, jobs and builds", who: "anyone", sec: anyone,
		desc: "Names containing q (any case), builds whose .drv or output path starts with q; [] for none.",
		params: []m{
			m{"name": "q", "in": "query", "required": true, "description": "at least 2 characters (else 422)", "schema": str("")},
			query("limit", "up to this many of each (1 to 100, default 10)", m{"type": "integer", "minimum": 1, "maximum": 100, "default": 10}),
		}, ok: map[int]m{200: jsonAnswer("what matched", ref("SearchResult"))}})
	d.add("get", "/api/v1/notifications/deliveries", op{tag: t, summary: "Commit statuses, e-mails, webhooks and commands sent, newest first",
		who: "admin", sec: keyed, params: append([]m{query("status", "only these", enum("", "pending", "delivered", "failed"))}, pageParams...),
		ok: map[int]m{200: jsonAnswer("a page of deliveries", page(ref("Delivery")))}, errs: []int{403}})
}
