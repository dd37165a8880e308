package openapi

// Statuses as the API names them.
var (
	buildStatuses = []string{"queued", "running", "succeeded", "failed", "dependency_failed", "aborted", "cancelled",
		"failed_with_output", "timed_out", "cached_failure", "unsupported_system", "log_limit_exceeded",
		"output_limit_exceeded", "not_deterministic"}
	evalStatuses = []string{"queued", "running", "succeeded", "failed", "cancelled"}
	jobsetStates = []string{"enabled", "disabled", "one_shot", "one_at_a_time"}
	roles        = []string{"admin", "read-only", "create-projects", "eval-jobset", "cancel-build", "restart-jobs", "bump-to-front"}
)

// declared adds what an object declared in configuration says of itself: the API
// refuses to change it (409, naming the file).
func declared(o m, what string) m {
	o["required"] = append(o["required"].([]string), "declared")
	props := o["properties"].(m)
	props["declared"] = boolean(what + " is declared in configuration: the API refuses to change it (409)")
	props["declared_in"] = str("the file that declares it (a jobset: the config file, or repository:<project>/<file>); only when declared")
	return o
}

func addSchemas(d *doc) {
	s := d.schemas
	s["Error"] = object("error", m{
		"error": str("what is wrong, for people"),
		"field": str("the request field at fault, when there is one"),
	})
	addProjectSchemas(s)
	addJobsetSchemas(s)
	addBuildSchemas(s)
	addEvaluationSchemas(s)
	addOtherSchemas(s)
}

func addProjectSchemas(s m) {
	s["Forge"] = object("type api_url repository token_set status_per_job pull_requests_from_forks", m{
		"type":                     enum("", "github", "gitea", "forgejo", "gitlab"),
		"api_url":                  str("the forge's API root"),
		"repository":               str("owner/name (a GitLab project's path)"),
		"token_set":                boolean("whether a token is stored (never the token)"),
		"status_per_job":           boolean("a commit status per job, not one per evaluation"),
		"pull_requests_from_forks": boolean("evaluate pull requests from forks"),
	})
	s["Notifications"] = object("email on webhook_url webhook_secret_set", m{
		"email":              arr(str(""), "addresses told of builds"),
		"on":                 enum("when to tell", "failure", "change", "always"),
		"webhook_url":        str(""),
		"webhook_secret_set": boolean("whether a secret is stored (never the secret)"),
	})
	s["Project"] = declared(object("id name display_name description repository_url enabled webhook_secret_set "+
		"fetch_credentials_set owner_key_id owner_key_name owner_user_id owner_user_name created_at updated_at forge notifications "+
		"declarative_file declarative_branch declarative_error", m{
		"id":                    integer(""),
		"name":                  str(""),
		"display_name":          str(""),
		"description":           str(""),
		"repository_url":        str(""),
		"enabled":               boolean(""),
		"webhook_secret_set":    boolean("whether a webhook secret is stored (never the secret)"),
		"fetch_credentials_set": boolean("whether fetch credentials are stored (never them)"),
		"owner_key_id":          null(integer("the owning API key, null for none")),
		"owner_key_name":        str("the owning key's name, \"\" for none"),
		"owner_user_id":         null(integer("the owning user, null for none")),
		"owner_user_name":       str(""),
		"created_at":            dateTime(""),
		"updated_at":            dateTime(""),
		"forge":                 null(ref("Forge")),
		"notifications":         null(ref("Notifications")),
		"declarative_file":      str("the file in the repository declaring jobsets (.fc.toml), \"\" for none"),
		"declarative_branch":    str("the branch it is read from, \"\" for the default branch"),
		"declarative_error":     str("why the file could not be applied last time, \"\" for none"),
	}), "the project")
	s["ProjectInput"] = closed(object("", m{
		"name":           str("letters, digits, '.', '_', '-', starting with a letter or '_' (at most 100)"),
		"display_name":   str("at most 200 characters"),
		"description":    str(""),
		"repository_url": str("https, http, ssh or git URL (a file URL or path only from an admin)"),
		"enabled":        boolean(""),
		"webhook_secret": str("write-only; at least 16 characters"),
		"fetch_credentials": closed(object("", m{
			"ssh_key":     str("a private key (OpenSSH or PEM)"),
			"https_token": str(""),
		})),
		"owner_key_id": null(integer("admins only: give the project to this key")),
		"forge": null(closed(object("", m{
			"type": enum("", "github", "gitea", "forgejo", "gitlab"), "api_url": str(""), "repository": str(""),
			"token": str("write-only; \"\" clears it"), "status_per_job": boolean(""), "pull_requests_from_forks": boolean(""),
		}))),
		"notifications": null(closed(object("", m{
			"email": arr(str(""), ""), "on": enum("", "failure", "change", "always"), "webhook_url": str(""),
			"webhook_secret": str("write-only; \"\" clears it"),
		}))),
		"declarative_file":   str("a file in the repository declaring jobsets (.fc.toml); \"\" for none"),
		"declarative_branch": str("the branch to read it from; \"\" for the default branch"),
	}))
}

func addJobsetSchemas(s m) {
	input := object("name type value", m{
		"name":  str(""),
		"type":  enum("", "string", "boolean", "git", "path"),
		"value": str(""),
	})
	s["JobsetInputValue"] = input
	s["PullRequest"] = object("parent_jobset_id number title head_sha head_branch head_repository", m{
		"parent_jobset_id": integer(""), "number": integer(""), "title": str(""), "head_sha": str(""),
		"head_branch": str(""), "head_repository": str(""),
	})
	s["Jobset"] = declared(object("id project_id project name description branch flake_mode nix_expression inputs check_interval "+
		"scheduling_shares state keep_nr last_checked_at last_check_error created_at updated_at pull_requests "+
		"pull_request_drafts hidden pull_request", m{
		"id":                  integer(""),
		"project_id":          integer(""),
		"project":             str("the project's name"),
		"name":                str(""),
		"description":         str(""),
		"branch":              str("\"\": the default branch"),
		"flake_mode":          boolean(""),
		"nix_expression":      str(""),
		"inputs":              arr(ref("JobsetInputValue"), ""),
		"check_interval":      integer("seconds; 0: only on trigger"),
		"scheduling_shares":   integer(""),
		"state":               enum("", jobsetStates...),
		"keep_nr":             integer(""),
		"last_checked_at":     null(dateTime("")),
		"last_check_error":    str(""),
		"created_at":          dateTime(""),
		"updated_at":          dateTime(""),
		"pull_requests":       boolean(""),
		"pull_request_drafts": boolean(""),
		"hidden":              boolean("left out of the default list (a closed pull request's jobset)"),
		"pull_request":        null(ref("PullRequest")),
	}), "the jobset")
	s["JobsetInput"] = closed(object("", m{
		"name": str(""), "description": str(""), "branch": str(""), "flake_mode": boolean("default true"),
		"nix_expression": str("default hydraJobs, or release.nix in legacy mode"),
		"inputs":         arr(closed(input), "replaces the list"), "check_interval": integer("default 60"),
		"scheduling_shares": integer("default 100; > 0"), "state": enum("", jobsetStates...),
		"keep_nr": integer("default 3"), "pull_requests": boolean(""), "pull_request_drafts": boolean(""),
	}))
	s["APIKey"] = declared(object("id name role created_at last_used_at", m{
		"id": integer(""), "name": str(""), "role": enum("", roles...),
		"key":        str("only in the answer to the create request: the secret, fc_ + 32 hex digits"),
		"created_at": dateTime(""), "last_used_at": null(dateTime("")),
	}), "the key")
}

func addBuildSchemas(s m) {
	s["BuildSummary"] = object("id evaluation_id job drv_path system status status_code is_aggregate keep propagated_from", m{
		"id":                  integer(""),
		"evaluation_id":       integer("the evaluation that created it (it may belong to later ones, reused)"),
		"jobset_id":           integer(""),
		"project_id":          integer(""),
		"project":             str("the project's name"),
		"jobset":              str("the jobset's name"),
		"job":                 str(""),
		"drv_path":            str(""),
		"system":              str(""),
		"status":              enum("", buildStatuses...),
		"status_code":         null(integer("Hydra's build status code; null while unfinished")),
		"is_aggregate":        boolean(""),
		"nix_name":            str(""),
		"description":         str(""),
		"license":             str(""),
		"homepage":            str(""),
		"release_name":        str(""),
		"scheduling_priority": integer(""),
		"keep":                boolean("its outputs are kept by cache retention"),
		"propagated_from":     null(integer("the build whose failure this one took over")),
		"created_at":          dateTime(""),
		"started_at":          dateTime(""),
		"finished_at":         dateTime(""),
		"outputs":             mapOf(str(""), "output name to store path"),
		"reason":              str("why an aborted build was aborted: its attempts and the last infrastructure error"),
	})
	s["Product"] = object("nr type subtype name path", m{
		"nr": integer(""), "type": str("e.g. file, doc, nix-build"), "subtype": str(""), "name": str(""),
		"path": str(""), "default_path": str(""), "file_size": integer(""), "sha256": str(""),
		"download_url": str("for a file product: where to download it"),
	})
	s["Metric"] = object("name value", m{"name": str(""), "value": number(""), "unit": str("")})
	s["Step"] = object("id drv_path system status status_code agent_id attempts log_size required_features "+
		"created_at started_at finished_at", m{
		"id":                integer(""),
		"drv_path":          str(""),
		"system":            str(""),
		"status":            enum("", buildStatuses...),
		"status_code":       null(integer("")),
		"error":             str(""),
		"exit_code":         integer(""),
		"agent_id":          null(integer("")),
		"agent":             str("the agent's name"),
		"attempts":          integer(""),
		"log_size":          integer("bytes"),
		"required_features": arr(str(""), ""),
		"created_at":        dateTime(""),
		"started_at":        null(dateTime("")),
		"finished_at":       null(dateTime("")),
		"seconds":           number("how long it ran"),
	})
	build := object("id evaluation_id job drv_path system status status_code is_aggregate keep propagated_from "+
		"products metrics steps constituents", m{
		"products":     arr(ref("Product"), "[] when none"),
		"metrics":      arr(ref("Metric"), "[] when none"),
		"steps":        arr(ref("Step"), "the steps it needed, its own first; [] when none"),
		"constituents": arr(integer(""), "an aggregate's constituent builds; [] when none"),
	})
	s["Build"] = m{"allOf": []m{ref("BuildSummary"), build}}
	s["BuildStats"] = object("total by_status steps_queued steps_running", m{
		"total": integer(""), "by_status": mapOf(integer(""), "builds per status"),
		"steps_queued": integer(""), "steps_running": integer(""),
	})
	s["Queue"] = object("queued running systems steps", m{
		"queued":  integer("steps queued"),
		"running": integer("steps running"),
		"systems": arr(object("system queued running", m{"system": str(""), "queued": integer(""), "running": integer("")}), ""),
		"steps":   arr(ref("Step"), "the first 200 in scheduling order"),
	})
	s["LogMessage"] = object("type step", m{
		"type":        enum("log: a part of the log; wait: not started; attempt: a retry restarts the log; end: it ended", "log", "wait", "attempt", "end"),
		"step":        integer(""),
		"offset":      integer("byte offset of data"),
		"line":        integer("lines before offset"),
		"next":        integer("the offset to reconnect from"),
		"data":        str(""),
		"status":      str("the final status (end)"),
		"status_code": integer(""),
	})
}

func addEvaluationSchemas(s m) {
	s["AttrError"] = object("attr message", m{"attr": str(""), "message": str("")})
	s["Evaluation"] = object("id jobset_id project_id status commit trigger forced error nr_jobs nr_new_builds nr_errors "+
		"checkout_seconds eval_seconds agent_id attempts created_at started_at finished_at nr_builds builds_by_status", m{
		"id":               integer(""),
		"jobset_id":        integer(""),
		"project_id":       integer(""),
		"status":           enum("", evalStatuses...),
		"commit":           str(""),
		"trigger":          str("what started it"),
		"forced":           boolean(""),
		"error":            str("why it failed"),
		"nr_jobs":          integer(""),
		"nr_new_builds":    integer("builds it created (not reused ones)"),
		"nr_errors":        integer(""),
		"checkout_seconds": null(number("")),
		"eval_seconds":     null(number("")),
		"agent_id":         null(integer("")),
		"attempts":         integer(""),
		"created_at":       dateTime(""),
		"started_at":       null(dateTime("")),
		"finished_at":      null(dateTime("")),
		"nr_builds":        integer("its builds, new and reused"),
		"builds_by_status": mapOf(integer(""), "its builds per status, e.g. {\"succeeded\": 3}"),
		"errors":           arr(ref("AttrError"), "evaluation errors per attribute (GET of one evaluation)"),
	})
	compared := object("job system id status previous_id previous_status", m{
		"job": str(""), "system": str(""), "id": null(integer("the build in this evaluation")),
		"status": str(""), "previous_id": null(integer("the build in the other one")), "previous_status": str(""),
	})
	s["ComparedBuild"] = compared
	cats := []string{"new", "removed", "newly_failing", "newly_succeeding", "still_failing", "unchanged", "queued", "aborted"}
	counts, builds := m{}, m{}
	for _, c := range cats {
		counts[c] = integer("")
		builds[c] = arr(ref("ComparedBuild"), "")
	}
	counts["errors_new"], counts["errors_fixed"] = integer(""), integer("")
	s["Comparison"] = object("evaluation_id with limit counts builds errors", m{
		"evaluation_id": integer(""),
		"with":          integer("the other evaluation"),
		"limit":         integer("builds listed per category"),
		"counts":        object(joinKeys(counts), counts),
		"builds":        object(joinKeys(builds), builds),
		"errors": object("new fixed", m{
			"new": arr(ref("AttrError"), ""), "fixed": arr(ref("AttrError"), ""),
		}),
	})
	s["TriggerResult"] = object("jobset_id force evaluation_id", m{
		"jobset_id":     integer(""),
		"force":         boolean(""),
		"evaluation_id": null(integer("the evaluation created, null when none was")),
		"reason":        enum("why none was created", "unchanged", "evaluation_in_progress", "builds_unfinished", "check_failed"),
		"waiting_for":   integer(""),
		"error":         str("check_failed: what failed"),
	})
}

func joinKeys(o m) string {
	out := ""
	for k := range o {
		out += k + " "
	}
	return out
}

func addOtherSchemas(s m) {
	s["Cluster"] = object("enabled name members", m{
		"enabled": boolean("false on a coordinator that runs alone ([cluster] not enabled); members is then empty"),
		"name":    str("this coordinator's member name"),
		"members": arr(object("name status api_address gossip_address agents self since", m{
			"name": str(""), "status": enum("", "alive", "suspect", "dead", "left"),
			"api_address": str("where the other coordinators reach its API"), "gossip_address": str(""),
			"agents": integer("agent sessions it holds"), "self": boolean("this coordinator"),
			"since": dateTime("when the status last changed"),
		}), ""),
	})
	s["Agent"] = declared(object("id name fingerprint public_key systems features mandatory_features roles max_jobs speed_factor "+
		"running connected enabled draining shutting_down revoked revoked_at coordinator last_seen agent_version nix_version "+
		"load free_disk_bytes push created_at consecutive_failures disabled_until", m{
		"id": integer(""), "name": str(""), "fingerprint": str("SHA256:..."), "public_key": str("ssh-ed25519 ..."),
		"systems": arr(str(""), ""), "features": arr(str(""), ""), "mandatory_features": arr(str(""), ""),
		"roles": arr(str(""), ""), "max_jobs": integer(""), "speed_factor": number(""), "running": integer(""),
		"connected": boolean(""), "enabled": boolean(""), "draining": boolean(""), "shutting_down": boolean(""),
		"revoked": boolean(""), "revoked_at": null(dateTime("")), "coordinator": str(""),
		"last_seen": null(dateTime("")), "agent_version": str(""), "nix_version": str(""), "load": number(""),
		"free_disk_bytes": integer(""), "push": boolean("may upload any path"), "created_at": dateTime(""),
		"consecutive_failures": integer("infrastructure failures in a row"),
		"disabled_until":       null(dateTime("when its backoff ends: no new step before")),
		"last_failure":         str(""),
	}), "the agent's key")
	s["EnrollmentToken"] = object("id name token expires_at uses", m{
		"id": integer(""), "name": str(""), "token": str("fcagent_...; only in this answer"),
		"expires_at": dateTime(""), "uses": integer("uses left"),
	})
	s["User"] = declared(object("id username email full_name role enabled created_at last_login_at", m{
		"id": integer(""), "username": str(""), "email": str(""), "full_name": str(""),
		"role": enum("", roles...), "enabled": boolean(""), "created_at": dateTime(""), "last_login_at": null(dateTime("")),
	}), "the account")
	s["StarredJob"] = object("jobset_id project jobset job created_at last_build_id last_status last_finished_at", m{
		"jobset_id": integer(""), "project": str(""), "jobset": str(""), "job": str(""), "created_at": dateTime(""),
		"last_build_id": null(integer("")), "last_status": str(""), "last_finished_at": null(dateTime("")),
	})
	s["Channel"] = object("name project_id project jobset_id jobset aggregate evaluation_id commit url created_at updated_at", m{
		"name": str(""), "project_id": integer(""), "project": str(""), "jobset_id": integer(""), "jobset": str(""),
		"aggregate":     str("a job whose success alone advances it; \"\" for all builds"),
		"evaluation_id": null(integer("the evaluation it serves, null before the first")),
		"commit":        str(""), "url": str("where nix-channel finds it"), "created_at": dateTime(""), "updated_at": dateTime(""),
	})
	s["ChannelLatest"] = object("channel evaluation_id commit store_paths binary_cache_url nixexprs_url updated_at", m{
		"channel": str(""), "evaluation_id": integer(""), "commit": str(""), "store_paths": arr(str(""), ""),
		"binary_cache_url": str(""), "nixexprs_url": str(""), "updated_at": dateTime(""),
	})
	s["Delivery"] = object("id kind target status attempts last_error created_at delivered_at", m{
		"id": integer(""), "kind": enum("", "status", "email", "webhook", "command"),
		"target": str("where it goes, never a secret"), "status": enum("", "pending", "delivered", "failed"),
		"attempts": integer(""), "last_error": str(""), "created_at": dateTime(""), "delivered_at": null(dateTime("")),
	})
	s["SearchResult"] = object("projects jobsets jobs builds", m{
		"projects": arr(object("id name display_name description enabled", m{
			"id": integer(""), "name": str(""), "display_name": str(""), "description": str(""), "enabled": boolean(""),
		}), ""),
		"jobsets": arr(object("id project_id project name description", m{
			"id": integer(""), "project_id": integer(""), "project": str(""), "name": str(""), "description": str(""),
		}), ""),
		"jobs": arr(object("jobset_id project jobset job", m{
			"jobset_id": integer(""), "project": str(""), "jobset": str(""), "job": str(""),
		}), ""),
		"builds": arr(object("id evaluation_id project jobset job system status drv_path matched_path matched_output "+
			"created_at finished_at", m{
			"id": integer(""), "evaluation_id": integer(""), "project": str(""), "jobset": str(""), "job": str(""),
			"system": str(""), "status": enum("", buildStatuses...), "drv_path": str(""),
			"matched_path": str(""), "matched_output": str(""), "created_at": dateTime(""), "finished_at": null(dateTime("")),
		}), ""),
	})
	s["Health"] = object("status database version", m{
		"status": enum("", "ok", "unavailable"), "database": enum("", "ok", "unreachable"), "version": str(""),
	})
}
