package openapi

import "strings"

// Small constructors for the document's JSON Schema (2020-12, as OpenAPI 3.1 uses).

func ref(name string) m { return m{"$ref": "#/components/schemas/" + name} }

func str(desc string) m { return withDesc(m{"type": "string"}, desc) }

func integer(desc string) m { return withDesc(m{"type": "integer", "format": "int64"}, desc) }

func number(desc string) m { return withDesc(m{"type": "number"}, desc) }

func boolean(desc string) m { return withDesc(m{"type": "boolean"}, desc) }

func dateTime(desc string) m { return withDesc(m{"type": "string", "format": "date-time"}, desc) }

func enum(desc string, values ...string) m {
	return withDesc(m{"type": "string", "enum": values}, desc)
}

func arr(items m, desc string) m { return withDesc(m{"type": "array", "items": items}, desc) }

// null makes a schema of one type (or a $ref) also accept null.
func null(s m) m {
	if t, ok := s["type"].(string); ok {
		c := m{}
		for k, v := range s {
			c[k] = v
		}
		c["type"] = []string{t, "null"}
		if e, ok := c["enum"].([]string); ok {
			vals := make([]any, 0, len(e)+1)
			for _, v := range e {
				vals = append(vals, v)
			}
			c["enum"] = append(vals, nil)
		}
		return c
	}
	return m{"anyOf": []m{s, {"type": "null"}}}
}

// mapOf is an object whose values all have the schema values.
func mapOf(values m, desc string) m {
	return withDesc(m{"type": "object", "additionalProperties": values}, desc)
}

func withDesc(s m, desc string) m {
	if desc != "" {
		s["description"] = desc
	}
	return s
}

// object is an object schema; required lists the properties always present
// (space-separated). Unknown properties are allowed in answers (fields are added
// over time); request bodies are closed with closed().
func object(required string, props m) m {
	s := m{"type": "object", "properties": props}
	if r := strings.Fields(required); len(r) > 0 {
		s["required"] = r
	}
	return s
}

// closed refuses properties it does not list, as the API's strict decoding does
// (422 for an unknown field).
func closed(s m) m {
	s["additionalProperties"] = false
	return s
}

// page is the list envelope around items.
func page(items m) m {
	return object("items total limit offset", m{
		"items":  arr(items, ""),
		"total":  integer("how many there are in all"),
		"limit":  integer("the limit applied"),
		"offset": integer("the offset applied"),
	})
}

// jsonAnswer is a JSON response.
func jsonAnswer(desc string, schema m) m {
	return m{"description": desc, "content": m{"application/json": m{"schema": schema}}}
}

// textAnswer is a plain-text response (or another media type).
func textAnswer(desc, mediaType string) m {
	return m{"description": desc, "content": m{mediaType: m{"schema": m{"type": "string"}}}}
}

func noContent(desc string) m { return m{"description": desc} }

// Parameters.

func pathParam(name, desc string, schema m) m {
	return m{"name": name, "in": "path", "required": true, "description": desc, "schema": schema}
}

func query(name, desc string, schema m) m {
	return m{"name": name, "in": "query", "required": false, "description": desc, "schema": schema}
}

func header(name, desc string) m {
	return m{"name": name, "in": "header", "required": false, "description": desc, "schema": m{"type": "string"}}
}

func shared(name string) m { return m{"$ref": "#/components/parameters/" + name} }

func sharedParameters() m {
	return m{
		"limit": query("limit", "how many items (1 to 500, default 50); other values are 422",
			m{"type": "integer", "minimum": 1, "maximum": 500, "default": 50}),
		"offset": query("offset", "how many items to skip (default 0); negative is 422",
			m{"type": "integer", "minimum": 0, "default": 0}),
		"buildID":      pathParam("id", "a build's id", m{"type": "integer", "format": "int64", "minimum": 1}),
		"evaluationID": pathParam("id", "an evaluation's id", m{"type": "integer", "format": "int64", "minimum": 1}),
		"agentID":      pathParam("id", "an agent's id", m{"type": "integer", "format": "int64", "minimum": 1}),
		"userID":       pathParam("id", "a user's id", m{"type": "integer", "format": "int64", "minimum": 1}),
		"projectRef": pathParam("id", "a project's id or name",
			m{"type": "string"}),
		"projectPID": pathParam("pid", "a project's id or name", m{"type": "string"}),
		"jobsetRef":  pathParam("id", "a jobset's id or name within the project", m{"type": "string"}),
		"channel":    pathParam("name", "a channel's name", m{"type": "string"}),
		"jobsetQuery": query("jobset_id", "only this jobset's: an id or \"project/jobset\" (unknown: 422)",
			m{"type": "string"}),
		"projectQuery": query("project_id", "only this project's (a positive integer, else 422)",
			m{"type": "integer", "format": "int64", "minimum": 1}),
	}
}

var pageParams = []m{shared("limit"), shared("offset")}
