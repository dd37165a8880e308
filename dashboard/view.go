package dashboard

import (
	"fmt"
	"html/template"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/fc-ci/fc/storage"
)

// funcs are the template functions every page may use.
func funcs() template.FuncMap {
	return template.FuncMap{
		"ago":         ago,
		"exact":       exact,
		"rfc3339":     rfc3339,
		"duration":    duration,
		"seconds":     seconds,
		"bytes":       humanBytes,
		"statusClass": statusClass,
		"short":       short,
		"crumbs":      func(c ...Crumb) []Crumb { return c },
		"projectURL":  projectURL,
		"jobsetURL":   jobsetURL,
		"jobURL":      jobURL,
		"crumb":       func(name, url string) Crumb { return Crumb{Name: name, URL: url} },
		"dict": func(kv ...any) map[string]any {
			m := map[string]any{}
			for i := 0; i+1 < len(kv); i += 2 {
				m[fmt.Sprint(kv[i])] = kv[i+1]
			}
			return m
		},
	}
}

// statusClass is the CSS class of a build, step or evaluation status.
func statusClass(s string) string {
	switch s {
	case "succeeded":
		return "ok"
	case "queued", "running", "cancelled":
		return s
	default:
		return "bad"
	}
}

// when turns a time or a pointer to one into a time; ok is false for nil or zero.
func when(t any) (time.Time, bool) {
	switch t := t.(type) {
	case time.Time:
		return t, !t.IsZero()
	case *time.Time:
		if t == nil {
			return time.Time{}, false
		}
		return *t, !t.IsZero()
	}
	return time.Time{}, false
}

// ago is a time relative to now in words ("3 min ago", "in 2 h"); "" for none. The
// "time" partial shows it with the exact time on hover.
func ago(t any) string {
	at, ok := when(t)
	if !ok {
		return ""
	}
	d := time.Since(at)
	future := d < 0
	if future {
		d = -d
	}
	var s string
	switch {
	case d < 5*time.Second:
		return "just now"
	case d < time.Minute:
		s = fmt.Sprintf("%d s", int(d.Seconds()))
	case d < time.Hour:
		s = fmt.Sprintf("%d min", int(d.Minutes()))
	case d < 48*time.Hour:
		s = fmt.Sprintf("%d h", int(d.Hours()))
	default:
		s = fmt.Sprintf("%d days", int(d.Hours()/24))
	}
	if future {
		return "in " + s
	}
	return s + " ago"
}

// exact is a time as people read it, in UTC.
func exact(t any) string {
	at, ok := when(t)
	if !ok {
		return ""
	}
	return at.UTC().Format("2006-01-02 15:04:05 UTC")
}

func rfc3339(t any) string {
	at, ok := when(t)
	if !ok {
		return ""
	}
	return at.UTC().Format(time.RFC3339)
}

// duration is from..to (to nil: until now), rounded for reading; "" without a start.
func duration(from, to *time.Time) string {
	if from == nil {
		return ""
	}
	end := time.Now()
	if to != nil {
		end = *to
	}
	return roundDuration(end.Sub(*from))
}

// seconds renders a number of seconds (a float pointer, as evaluations store them).
func seconds(s any) string {
	switch v := s.(type) {
	case *float64:
		if v == nil {
			return ""
		}
		return roundDuration(time.Duration(*v * float64(time.Second)))
	case float64:
		return roundDuration(time.Duration(v * float64(time.Second)))
	}
	return ""
}

func roundDuration(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	default:
		return d.Round(time.Second).String()
	}
}

// humanBytes is a size in bytes for reading (KiB, MiB, ...).
func humanBytes(n any) string {
	var v float64
	switch x := n.(type) {
	case int64:
		v = float64(x)
	case int:
		v = float64(x)
	case *int64:
		if x == nil {
			return ""
		}
		v = float64(*x)
	case float64:
		v = x
	default:
		return ""
	}
	if v < 1024 {
		return fmt.Sprintf("%d B", int64(v))
	}
	exp := min(int(math.Log(v)/math.Log(1024)), 5)
	return fmt.Sprintf("%.1f %ciB", v/math.Pow(1024, float64(exp)), "KMGTP"[exp-1])
}

// short is a commit hash's first 12 characters.
func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// Pager is a list's position for the "pager" partial: which page of how many, and
// links to the neighbours that keep the rest of the query.
type Pager struct {
	Page, Pages int
	Total       int64
	Prev, Next  string // "" at either end
}

// pageParam is the query parameter that picks a list's page (1-based).
const pageParam = "page"

// pageOf reads ?page= (1-based) for a list of perPage rows per page.
func pageOf(r *http.Request, perPage int) storage.Page {
	n, err := strconv.Atoi(r.URL.Query().Get(pageParam))
	if err != nil || n < 1 {
		n = 1
	}
	return storage.Page{Limit: perPage, Offset: (n - 1) * perPage}
}

// pagerOf is the Pager of page p of a list of total rows.
func pagerOf(r *http.Request, p storage.Page, total int64) Pager {
	pg := Pager{Page: p.Offset/max(p.Limit, 1) + 1, Total: total}
	pg.Pages = int((total + int64(p.Limit) - 1) / int64(max(p.Limit, 1)))
	link := func(n int) string {
		q := r.URL.Query()
		q.Set(pageParam, strconv.Itoa(n))
		return (&url.URL{Path: r.URL.Path, RawQuery: q.Encode()}).String()
	}
	if pg.Page > 1 {
		pg.Prev = link(pg.Page - 1)
	}
	if pg.Page < pg.Pages {
		pg.Next = link(pg.Page + 1)
	}
	return pg
}
