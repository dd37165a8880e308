package openapi_test

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/go-chi/chi/v5"
	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"

	"github.com/fc-ci/fc/coordinator/app"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/openapi"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

// coordinator is the whole HTTP surface, assembled as fc-coordinator serve does.
func coordinator(t *testing.T, tweak func(*config.Config)) (*app.App, *storage.DB) {
	t.Helper()
	db := storagetest.New(t)
	full := config.Defaults()
	if tweak != nil {
		tweak(&full)
	}
	full.StateDir = t.TempDir()
	a, err := app.New(app.Config{Settings: full, DB: db, Logger: slog.New(slog.DiscardHandler), Addr: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return a, db
}

// documented is "METHOD /path" for every operation of the document.
func documented(t *testing.T) map[string]bool {
	t.Helper()
	var d struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openapi.Document(), &d); err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for p, ops := range d.Paths {
		for method := range ops {
			out[strings.ToUpper(method)+" "+p] = true
		}
	}
	return out
}

// covered says whether the document must describe a route of the router: the whole
// API and what clients use outside it (not the dashboard's pages).
func covered(path string) bool {
	return strings.HasPrefix(path, "/api/v1/") || strings.HasPrefix(path, "/nix-cache/") ||
		strings.HasPrefix(path, "/channel/") || path == "/health" || path == "/metrics"
}

// missing lists what want has and have lacks, sorted.
func missing(want, have map[string]bool) []string {
	var out []string
	for r := range want {
		if !have[r] {
			out = append(out, r)
		}
	}
	sort.Strings(out)
	return out
}

// TestOpenAPI_RoutesMatchRouter walks the coordinator's real router: every route it
// serves under /api/v1 (and the cache, channels, health and metrics) is in the
// document, and every documented one is served.
func TestOpenAPI_RoutesMatchRouter(t *testing.T) {
	t.Parallel()
	a, _ := coordinator(t, nil)
	routed := map[string]bool{}
	err := chi.Walk(a.Server.Handler().(chi.Routes), func(method, route string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		if covered(route) {
			routed[method+" "+route] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(routed) < 80 {
		t.Fatalf("the walk found only %d routes: %v", len(routed), routed)
	}
	doc := documented(t)
	for _, r := range missing(routed, doc) {
		t.Errorf("the router serves %s, the document does not describe it", r)
	}
	for _, r := range missing(doc, routed) {
		t.Errorf("the document describes %s, the router does not serve it", r)
	}
}

var (
	// A row's method and path cells (a cell may hold an escaped \|).
	tableRow = regexp.MustCompile(`^\| *([A-Z/]+) *\| *((?:[^|\\]|\\.)*)\|`)
	codeSpan = regexp.MustCompile("`([^`]*)`")
	param    = regexp.MustCompile(`\{[^}]*\}|<[^>]*>`)
)

// readmeRoutes reads the API table of README.md: its method column (GET/PUT: both)
// and each path in its path column. A path without a leading / (`disable` after
// `/api/v1/agents/{id}/enable`) replaces the last segment of the one before it.
// Parameters are normalised to {} (the README writes <hash> or {0|1}).
func readmeRoutes(t *testing.T) map[string]bool {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	start := strings.Index(text, "\n## API\n")
	if start < 0 {
		t.Fatal("README.md has no ## API section")
	}
	text = text[start+1:]
	if end := strings.Index(text[3:], "\n## "); end >= 0 {
		text = text[:end+3]
	}
	out := map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		row := tableRow.FindStringSubmatch(line)
		if row == nil {
			continue
		}
		var paths []string
		for _, span := range codeSpan.FindAllStringSubmatch(row[2], -1) {
			p := strings.ReplaceAll(span[1], `\|`, "|")
			p, _, _ = strings.Cut(p, "?")
			if !strings.HasPrefix(p, "/") {
				if len(paths) == 0 {
					t.Fatalf("README API table: %q has no path before it: %s", p, line)
				}
				prev := paths[len(paths)-1]
				p = prev[:strings.LastIndex(prev, "/")+1] + p
			}
			paths = append(paths, p)
		}
		for _, method := range strings.Split(row[1], "/") {
			for _, p := range paths {
				out[method+" "+normalise(p)] = true
			}
		}
	}
	return out
}

func normalise(path string) string {
	segs := strings.Split(path, "/")
	for i, s := range segs {
		if param.MatchString(s) {
			segs[i] = "{}"
		}
	}
	return strings.Join(segs, "/")
}

// TestOpenAPI_READMETable checks the README's API table against the document, both
// ways, by method and path.
func TestOpenAPI_READMETable(t *testing.T) {
	t.Parallel()
	doc := map[string]bool{}
	for r := range documented(t) {
		method, path, _ := strings.Cut(r, " ")
		doc[method+" "+normalise(path)] = true
	}
	readme := readmeRoutes(t)
	if len(readme) < 60 {
		t.Fatalf("read only %d routes from the README's API table: %v", len(readme), readme)
	}
	for _, r := range missing(doc, readme) {
		t.Errorf("the document describes %s, the README's API table does not", r)
	}
	for _, r := range missing(readme, doc) {
		t.Errorf("the README's API table names %s, the document does not describe it", r)
	}
}

// TestOpenAPI_ValidDocument validates the document against the OpenAPI 3.1 schema
// (libopenapi-validator embeds the official one) and builds its model.
func TestOpenAPI_ValidDocument(t *testing.T) {
	t.Parallel()
	doc, err := libopenapi.NewDocument(openapi.Document())
	if err != nil {
		t.Fatal(err)
	}
	if v := doc.GetVersion(); !strings.HasPrefix(v, "3.1") {
		t.Fatalf("OpenAPI version %q, want 3.1.x", v)
	}
	if _, err := doc.BuildV3Model(); err != nil {
		t.Fatalf("build the model: %v", err)
	}
	v, errs := validator.NewValidator(doc)
	if len(errs) > 0 {
		t.Fatalf("new validator: %v", errs)
	}
	ok, verrs := v.ValidateDocument()
	for _, e := range verrs {
		t.Errorf("%s: %s", e.Message, e.Reason)
		for _, se := range e.SchemaValidationErrors {
			t.Errorf("  %s at %s", se.Reason, se.FieldPath+" "+se.KeywordLocation)
		}
	}
	if !ok && len(verrs) == 0 {
		t.Fatal("the document is invalid, with no error named")
	}

	// The check can fail: a document with an operation whose answers are a string
	// and a parameter without "in" is refused.
	var broken map[string]any
	if err := json.Unmarshal(openapi.Document(), &broken); err != nil {
		t.Fatal(err)
	}
	get := broken["paths"].(map[string]any)["/api/v1/projects"].(map[string]any)["get"].(map[string]any)
	get["responses"] = "none"
	get["parameters"] = []any{map[string]any{"name": "x"}}
	b, err := json.Marshal(broken)
	if err != nil {
		t.Fatal(err)
	}
	bdoc, err := libopenapi.NewDocument(b)
	if err != nil {
		t.Fatal(err)
	}
	bv, _ := validator.NewValidator(bdoc)
	if ok, _ := bv.ValidateDocument(); ok {
		t.Error("a broken document validates")
	}
}

// TestOpenAPI_Served: anyone gets the document, even with a key that is wrong, as
// JSON, and may revalidate it.
func TestOpenAPI_Served(t *testing.T) {
	t.Parallel()
	a, _ := coordinator(t, nil)
	srv := httptest.NewServer(a.Server.Handler())
	t.Cleanup(srv.Close)
	for _, auth := range []string{"", "Bearer fc_00000000000000000000000000000000"} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v1/openapi.json", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body map[string]any
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != 200 || err != nil {
			t.Fatalf("Authorization %q: status %d, decode: %v", auth, resp.StatusCode, err)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		if body["openapi"] != "3.1.0" {
			t.Errorf("openapi %v", body["openapi"])
		}
		etag := resp.Header.Get("ETag")
		req, _ = http.NewRequest(http.MethodGet, srv.URL+"/api/v1/openapi.json", nil)
		req.Header.Set("If-None-Match", etag)
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if etag == "" || resp.StatusCode != http.StatusNotModified {
			t.Errorf("revalidating with ETag %q: status %d, want 304", etag, resp.StatusCode)
		}
	}
}
