package buildapi

import (
	"fmt"
	"io"
	"net/http"
	"path"
	"strconv"

	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

// refuseDownload answers a product download without a key while the cache is private;
// the challenge lets a browser ask for the key (any user name, the key as password).
func (b *Builds) refuseDownload(w http.ResponseWriter, r *http.Request, err error) {
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	w.Header().Set("WWW-Authenticate", `Basic realm="fc"`)
	httpkit.WriteError(w, r, http.StatusUnauthorized, "the cache is private: downloading a product needs an API key "+
		"(Authorization: Bearer <key>, or HTTP basic with the key as password)")
}

// download streams a product file out of the output's NAR in the cache.
func (b *Builds) download(w http.ResponseWriter, r *http.Request) {
	id, err := idParam(r, "id")
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	nr, err := idParam(r, "nr")
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	x, err := b.db.GetBuild(r.Context(), id)
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	var prod *storage.Product
	for i := range x.Products {
		if int64(x.Products[i].Nr) == nr {
			prod = &x.Products[i]
		}
	}
	if prod == nil || b.files == nil {
		httpkit.Fail(b.log, w, r, storage.ErrNotFound)
		return
	}
	rc, size, err := b.files(r.Context(), prod.Path)
	if err != nil {
		httpkit.Fail(b.log, w, r, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="%s"`, path.Base(prod.Path)))
	if _, err := io.Copy(w, rc); err != nil {
		b.log.Warn("product download", "build", id, "nr", nr, "err", err)
	}
}
