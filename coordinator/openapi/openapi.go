// Package openapi serves the coordinator's OpenAPI 3.1 document at
// /api/v1/openapi.json.
//
// The document is built in Go rather than kept as one hand-written JSON file: every
// operation shares the error shape, the pagination parameters, the security schemes
// and the statuses the middleware adds (401 for an unknown key, 429, 503), and the
// helpers here keep those identical across ~80 operations where copies in a JSON
// file would drift. It is built once, at start, and tests check it against the
// router, the README's API table, the OpenAPI 3.1 schema and real answers.
package openapi

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// m is a JSON object of the document.
type m = map[string]any

// Version is the version of the API the document describes.
const Version = "1.0.0"

// Document is the OpenAPI document as JSON.
func Document() []byte {
	d := newDoc()
	addProjects(d)
	addBuilds(d)
	addEvaluations(d)
	addFleet(d)
	addPeople(d)
	addChannels(d)
	addOther(d)
	b, err := json.Marshal(d.json())
	if err != nil {
		// Only maps, slices and scalars built here: marshalling cannot fail.
		panic(fmt.Sprintf("openapi: marshal the document: %v", err))
	}
	return b
}

// Handler serves the document to anyone, with an ETag so clients can revalidate.
func Handler() http.Handler {
	body := Document()
	sum := sha256.Sum256(body)
	etag := `"` + hex.EncodeToString(sum[:16]) + `"`
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-cache")
		w.Header().Set("ETag", etag)
		http.ServeContent(w, r, "openapi.json", time.Time{}, bytes.NewReader(body))
	})
}

// doc collects paths and components while the add* functions describe routes.
type doc struct {
	paths   map[string]m
	schemas m
}

func newDoc() *doc {
	d := &doc{paths: map[string]m{}, schemas: m{}}
	addSchemas(d)
	return d
}

func (d *doc) json() m {
	paths := m{}
	for p, ops := range d.paths {
		paths[p] = ops
	}
	return m{
		"openapi": "3.1.0",
		"info": m{
			"title":   "FC coordinator API",
			"version": Version,
			"summary": "The REST API of FC, a Nix continuous integration server (coordinator and fc-agent).",
			"description": "This document covers every route under /api/v1, and also the routes outside it that " +
				"clients use: /health, /metrics, the Nix binary cache under /nix-cache and the Nix channels under " +
				"/channel. The dashboard's HTML pages (/, /project/..., /build/..., /login, ...) and /static are " +
				"not covered.\n\nLists take ?limit= (1 to 500, default 50) and ?offset= and answer " +
				"{items, total, limit, offset}. Every error is {\"error\", \"field\"}. Reads are public unless they " +
				"show admin data; writes need a bearer API key (or a dashboard session with its CSRF token). " +
				"A request that presents an unknown or malformed key is refused with 401 on every /api/v1 route, " +
				"and any route may answer 429 (server.rate_limit_rps) and 503 (database unavailable).",
		},
		"servers": []m{{"url": "/", "description": "this coordinator"}},
		"tags":    tags,
		"paths":   paths,
		"components": m{
			"schemas":         d.schemas,
			"responses":       errorResponses(),
			"parameters":      sharedParameters(),
			"securitySchemes": securitySchemes(),
		},
	}
}

var tags = []m{
	{"name": "projects", "description": "Projects, their jobsets and API keys"},
	{"name": "evaluations", "description": "Evaluations of jobsets, their comparison and triggers"},
	{"name": "builds", "description": "Builds, their steps, logs and products, and the queue"},
	{"name": "agents", "description": "Build agents and their enrollment"},
	{"name": "people", "description": "User accounts and the signed-in user"},
	{"name": "channels", "description": "Nix channels that follow jobsets"},
	{"name": "cache", "description": "The Nix binary cache"},
	{"name": "webhooks", "description": "Forge webhooks that trigger evaluations"},
	{"name": "misc", "description": "Health, metrics, search, notifications, this document"},
}

// Who may call an operation: its security requirements.
const (
	anyone   = "anyone"   // public read: anonymous, or any key
	keyed    = "key"      // any valid key or session (writes' roles are checked by the handler)
	none     = "none"     // no API credentials (webhooks: HMAC; the cache: its own rules)
	user     = "user"     // a signed-in user's session (or a key belonging to a user)
	agentKey = "agentkey" // an agent's SSH key inside the WebSocket handshake
)

// op describes one operation.
type op struct {
	tag, summary, desc string
	// who is the roles allowed, as the README says it ("anyone", "admin", ...).
	who    string
	sec    string
	params []m
	// body is the JSON request body's schema (nil: none); bodyOptional for a DELETE
	// that may name its target in the query instead.
	body         m
	bodyOptional bool
	// rawBody: the body is read as it is (a webhook's payload), never decoded
	// strictly, so it has no 422 of its own.
	rawBody bool
	// ok are the successful answers by status.
	ok map[int]m
	// errs are the error statuses besides those every route of its kind has.
	errs []int
}

// add registers an operation; common errors are added by where the route lives.
func (d *doc) add(method, path string, o op) {
	if d.paths[path] == nil {
		d.paths[path] = m{}
	}
	if _, dup := d.paths[path][method]; dup {
		panic("openapi: " + method + " " + path + " described twice")
	}
	id := operationID(method, path)
	out := m{"operationId": id, "summary": o.summary, "tags": []string{o.tag}}
	desc := o.desc
	if o.who != "" {
		desc = "Who: " + o.who + ".\n\n" + desc
		out["x-fc-who"] = o.who
	}
	if desc != "" {
		out["description"] = desc
	}
	if len(o.params) > 0 {
		out["parameters"] = o.params
	}
	if o.body != nil {
		out["requestBody"] = m{"required": !o.bodyOptional, "content": m{"application/json": m{"schema": o.body}}}
	}
	out["security"] = security(o.sec)
	resp := m{}
	for status, r := range o.ok {
		resp[strconv.Itoa(status)] = r
	}
	for _, s := range commonErrors(path, o) {
		if _, ok := resp[strconv.Itoa(s)]; !ok {
			resp[strconv.Itoa(s)] = m{"$ref": "#/components/responses/E" + strconv.Itoa(s)}
		}
	}
	out["responses"] = resp
	d.paths[path][method] = out
}

// commonErrors are the error statuses of an operation: its own, and those its route
// gets from the middleware (an unknown key on authenticated /api/v1 routes, the rate
// limit everywhere), from decoding a JSON body or checking the query, and from the
// database. The document itself needs neither a key nor the database.
func commonErrors(path string, o op) []int {
	errs := append([]int(nil), o.errs...)
	if isAPI(path) && o.sec != none {
		errs = append(errs, 401)
	}
	switch {
	case o.rawBody:
		errs = append(errs, 400, 408, 413)
	case o.body != nil:
		errs = append(errs, 400, 408, 413, 422)
	}
	named := sharedParameters()
	for _, p := range o.params {
		if r, ok := p["$ref"].(string); ok {
			p = named[strings.TrimPrefix(r, "#/components/parameters/")].(m)
		}
		if p["in"] == "query" {
			errs = append(errs, 422) // every query parameter is checked
			break
		}
	}
	errs = append(errs, 429)
	if path == "/api/v1/openapi.json" {
		return errs
	}
	if isAPI(path) || strings.HasPrefix(path, "/channel/") {
		errs = append(errs, 500) // JSON; the cache answers in text, and says so itself
	}
	return append(errs, 503)
}

func isAPI(path string) bool { return len(path) >= 8 && path[:8] == "/api/v1/" }

func operationID(method, path string) string {
	var b []byte
	b = append(b, method...)
	up := true
	for i := 0; i < len(path); i++ {
		c := path[i]
		switch {
		case c == '/' || c == '{' || c == '}' || c == '-' || c == '.' || c == '_':
			up = true
		case up:
			if c >= 'a' && c <= 'z' {
				c -= 'a' - 'A'
			}
			b = append(b, c)
			up = false
		default:
			b = append(b, c)
		}
	}
	return string(b)
}

func security(sec string) []m {
	switch sec {
	case anyone:
		return []m{{}, {"bearer": []string{}}, {"basic": []string{}}, {"session": []string{}}}
	case keyed:
		return []m{{"bearer": []string{}}, {"session": []string{}}}
	case user:
		return []m{{"session": []string{}}, {"bearer": []string{}}}
	case agentKey:
		return []m{{"agentKey": []string{}}}
	}
	return []m{{}}
}

func securitySchemes() m {
	return m{
		"bearer": m{"type": "http", "scheme": "bearer",
			"description": "An API key (fc_ + 32 hex digits) as Authorization: Bearer <key>; its role decides what it may do."},
		"basic": m{"type": "http", "scheme": "basic",
			"description": "The API key as the password of HTTP basic authentication (a netrc, a browser's prompt): reads only."},
		"session": m{"type": "apiKey", "in": "cookie", "name": "fc_session",
			"description": "A dashboard session (POST /login); writes also need its CSRF token in X-CSRF-Token."},
		"agentKey": m{"type": "http", "scheme": "bearer",
			"description": "Agents authenticate inside the WebSocket with their ed25519 SSH key (or an enrollment token); see the agent protocol."},
	}
}

var errorMeanings = map[int]string{
	400: "Malformed request: malformed JSON, more than one JSON value, or a webhook the forge did not send.",
	401: "No key where one is needed, or an unknown or malformed API key (or webhook signature).",
	403: "The caller's role may not do this, or the project belongs to someone else.",
	404: "No such object (or route).",
	408: "The request body did not arrive within server.request_timeout.",
	409: "Conflict: a duplicate name, or nothing to do in the object's state.",
	413: "The request body is larger than server.max_body_size.",
	416: "The Range cannot be satisfied.",
	422: "Invalid values: unknown fields, wrong types, values out of range (field names the one at fault).",
	429: "Too many requests from this address (server.rate_limit_rps).",
	500: "Internal error (the detail is logged, never sent).",
	503: "The database is unreachable (or the coordinator is shutting down).",
}

func errorResponses() m {
	out := m{}
	for s, desc := range errorMeanings {
		out["E"+strconv.Itoa(s)] = m{"description": desc,
			"content": m{"application/json": m{"schema": ref("Error")}}}
	}
	return out
}
