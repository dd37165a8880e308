package cli_test

import (
	"encoding/json"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// summary is what the quickstart's banner told its user.
type summary struct {
	user, password string
	builds, lines  map[string]string // build page URL and whole line by job
	cacheKey       string
	fetch, curl    string // the commands to copy
}

var (
	userRE     = regexp.MustCompile(`^\s*Admin user:\s+(.*)$`)
	passwordRE = regexp.MustCompile(`^admin, password (\S+)`)
	jobRE      = regexp.MustCompile(`^\s{4}(\S+)\s+(http://\S+/build/\d+)`)
	cacheRE    = regexp.MustCompile(`^\s*Cache:\s+\S+\s+\(public key (\S+)\)`)
)

func (q *quickstart) summary(t *testing.T) summary {
	t.Helper()
	s := summary{builds: map[string]string{}, lines: map[string]string{}}
	for _, line := range q.banner {
		switch {
		case userRE.MatchString(line):
			s.user = userRE.FindStringSubmatch(line)[1]
			if m := passwordRE.FindStringSubmatch(s.user); m != nil {
				s.password = m[1]
			}
		case jobRE.MatchString(line):
			m := jobRE.FindStringSubmatch(line)
			s.builds[m[1]], s.lines[m[1]] = m[2], line
		case cacheRE.MatchString(line):
			s.cacheKey = cacheRE.FindStringSubmatch(line)[1]
		case strings.HasPrefix(strings.TrimSpace(line), "nix-store -r "):
			s.fetch = strings.TrimSpace(line)
		case strings.Contains(line, "curl -H"):
			s.curl = strings.TrimSpace(line[strings.Index(line, "curl -H"):])
		}
	}
	if s.user == "" || len(s.builds) == 0 || s.cacheKey == "" || s.fetch == "" || s.curl == "" {
		t.Fatalf("the banner lacks the admin user, the builds, the cache key or the commands:\n%s", strings.Join(q.banner, "\n"))
	}
	return s
}

// check runs what the banner says, once the sample has built: the cache key is the
// cache's, the nix command fetches hello's output from FC's cache into an empty store,
// and the curl command lists the sample's builds.
func (s summary) check(t *testing.T, base string, builds map[string]qsBuild) {
	t.Helper()
	if code, _, key := getText(base + "api/v1/cache/public-key"); code != 200 || strings.TrimSpace(key) != s.cacheKey {
		t.Errorf("printed cache key %q, the cache says %q (%d)", s.cacheKey, key, code)
	}
	// The command as printed, into an empty store of its own (the machine's store
	// already has the output: the local agent built it there).
	store := t.TempDir()
	cmd := exec.Command("bash", "-c", s.fetch+` --store "$STORE" --option narinfo-cache-negative-ttl 0`)
	cmd.Env = append(os.Environ(), "STORE="+store, "XDG_CACHE_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	fields := strings.Fields(s.fetch)
	if err != nil || len(fields) < 3 {
		t.Errorf("the printed fetch command failed (%v):\n%s\n%s", err, s.fetch, out)
	} else if _, err := os.Stat(filepath.Join(store, fields[2])); err != nil {
		t.Errorf("the printed fetch command left no %s in the empty store: %v\n%s", fields[2], err, out)
	}
	out, err = exec.Command("bash", "-c", s.curl+" -sS --noproxy '*'").Output()
	var list qsList[qsBuild]
	if err != nil || json.Unmarshal(out, &list) != nil || list.Total != len(builds) {
		t.Errorf("the printed curl command (%v) answered %s, want the %d builds", err, out, len(builds))
	}
}

// signIn signs in on the dashboard's /login form as username with password, as a
// browser does (the form's login token from its cookie), and returns who /api/v1/me
// then says is signed in ("" when the sign-in failed).
func signIn(t *testing.T, base, username, password string) string {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := client.Get(base + "login")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	u, _ := url.Parse(base + "login") // the login token's cookie is for /login only
	var token string
	for _, c := range jar.Cookies(u) {
		if c.Name == "fc_login" {
			token = c.Value
		}
	}
	res, err = client.PostForm(base+"login", url.Values{"username": {username}, "password": {password}, "login_csrf": {token}})
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusSeeOther {
		return ""
	}
	res, err = client.Get(base + "api/v1/me")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var me struct {
		Username string `json:"username"`
	}
	if res.StatusCode != http.StatusOK || json.NewDecoder(res.Body).Decode(&me) != nil {
		return ""
	}
	return me.Username
}
