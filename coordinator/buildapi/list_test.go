package buildapi_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// TestListBuilds_TotalIsExactOrALowerBoundAndBeforeIDPagesByKey: with more builds
// than storage.BuildCountCap past a page, GET /api/v1/builds answers total as a lower
// bound past the page's end (total_exact false); near the end and past it, exactly.
// Following ?before_id= from page to page lists every build once, newest first, as
// ?offset= does.
func TestListBuilds_TotalIsExactOrALowerBoundAndBeforeIDPagesByKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := storagetest.New(t)
	const n = storage.BuildCountCap + 300
	for _, q := range []string{
		`INSERT INTO projects (name, repository_url) VALUES ('keyset', 'https://example.org/keyset.git')`,
		`INSERT INTO jobsets (project_id, name) SELECT id, 'main' FROM projects`,
		`INSERT INTO evaluations (jobset_id, status, commit, trigger, nr_jobs) SELECT id, 'succeeded', 'c', 'poll', 0 FROM jobsets`,
		fmt.Sprintf(`INSERT INTO builds (evaluation_id, jobset_id, job, drv_path, system, status)
			SELECT e.id, e.jobset_id, 'job' || k, '/nix/store/' || md5(k::text) || '-k.drv', 'x86_64-linux', 'succeeded'
			FROM evaluations e, generate_series(1, %d) k`, n),
	} {
		if _, err := db.Pool().Exec(ctx, q); err != nil {
			t.Fatalf("%v\n%s", err, q)
		}
	}
	c := coordtest.Start(t, coordtest.Options{DB: db})
	type page struct {
		Items []struct {
			ID int64 `json:"id"`
		} `json:"items"`
		Total      int64 `json:"total"`
		TotalExact *bool `json:"total_exact"`
		Limit      int   `json:"limit"`
		Offset     int   `json:"offset"`
	}
	get := func(path string) page {
		t.Helper()
		var p page
		if code := c.Do("GET", path, "", nil, &p); code != 200 || p.TotalExact == nil {
			t.Fatalf("GET %s: %d, total_exact %v", path, code, p.TotalExact)
		}
		return p
	}
	for _, tc := range []struct {
		path  string
		items int
		total int64
		exact bool
	}{
		{"/api/v1/builds?limit=100", 100, 100 + storage.BuildCountCap, false},
		{"/api/v1/builds?limit=100&offset=150", 100, 250 + storage.BuildCountCap, false},
		{"/api/v1/builds?limit=100&offset=250", 100, n, true},
		{"/api/v1/builds?limit=100&offset=1250", n - 1250, n, true},
		{"/api/v1/builds?offset=100000", 0, n, true},
		{"/api/v1/builds/recent", 0, 0, true}, // none finished
	} {
		p := get(tc.path)
		if len(p.Items) != tc.items || p.Total != tc.total || *p.TotalExact != tc.exact {
			t.Errorf("GET %s: %d items, total %d exact %v; want %d, %d, %v", tc.path, len(p.Items), p.Total, *p.TotalExact,
				tc.items, tc.total, tc.exact)
		}
	}
	var byOffset, byKey []int64
	for more := true; more; {
		p := get(fmt.Sprintf("/api/v1/builds?limit=500&offset=%d", len(byOffset)))
		for _, b := range p.Items {
			byOffset = append(byOffset, b.ID)
		}
		more = p.Total > int64(p.Offset+len(p.Items))
		if len(byOffset) > n {
			t.Fatalf("by offset, %d builds and no end", len(byOffset))
		}
	}
	path := "/api/v1/builds?limit=500"
	for {
		p := get(path)
		for _, b := range p.Items {
			byKey = append(byKey, b.ID)
		}
		if p.Total <= int64(len(p.Items)) {
			break
		}
		if len(byKey) > n {
			t.Fatalf("by before_id, %d builds and no end: the key does not move on", len(byKey))
		}
		path = fmt.Sprintf("/api/v1/builds?limit=500&before_id=%d", p.Items[len(p.Items)-1].ID)
	}
	if len(byKey) != n || fmt.Sprint(byKey) != fmt.Sprint(byOffset) {
		t.Errorf("by before_id %d builds, by offset %d; want the same %d", len(byKey), len(byOffset), n)
	}
	for i := 1; i < len(byKey); i++ {
		if byKey[i] >= byKey[i-1] {
			t.Fatalf("by before_id, build %d follows %d: not newest first", byKey[i], byKey[i-1])
		}
	}
	if code := c.Do("GET", "/api/v1/builds?before_id=x", "", nil, nil); code != 422 {
		t.Errorf("?before_id=x: %d, want 422", code)
	}
}
