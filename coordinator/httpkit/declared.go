package httpkit

import (
	"net/http"
	"strings"
)

// Declared is the 409 refusing a change to an object declared in source (the
// coordinator's config file, or "repository:<project>/<file>" for a jobset its
// repository declares): it must be changed there.
func Declared(what, source string) error {
	if repo, ok := strings.CutPrefix(source, "repository:"); ok {
		return Errorf(http.StatusConflict, "", "%s is declared in the repository's %s; change it there", what, repo)
	}
	return Errorf(http.StatusConflict, "", "%s is declared in %s; change it there", what, source)
}
