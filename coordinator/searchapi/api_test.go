package searchapi_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/fc-ci/fc/coordinator/app"
	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/searchapi"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

// hash is a 32-character nix-base32 hash part made from a short seed (seeds must
// not share a prefix for the prefix tests to mean anything).
func hash(seed string) string {
	return (seed + strings.Repeat("0", 32))[:32]
}

// world is a project with a jobset, two evaluations of the same jobs, and the
// builds' paths.
type world struct {
	project, jobset int64
	builds          map[string]int64 // "eval1/job" → id
	drv, out        map[string]string
}

// seed makes, over SQL, project "webshop-frontend" ("Web Shop"), its jobset
// "nightly-release" and two evaluations, each with builds of jobs "shop.checkout"
// and "shop.cart" (the second evaluation's checkout is a new derivation).
func seed(t *testing.T, db *storage.DB) world {
	t.Helper()
	ctx := context.Background()
	w := world{builds: map[string]int64{}, drv: map[string]string{}, out: map[string]string{}}
	q := func(sql string, args ...any) int64 {
		t.Helper()
		var id int64
		if err := db.Pool().QueryRow(ctx, sql, args...).Scan(&id); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return id
	}
	w.project = q(`INSERT INTO projects (name, display_name, repository_url) VALUES ('webshop-frontend', 'Web Shop', 'https://example.org/shop.git') RETURNING id`)
	w.jobset = q(`INSERT INTO jobsets (project_id, name) VALUES ($1, 'nightly-release') RETURNING id`, w.project)
	type job struct{ eval, name, drvHash, outHash string }
	jobs := []job{
		{"eval1", "shop.checkout", hash("c1drv"), hash("c1ff")},
		{"eval1", "shop.cart", hash("k1drv"), hash("k1ff")},
		{"eval2", "shop.checkout", hash("c2drv"), hash("c2ff")},
		{"eval2", "shop.cart", hash("k1drv"), hash("k1ff")},
	}
	evals := map[string]int64{}
	for _, j := range jobs {
		if evals[j.eval] == 0 {
			evals[j.eval] = q(`INSERT INTO evaluations (jobset_id, status) VALUES ($1, 'succeeded') RETURNING id`, w.jobset)
		}
		name := strings.TrimPrefix(j.name, "shop.")
		drv := "/nix/store/" + j.drvHash + "-" + name + ".drv"
		out := "/nix/store/" + j.outHash + "-" + name
		key := j.eval + "/" + j.name
		w.builds[key] = q(`INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, status)
			VALUES ($1, $2, $3, $4, 'x86_64-linux', 'succeeded') RETURNING id`, evals[j.eval], w.jobset, j.name, drv)
		q(`INSERT INTO build_outputs (build_id, name, path) VALUES ($1, 'out', $2) RETURNING build_id`, w.builds[key], out)
		w.drv[key], w.out[key] = drv, out
	}
	return w
}

type server struct {
	t   *testing.T
	db  *storage.DB
	url string
}

func start(t *testing.T) *server {
	t.Helper()
	cfg := config.Defaults()
	cfg.StateDir = t.TempDir()
	db := storagetest.New(t)
	a, err := app.New(app.Config{Settings: cfg, DB: db, Logger: slog.New(slog.DiscardHandler), Addr: "test"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Server.Handler())
	t.Cleanup(srv.Close)
	return &server{t: t, db: db, url: srv.URL}
}

// search asks GET /api/v1/search?q=q (and the extra query) with key (none: "").
func (s *server) search(q, extra, key string) (int, string, searchapi.Result) {
	s.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.url+"/api/v1/search?q="+url.QueryEscape(q)+extra, nil)
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	var out searchapi.Result
	if res.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, &out); err != nil {
			s.t.Fatalf("search %q: %v\n%s", q, err, b)
		}
	}
	return res.StatusCode, string(b), out
}

func buildIDs(r searchapi.Result) []int64 {
	var ids []int64
	for _, b := range r.Builds {
		ids = append(ids, b.ID)
	}
	return ids
}

func sameIDs(got []int64, want ...int64) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

func TestSearchAPI_EachKind(t *testing.T) {
	t.Parallel()
	s := start(t)
	w := seed(t, s.db)
	c1, k1, c2, k2 := w.builds["eval1/shop.checkout"], w.builds["eval1/shop.cart"], w.builds["eval2/shop.checkout"], w.builds["eval2/shop.cart"]

	// Names, anywhere in them and in any case.
	_, body, r := s.search("SHOP-front", "", "")
	if len(r.Projects) != 1 || r.Projects[0].Name != "webshop-frontend" || r.Projects[0].ID != w.project {
		t.Fatalf("project by name: %s", body)
	}
	if _, body, r = s.search("web shop", "", ""); len(r.Projects) != 1 || r.Projects[0].DisplayName != "Web Shop" {
		t.Fatalf("project by display name: %s", body)
	}
	_, body, r = s.search("nightly", "", "")
	if len(r.Jobsets) != 1 || r.Jobsets[0].Name != "nightly-release" || r.Jobsets[0].Project != "webshop-frontend" || r.Jobsets[0].ID != w.jobset {
		t.Fatalf("jobset by name: %s", body)
	}
	// A job is listed once, however many evaluations built it.
	_, body, r = s.search("checkout", "", "")
	if len(r.Jobs) != 1 || r.Jobs[0].Job != "shop.checkout" || r.Jobs[0].Jobset != "nightly-release" || r.Jobs[0].JobsetID != w.jobset {
		t.Fatalf("job by name: %s", body)
	}
	if _, body, r = s.search("shop.", "", ""); len(r.Jobs) != 2 {
		t.Fatalf("jobs by a common part: %s", body)
	}

	// Builds by .drv path: whole, hash part, a prefix of it; newest first.
	cases := []struct {
		name, q string
		want    []int64
	}{
		{"drv path", w.drv["eval2/shop.checkout"], []int64{c2}},
		{"drv hash part", hash("c2drv"), []int64{c2}},
		{"drv hash prefix", "c2dr", []int64{c2}},
		{"shared drv", hash("k1drv"), []int64{k2, k1}},
		{"output path", w.out["eval1/shop.checkout"], []int64{c1}},
		{"output hash part", hash("c1ff"), []int64{c1}},
		{"output hash prefix", "c1f", []int64{c1}},
		{"file in an output", w.out["eval1/shop.checkout"] + "/bin/checkout", []int64{c1}},
	}
	for _, c := range cases {
		code, body, r := s.search(c.q, "", "")
		if code != http.StatusOK || !sameIDs(buildIDs(r), c.want...) {
			t.Errorf("%s %q: %d, builds %v, want %v\n%s", c.name, c.q, code, buildIDs(r), c.want, body)
		}
	}
	// "c1" is a prefix of both a .drv and an output hash of build c1: listed once,
	// with the .drv path as what matched.
	_, body, r = s.search("c1", "", "")
	if !sameIDs(buildIDs(r), c1) || r.Builds[0].MatchedPath != w.drv["eval1/shop.checkout"] || r.Builds[0].MatchedOutput != "" {
		t.Fatalf("c1: %s", body)
	}
	_, body, r = s.search(hash("c1ff"), "", "")
	if r.Builds[0].MatchedPath != w.out["eval1/shop.checkout"] || r.Builds[0].MatchedOutput != "out" ||
		r.Builds[0].Job != "shop.checkout" || r.Builds[0].Project != "webshop-frontend" || r.Builds[0].Status != "succeeded" {
		t.Fatalf("output hit: %s", body)
	}
	// ?limit= caps each kind.
	if _, body, r = s.search(hash("k1drv"), "&limit=1", ""); !sameIDs(buildIDs(r), k2) {
		t.Fatalf("limit=1: %s", body)
	}
}

func TestSearchAPI_EmptyShortAndPublic(t *testing.T) {
	t.Parallel()
	s := start(t)
	seed(t, s.db)
	// No match: four empty lists, never null.
	code, body, _ := s.search("zz-nothing-like-this", "", "")
	want := `{"projects":[],"jobsets":[],"jobs":[],"builds":[]}`
	if code != http.StatusOK || strings.TrimSpace(body) != want {
		t.Fatalf("no match: %d %s, want %s", code, body, want)
	}
	// A path outside the store, or not a store path's name, finds no build.
	for _, q := range []string{"/usr/bin/env", "/nix/store/", "/nix/store/e" + hash("c1drv")[1:]} {
		if code, body, r := s.search(q, "", ""); code != http.StatusOK || len(r.Builds) != 0 {
			t.Fatalf("%q: %d %s", q, code, body)
		}
	}
	for _, q := range []string{"", "x", "  y  "} {
		code, body, _ := s.search(q, "", "")
		var e struct{ Error, Field string }
		_ = json.Unmarshal([]byte(body), &e)
		if code != http.StatusUnprocessableEntity || e.Field != "q" || !strings.Contains(e.Error, "2 characters") {
			t.Fatalf("short q %q: %d %s", q, code, body)
		}
	}
	for _, l := range []string{"0", "101", "x"} {
		if code, body, _ := s.search("shop", "&limit="+l, ""); code != http.StatusUnprocessableEntity || !strings.Contains(body, `"limit"`) {
			t.Fatalf("limit=%s: %d %s", l, code, body)
		}
	}
	// Public, like the other reads; a key of any role may ask too.
	_, key, err := auth.CreateKey(context.Background(), s.db, "reader", storage.RoleReadOnly)
	if err != nil {
		t.Fatal(err)
	}
	if code, body, r := s.search("webshop", "", key); code != http.StatusOK || len(r.Projects) != 1 {
		t.Fatalf("with a read-only key: %d %s", code, body)
	}
	if code, body, _ := s.search("webshop", "", "fc_not-a-key"); code != http.StatusUnauthorized {
		t.Fatalf("with an unknown key: %d %s", code, body)
	}
}

// TestSearchAPI_JobsFollowBuilds: the jobs table the search reads is filled by the
// builds' trigger, also when an evaluation inserts many builds in one statement, and
// goes with its jobset.
func TestSearchAPI_JobsFollowBuilds(t *testing.T) {
	t.Parallel()
	s := start(t)
	w := seed(t, s.db)
	ctx := context.Background()
	var eval int64
	if err := s.db.Pool().QueryRow(ctx, `INSERT INTO evaluations (jobset_id) VALUES ($1) RETURNING id`, w.jobset).Scan(&eval); err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.Pool().Exec(ctx, `INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system)
		SELECT $1, $2, 'bulk.job' || i, '/nix/store/' || lpad(i::text, 32, '0') || '-bulk.drv', 'x86_64-linux'
		FROM generate_series(1, 300) i`, eval, w.jobset); err != nil {
		t.Fatal(err)
	}
	if _, body, r := s.search("bulk.job", "&limit=100", ""); len(r.Jobs) != 100 {
		t.Fatalf("bulk jobs: %s", body)
	}
	if _, body, r := s.search("bulk.job299", "", ""); len(r.Jobs) != 1 || r.Jobs[0].Job != "bulk.job299" {
		t.Fatalf("bulk.job299: %s", body)
	}
	if _, err := s.db.Pool().Exec(ctx, `DELETE FROM jobsets WHERE id = $1`, w.jobset); err != nil {
		t.Fatal(err)
	}
	if _, body, r := s.search("bulk.job", "", ""); len(r.Jobs) != 0 || len(r.Jobsets) != 0 {
		t.Fatalf("after the jobset went: %s", body)
	}
}

func TestParseSearch(t *testing.T) {
	t.Parallel()
	h := hash("abc")
	for _, c := range []struct {
		q      string
		names  bool
		prefix string
		short  bool
	}{
		{q: "a", short: true},
		{q: " ab ", names: true, prefix: "/nix/store/ab"},
		{q: "hello", names: true}, // 'e' and 'o' are not nix-base32
		{q: "xz", names: true, prefix: "/nix/store/xz"},
		{q: h, names: true, prefix: "/nix/store/" + h},
		{q: h + "-hello-2.12", names: true, prefix: "/nix/store/" + h + "-hello-2.12"},
		{q: h + "x", names: true}, // 33 hash characters: no store path
		{q: "/nix/store/" + h + "-hello/bin/hello", prefix: "/nix/store/" + h + "-hello"},
		{q: "/nix/store/" + h[:5], prefix: "/nix/store/" + h[:5]},
		{q: "/usr/bin/hello"},
		{q: "/nix/store/ab%c"},
		{q: "shop.checkout_x", names: true},
	} {
		got, err := storage.ParseSearch(c.q)
		if c.short != (err != nil) || got.Names != c.names || got.PathPrefix != c.prefix {
			t.Errorf("ParseSearch(%q) = %+v, %v; want names %v, prefix %q, short %v", c.q, got, err, c.names, c.prefix, c.short)
		}
	}
}
