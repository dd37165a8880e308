package openapi

func addFleet(d *doc) {
	const t = "agents"
	id := []m{shared("agentID")}
	agent := jsonAnswer("the agent", ref("Agent"))
	d.add("get", "/api/v1/agent/connect", op{tag: t, summary: "The agents' WebSocket (yamux inside)", who: "agent key", sec: agentKey,
		desc: "Agents connect here and authenticate inside the session; 503 while the coordinator shuts down.",
		ok: map[int]m{101: m{"description": "switching to the WebSocket"}, 400: textAnswer("not a WebSocket handshake", "text/plain"),
			503: textAnswer("the coordinator is shutting down", "text/plain")}})
	d.add("get", "/api/v1/agents", op{tag: t, summary: "List agents", who: "anyone", sec: anyone, params: pageParams,
		ok: map[int]m{200: jsonAnswer("a page of agents", page(ref("Agent")))}})
	d.add("get", "/api/v1/agents/{id}", op{tag: t, summary: "Get an agent", who: "anyone", sec: anyone, params: id,
		ok: map[int]m{200: agent}, errs: []int{404}})
	d.add("post", "/api/v1/agents", op{tag: t, summary: "Register an agent by its public key", who: "admin", sec: keyed,
		desc: "409 when an agent that is not revoked has the name, naming it.",
		body: closed(object("public_key", m{
			"public_key": str("one ssh-ed25519 authorized_keys line"),
			"name":       str("default: the key's comment (at most 63 characters)"),
		})), ok: map[int]m{201: agent}, errs: []int{403, 409}})
	d.add("put", "/api/v1/agents/{id}", op{tag: t, summary: "Grant or withdraw the push permission", who: "admin", sec: keyed,
		desc: "push true lets the agent upload any path (fc-agent push); 409 for a revoked agent." + declaredNote, params: id,
		body: closed(object("push", m{"push": boolean("")})), ok: map[int]m{200: agent}, errs: []int{403, 404, 409}})
	d.add("delete", "/api/v1/agents/{id}", op{tag: t, summary: "Revoke an agent", who: "admin", sec: keyed,
		desc: "Its sessions close at once; the key can never connect or enroll again." + declaredNote, params: id,
		ok: map[int]m{204: noContent("revoked")}, errs: []int{403, 404, 409}})
	state := func(action, summary string) {
		d.add("post", "/api/v1/agents/{id}/"+action, op{tag: t, summary: summary, who: "admin", sec: keyed, params: id,
			desc: "409 for a revoked agent.", ok: map[int]m{200: agent}, errs: []int{403, 404, 409}})
	}
	state("drain", "Give an agent no new work (it finishes what runs)")
	state("enable", "Enable an agent (also ends a drain and resets consecutive_failures and disabled_until)")
	state("disable", "Disable an agent")
	d.add("post", "/api/v1/agents/tokens", op{tag: t, summary: "Create an enrollment token", who: "admin", sec: keyed,
		desc: "The token is only in this answer; an agent without agent.name that enrolls with it takes its name.",
		body: closed(object("name", m{
			"name":       str(""),
			"uses":       m{"type": "integer", "minimum": 1, "maximum": 10000, "default": 1},
			"expires_in": m{"type": "integer", "minimum": 1, "maximum": 2592000, "default": 3600, "description": "seconds"},
		})), ok: map[int]m{201: jsonAnswer("the token", ref("EnrollmentToken"))}, errs: []int{403}})

	d.add("get", "/api/v1/cluster", op{tag: t, summary: "The coordinators of the cluster", who: "admin", sec: keyed,
		desc: "Members with their status, addresses and agent sessions; enabled false and no members when this coordinator runs alone.",
		ok:   map[int]m{200: jsonAnswer("the members", ref("Cluster"))}, errs: []int{403}})
	d.add("get", "/api/v1/cache/public-key", op{tag: "cache", summary: "The cache's public key (name:base64)", who: "anyone",
		sec: anyone, ok: map[int]m{200: textAnswer("the key and a newline", "text/plain")}})
	addNixCache(d)
}

// addNixCache describes the binary cache: Nix's protocol, plain-text errors (Nix
// treats a 404 as a miss), both GET and HEAD.
func addNixCache(d *doc) {
	routes := []struct {
		path, summary, media string
		params               []m
	}{
		{"/nix-cache/nix-cache-info", "The cache's info (StoreDir, WantMassQuery, Priority)", "text/x-nix-cache-info", nil},
		{"/nix-cache/{file}", "A store path's narinfo (<hash>.narinfo)", "text/x-nix-narinfo",
			[]m{pathParam("file", "<32-character hash>.narinfo; anything else is 404", str(""))}},
		{"/nix-cache/nar/{file}", "A NAR (<filehash>.nar.zst, or <narhash>.nar); Range and ETag work",
			"application/x-nix-nar", []m{pathParam("file", "<52-character hash>.nar or .nar.zst", str("")),
				header("Range", "bytes=... (RFC 9110)")}},
		{"/nix-cache/log/{drv}", "A derivation's build log (nix log --store URL DRV)", "text/plain",
			[]m{pathParam("drv", "the derivation's base name", str(""))}},
	}
	for _, r := range routes {
		for _, method := range []string{"get", "head"} {
			ok := map[int]m{
				200: textAnswer("found", r.media),
				401: textAnswer("cache.private and no valid API key or agent cache token (Nix treats it as a miss)", "text/plain"),
				404: textAnswer("absent or malformed", "text/plain"),
				503: textAnswer("the database is unreachable (Nix retries)", "text/plain"),
			}
			if r.path == "/nix-cache/nar/{file}" {
				ok[206] = textAnswer("the requested range", r.media)
				ok[416] = textAnswer("the range cannot be satisfied", "text/plain")
			}
			d.add(method, r.path, op{tag: "cache", summary: r.summary,
				who: "anyone (an API key or an agent's cache token if cache.private)", sec: anyone, params: r.params, ok: ok})
		}
	}
}
