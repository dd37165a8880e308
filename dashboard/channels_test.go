package dashboard_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// The jobset page lists the channels following the jobset with the evaluation each
// serves (or none yet); a jobset no channel follows has no such section.
func TestJobsetPage_Channels(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	ctx := context.Background()
	id := func(q string, args ...any) int64 {
		t.Helper()
		var id int64
		if err := s.DB.Pool().QueryRow(ctx, q, args...).Scan(&id); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return id
	}
	p := id(`INSERT INTO projects (name, repository_url) VALUES ('chanproj', 'https://example.org/r.git') RETURNING id`)
	j := id(`INSERT INTO jobsets (project_id, name) VALUES ($1, 'main') RETURNING id`, p)
	id(`INSERT INTO jobsets (project_id, name) VALUES ($1, 'other') RETURNING id`, p)
	commit := "abcdef0123456789abcdef0123456789abcdef01"
	ev := id(`INSERT INTO evaluations (jobset_id, status, commit, finished_at) VALUES ($1, 'succeeded', $2, now()) RETURNING id`, j, commit)
	id(`INSERT INTO channels (name, project_id, jobset_id, current_evaluation_id) VALUES ('stable', $1, $2, $3) RETURNING id`, p, j, ev)
	id(`INSERT INTO channels (name, project_id, jobset_id, aggregate) VALUES ('tested', $1, $2, 'release') RETURNING id`, p, j)

	code, body := s.get("/jobset/chanproj/main", nil)
	if code != http.StatusOK {
		t.Fatalf("jobset page: %d\n%s", code, body)
	}
	_, section, ok := strings.Cut(body, `id="channels"`)
	section, _, _ = strings.Cut(section, "</section>")
	if !ok {
		t.Fatalf("no channels section:\n%s", body)
	}
	for _, want := range []string{`href="/channel/stable"`, fmt.Sprintf(`href="/eval/%d"`, ev), commit[:12], "all builds succeed",
		`href="/channel/tested"`, `job <span class="mono">release</span> succeeds`, "none yet"} {
		if !strings.Contains(section, want) {
			t.Errorf("channels section lacks %q:\n%s", want, section)
		}
	}
	if strings.Index(section, "stable") > strings.Index(section, "tested") {
		t.Errorf("channels not by name:\n%s", section)
	}
	code, body = s.get("/jobset/chanproj/other", nil)
	if code != http.StatusOK || strings.Contains(body, `id="channels"`) {
		t.Fatalf("a jobset no channel follows: %d, channels section: %v", code, strings.Contains(body, `id="channels"`))
	}
}
