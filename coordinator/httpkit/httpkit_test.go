package httpkit

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// A query cut by PostgreSQL shutting down or restarting is the database being
// unavailable (503, which clients retry), not FC failing (500); other database
// errors stay 500.
func TestFail_DatabaseShuttingDownIs503(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{&pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"}, http.StatusServiceUnavailable},
		{&pgconn.PgError{Code: "57P03", Message: "the database system is starting up"}, http.StatusServiceUnavailable},
		{&pgconn.PgError{Code: "08006", Message: "connection failure"}, http.StatusServiceUnavailable},
		{&pgconn.PgError{Code: "23505", Message: "duplicate key"}, http.StatusInternalServerError},
		{errors.New("something else"), http.StatusInternalServerError},
	} {
		w := httptest.NewRecorder()
		Fail(slog.New(slog.DiscardHandler), w, httptest.NewRequest("GET", "/api/v1/builds", nil), fmt.Errorf("list builds: %w", c.err))
		if w.Code != c.want {
			t.Errorf("%v: %d %s, want %d", c.err, w.Code, w.Body, c.want)
		}
	}
}
