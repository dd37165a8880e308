package projectapi

import (
	"net/url"
	"regexp"
	"strings"

	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

// forgeJSON is a project's forge as the API shows it; the token only as "is set".
type forgeJSON struct {
	Type                  string `json:"type"`
	APIURL                string `json:"api_url"`
	Repository            string `json:"repository"`
	TokenSet              bool   `json:"token_set"`
	StatusPerJob          bool   `json:"status_per_job"`
	PullRequestsFromForks bool   `json:"pull_requests_from_forks"`
}

func toForgeJSON(f storage.ProjectForge) *forgeJSON {
	return &forgeJSON{Type: f.Type, APIURL: f.APIURL, Repository: f.Repository, TokenSet: f.TokenSet(),
		StatusPerJob: f.StatusPerJob, PullRequestsFromForks: f.PullRequestsFromForks}
}

// forgeInput is the forge of a create or update request; nil fields are left as they
// are (a new forge: their defaults). The token is write-only: "" clears it.
type forgeInput struct {
	Type                  *string `json:"type"`
	APIURL                *string `json:"api_url"`
	Repository            *string `json:"repository"`
	Token                 *string `json:"token"`
	StatusPerJob          *bool   `json:"status_per_job"`
	PullRequestsFromForks *bool   `json:"pull_requests_from_forks"`
}

func (forgeInput) part() (string, string) { return "forge", `{"type": ..., "repository": ...}` }

// forgeField is the "forge" of a request: absent (leave it), null (remove it), or
// settings (parts.go).
type forgeField struct{ optional[forgeInput] }

// defaultAPIURL is the API of a forge type's public instance, where it has one.
var defaultAPIURL = map[string]string{storage.ForgeGitHub: "https://api.github.com", storage.ForgeGitLab: "https://gitlab.com/api/v4"}

var (
	// owner/name, as GitHub, Gitea and Forgejo name repositories.
	ownerNameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$`)
	// A GitLab project: its numeric id, or its path with every group.
	gitlabProjectRE = regexp.MustCompile(`^([0-9]+|[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+)$`)
)

// forgeFields is what a request makes of a project's forge, over old (nil: none):
// remove is true for "forge": null; set is false when the request leaves it alone.
func (f forgeField) fields(old *storage.ProjectForge) (fields storage.ProjectForgeFields, set, remove bool, err error) {
	if !f.present {
		return storage.ProjectForgeFields{}, false, false, nil
	}
	if f.in == nil {
		return storage.ProjectForgeFields{}, false, true, nil
	}
	in := f.in
	if old != nil {
		fields = storage.ProjectForgeFields{Type: old.Type, APIURL: old.APIURL, Repository: old.Repository,
			StatusPerJob: old.StatusPerJob, PullRequestsFromForks: old.PullRequestsFromForks}
	}
	if in.Type != nil {
		if *in.Type != fields.Type && in.APIURL == nil {
			fields.APIURL = "" // another forge: its own default, or the request must say
		}
		fields.Type = *in.Type
	}
	if in.APIURL != nil {
		fields.APIURL = *in.APIURL
	}
	if in.Repository != nil {
		fields.Repository = *in.Repository
	}
	if in.StatusPerJob != nil {
		fields.StatusPerJob = *in.StatusPerJob
	}
	if in.PullRequestsFromForks != nil {
		fields.PullRequestsFromForks = *in.PullRequestsFromForks
	}
	fields.Token = in.Token
	if err := validForge(&fields); err != nil {
		return storage.ProjectForgeFields{}, false, false, err
	}
	return fields, true, false, nil
}

// validForge checks forge settings, filling in the type's API URL when it has a
// default; each error names its field.
func validForge(f *storage.ProjectForgeFields) error {
	switch f.Type {
	case storage.ForgeGitHub, storage.ForgeGitea, storage.ForgeForgejo, storage.ForgeGitLab:
	case "":
		return httpkit.Unprocessable("forge.type", "forge.type is required: github, gitea, forgejo or gitlab")
	default:
		return httpkit.Unprocessable("forge.type", "forge.type %q must be github, gitea, forgejo or gitlab", f.Type)
	}
	if f.APIURL == "" {
		f.APIURL = defaultAPIURL[f.Type]
	}
	if f.APIURL == "" {
		return httpkit.Unprocessable("forge.api_url", "forge.api_url is required for %s: the instance's root, like https://codeberg.org", f.Type)
	}
	u, err := url.Parse(f.APIURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil ||
		u.RawQuery != "" || u.Fragment != "" || strings.ContainsAny(f.APIURL, " \t\r\n") {
		return httpkit.Unprocessable("forge.api_url", "forge.api_url %q must be an http or https URL with a host, "+
			"and no user, query or fragment", f.APIURL)
	}
	f.APIURL = strings.TrimRight(f.APIURL, "/")
	bad := func(part string) bool { return part == "." || part == ".." }
	switch {
	case f.Repository == "":
		return httpkit.Unprocessable("forge.repository", "forge.repository is required (owner/name)")
	case f.Type == storage.ForgeGitLab && !gitlabProjectRE.MatchString(f.Repository):
		return httpkit.Unprocessable("forge.repository", "forge.repository %q must be a GitLab project's path "+
			"(group/subgroup/name) or its numeric id", f.Repository)
	case f.Type != storage.ForgeGitLab && !ownerNameRE.MatchString(f.Repository):
		return httpkit.Unprocessable("forge.repository", "forge.repository %q must be owner/name", f.Repository)
	}
	for _, part := range strings.Split(f.Repository, "/") {
		if bad(part) {
			return httpkit.Unprocessable("forge.repository", "forge.repository %q must not have . or .. parts", f.Repository)
		}
	}
	if t := f.Token; t != nil {
		// It goes into an HTTP header as it is.
		if len(*t) > 4096 || strings.IndexFunc(*t, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
			return httpkit.Unprocessable("forge.token", "forge.token must be at most 4096 characters, without spaces or control characters")
		}
	}
	return nil
}
