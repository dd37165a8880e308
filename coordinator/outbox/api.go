package outbox

import (
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/httpkit"
	"github.com/fc-ci/fc/storage"
)

// Routes registers GET /notifications/deliveries (admins only).
func (o *Outbox) Routes(r chi.Router) {
	r.With(httpkit.Require(auth.PermAdmin)).Get("/notifications/deliveries", o.listDeliveries)
}

// deliveryJSON is a delivery as admins see it: where it went and how it fared,
// never what it carried (a mail's text, a build's JSON) nor a secret.
type deliveryJSON struct {
	ID          int64      `json:"id"`
	Kind        string     `json:"kind"`
	Target      string     `json:"target"`
	Status      string     `json:"status"`
	Attempts    int        `json:"attempts"`
	LastError   string     `json:"last_error"`
	CreatedAt   time.Time  `json:"created_at"`
	DeliveredAt *time.Time `json:"delivered_at"`
}

func (o *Outbox) listDeliveries(w http.ResponseWriter, r *http.Request) {
	page, err := httpkit.PageOf(r)
	if err != nil {
		httpkit.Fail(o.log, w, r, err)
		return
	}
	status := r.URL.Query().Get("status")
	switch status {
	case "", storage.DeliveryPending, storage.DeliveryDelivered, storage.DeliveryFailed:
	default:
		httpkit.Fail(o.log, w, r, httpkit.Unprocessable("status", "status %q must be pending, delivered or failed", status))
		return
	}
	ds, total, err := o.db.ListDeliveries(r.Context(), status, page)
	if err != nil {
		httpkit.Fail(o.log, w, r, err)
		return
	}
	out := make([]deliveryJSON, len(ds))
	for i, d := range ds {
		out[i] = deliveryJSON{ID: d.ID, Kind: d.Kind, Target: d.Target, Status: d.Status, Attempts: d.Attempts,
			LastError: d.LastError, CreatedAt: d.CreatedAt.UTC(), DeliveredAt: utc(d.DeliveredAt)}
	}
	httpkit.WriteJSON(w, http.StatusOK, httpkit.NewList(out, total, page))
}
