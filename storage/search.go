package storage

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// MinSearchLength is the shortest query search answers (in characters): one
// character would match nearly everything.
const MinSearchLength = 2

// ErrSearchTooShort is a query shorter than MinSearchLength.
var ErrSearchTooShort = fmt.Errorf("a search needs at least %d characters", MinSearchLength)

// storeDir is the Nix store FC's agents build into.
const storeDir = "/nix/store/"

// nixBase32 are the characters of a store path's hash part.
const nixBase32 = "0123456789abcdfghijklmnpqrsvwxyz"

// SearchTerms is a query as search reads it.
type SearchTerms struct {
	// Text is the query without surrounding space, matched anywhere in names.
	Text string
	// Names: Text may be (part of) a project, jobset or job name; false for a path.
	Names bool
	// PathPrefix, when not "", is the store path prefix builds' .drv and output paths
	// are matched by: the path typed (up to its store path, so a file inside an output
	// finds the output), or storeDir and a hash part or a prefix of one.
	PathPrefix string
}

// ParseSearch reads a query: ErrSearchTooShort under MinSearchLength characters.
func ParseSearch(q string) (SearchTerms, error) {
	t := SearchTerms{Text: strings.TrimSpace(q)}
	if len([]rune(t.Text)) < MinSearchLength {
		return t, ErrSearchTooShort
	}
	if strings.ContainsRune(t.Text, '/') {
		// Names never hold '/': this is a path.
		if rest, ok := strings.CutPrefix(t.Text, storeDir); ok && rest != "" {
			base, _, _ := strings.Cut(rest, "/")
			if storePathChars(base) && hashPrefix(base) {
				t.PathPrefix = storeDir + base
			}
		}
		return t, nil
	}
	t.Names = true
	if storePathChars(t.Text) && hashPrefix(t.Text) {
		t.PathPrefix = storeDir + t.Text
	}
	return t, nil
}

// hashPrefix reports whether s starts like a store path's base name: up to 32
// nix-base32 characters, and if all 32, then nothing or '-' and a name.
func hashPrefix(s string) bool {
	h, rest := s, ""
	if len(s) > 32 {
		h, rest = s[:32], s[32:]
	}
	for _, c := range h {
		if !strings.ContainsRune(nixBase32, c) {
			return false
		}
	}
	return rest == "" || rest[0] == '-'
}

// storePathChars reports whether s holds only the characters Nix allows in a store
// path's base name (all ASCII, which upperBound relies on).
func storePathChars(s string) bool {
	for _, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("+-._?=", c)
		if !ok {
			return false
		}
	}
	return s != ""
}

// upperBound is the least string above every string starting with the ASCII prefix,
// in byte order: the range [prefix, upperBound) is an index range even in a generic
// plan, unlike LIKE $1.
func upperBound(prefix string) string {
	b := []byte(prefix)
	b[len(b)-1]++
	return string(b)
}

// likeEscape makes s match itself in a LIKE pattern.
func likeEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

// ProjectHit is a project a search found.
type ProjectHit struct {
	ID          int64
	Name        string
	DisplayName string
	Description string
	Enabled     bool
}

// JobsetHit is a jobset a search found.
type JobsetHit struct {
	ID          int64
	ProjectID   int64
	Project     string
	Name        string
	Description string
}

// JobHit is a job (a jobset's attribute) a search found.
type JobHit struct {
	JobsetID int64
	Project  string
	Jobset   string
	Job      string
}

// BuildHit is a build a search found by one of its paths.
type BuildHit struct {
	ID           int64
	EvaluationID int64
	Project      string
	Jobset       string
	Job          string
	System       string
	Status       string
	DrvPath      string
	// Path is the path that matched: DrvPath, or the output named Output.
	Path       string
	Output     string
	CreatedAt  time.Time
	FinishedAt *time.Time
}

// SearchResults is one page of each kind of hit, with each kind's total.
type SearchResults struct {
	Projects []ProjectHit
	Jobsets  []JobsetHit
	Jobs     []JobHit
	Builds   []BuildHit
	// Totals by kind: "projects", "jobsets", "jobs", "builds".
	Totals map[string]int64
}

// Search kinds, as SearchResults.Totals and Search's kinds name them.
const (
	SearchProjects = "projects"
	SearchJobsets  = "jobsets"
	SearchJobs     = "jobs"
	SearchBuilds   = "builds"
)

// SearchKinds are the kinds in the order pages show them.
var SearchKinds = []string{SearchProjects, SearchJobsets, SearchJobs, SearchBuilds}

// The statements of Search, one per kind: $1 the query lower-cased, $2 its LIKE
// pattern (or for builds the path range), $3 and $4 the page. The last column is the
// number of hits of the kind.
const (
	searchProjectsSQL = `SELECT id, name, display_name, description, enabled, count(*) OVER ()
		FROM projects WHERE name ILIKE $2 OR display_name ILIKE $2
		ORDER BY lower(name) = $1 DESC, starts_with(lower(name), $1) DESC, length(name), name LIMIT $3 OFFSET $4`
	searchJobsetsSQL = `SELECT j.id, p.id, p.name, j.name, j.description, count(*) OVER ()
		FROM jobsets j JOIN projects p ON p.id = j.project_id WHERE j.name ILIKE $2
		ORDER BY lower(j.name) = $1 DESC, starts_with(lower(j.name), $1) DESC, length(j.name), j.name, p.name
		LIMIT $3 OFFSET $4`
	// Jobs come from the jobs table (one row per job), never from builds.
	searchJobsSQL = `SELECT j.jobset_id, p.name, s.name, j.name, count(*) OVER ()
		FROM jobs j JOIN jobsets s ON s.id = j.jobset_id JOIN projects p ON p.id = s.project_id
		WHERE j.name ILIKE $2
		ORDER BY lower(j.name) = $1 DESC, starts_with(lower(j.name), $1) DESC, length(j.name), j.name, p.name, s.name
		LIMIT $3 OFFSET $4`
	// Builds whose .drv path or an output path is in [$1, $2): two index-only range
	// scans, one row per build (its .drv path, else its first matching output), and
	// only the page's builds read.
	searchBuildsSQL = `WITH m AS (
			SELECT id AS build_id, drv_path AS path, '' AS output FROM builds
			WHERE drv_path ~>=~ $1 AND drv_path ~<~ $2
			UNION ALL
			SELECT build_id, path, name FROM build_outputs
			WHERE path ~>=~ $1 AND path ~<~ $2),
		one AS (SELECT DISTINCT ON (build_id) build_id, path, output FROM m ORDER BY build_id DESC, output),
		page AS (SELECT one.*, count(*) OVER () AS total FROM one ORDER BY build_id DESC LIMIT $3 OFFSET $4)
		SELECT b.id, b.evaluation_id, p.name, j.name, b.job, b.system, b.status, b.drv_path, page.path, page.output,
			b.created_at, b.finished_at, page.total
		FROM page JOIN builds b ON b.id = page.build_id JOIN jobsets j ON j.id = b.jobset_id JOIN projects p ON p.id = j.project_id
		ORDER BY b.id DESC`
)

// searchQuery is one kind's statement in Search's batch, and how its rows are read
// (returning the kind's number of hits).
type searchQuery struct {
	kind string
	sql  string
	args []any
	read func(pgx.Rows, error) (int64, error)
}

// Search finds page of each of kinds (all when none) for t: one statement per kind
// that applies (names for names, paths for paths), all sent in one round trip.
// Names rank exact matches first (in any case), then prefixes, then shorter names;
// builds come newest first.
func (db *DB) Search(ctx context.Context, t SearchTerms, page Page, kinds ...string) (SearchResults, error) {
	res := SearchResults{Projects: []ProjectHit{}, Jobsets: []JobsetHit{}, Jobs: []JobHit{}, Builds: []BuildHit{},
		Totals: map[string]int64{}}
	if len(kinds) == 0 {
		kinds = SearchKinds
	}
	names := []any{strings.ToLower(t.Text), "%" + likeEscape(t.Text) + "%", page.Limit, page.Offset}
	var qs []searchQuery
	for _, k := range kinds {
		res.Totals[k] = 0
		switch {
		case k == SearchProjects && t.Names:
			qs = append(qs, searchQuery{k, searchProjectsSQL, names, func(rows pgx.Rows, err error) (n int64, _ error) {
				res.Projects, n, err = collect(rows, err, func(p *ProjectHit) []any {
					return []any{&p.ID, &p.Name, &p.DisplayName, &p.Description, &p.Enabled}
				})
				return n, err
			}})
		case k == SearchJobsets && t.Names:
			qs = append(qs, searchQuery{k, searchJobsetsSQL, names, func(rows pgx.Rows, err error) (n int64, _ error) {
				res.Jobsets, n, err = collect(rows, err, func(j *JobsetHit) []any {
					return []any{&j.ID, &j.ProjectID, &j.Project, &j.Name, &j.Description}
				})
				return n, err
			}})
		case k == SearchJobs && t.Names:
			qs = append(qs, searchQuery{k, searchJobsSQL, names, func(rows pgx.Rows, err error) (n int64, _ error) {
				res.Jobs, n, err = collect(rows, err, func(j *JobHit) []any { return []any{&j.JobsetID, &j.Project, &j.Jobset, &j.Job} })
				return n, err
			}})
		case k == SearchBuilds && t.PathPrefix != "":
			args := []any{t.PathPrefix, upperBound(t.PathPrefix), page.Limit, page.Offset}
			qs = append(qs, searchQuery{k, searchBuildsSQL, args, func(rows pgx.Rows, err error) (n int64, _ error) {
				res.Builds, n, err = collect(rows, err, func(b *BuildHit) []any {
					return []any{&b.ID, &b.EvaluationID, &b.Project, &b.Jobset, &b.Job, &b.System, &b.Status, &b.DrvPath,
						&b.Path, &b.Output, &b.CreatedAt, &b.FinishedAt}
				})
				return n, err
			}})
		case !slices.Contains(SearchKinds, k):
			return res, fmt.Errorf("no search kind %q", k)
		}
	}
	if len(qs) == 0 {
		return res, nil
	}
	var batch pgx.Batch
	for _, q := range qs {
		batch.Queue(q.sql, q.args...)
	}
	br := db.pool.SendBatch(ctx, &batch)
	defer br.Close()
	for _, q := range qs {
		n, err := q.read(br.Query())
		if err != nil {
			return res, fmt.Errorf("search %s for %q: %w", q.kind, t.Text, err)
		}
		res.Totals[q.kind] = n
	}
	if err := br.Close(); err != nil {
		return res, fmt.Errorf("search for %q: %w", t.Text, err)
	}
	return res, nil
}

// collect reads rows whose last column is the window count(*) OVER () into items
// and the total (0 when the page is past the end).
func collect[T any](rows pgx.Rows, err error, scan func(*T) []any) ([]T, int64, error) {
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	items := []T{}
	var total int64
	for rows.Next() {
		var it T
		if err := rows.Scan(append(scan(&it), &total)...); err != nil {
			return nil, 0, err
		}
		items = append(items, it)
	}
	return items, total, rows.Err()
}
