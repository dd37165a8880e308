// Package httpkit is the toolkit every REST handler of the coordinator uses: JSON
// answers, errors as {"error", "field"} with one mapping from Go errors to statuses,
// strict JSON request decoding, pagination (?limit=, ?offset=) and its list envelope,
// and authorization answered in JSON.
package httpkit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/storage"
)

// Error is an error the client caused, with the status and the field at fault.
type Error struct {
	Status  int
	Message string
	Field   string
}

func (e *Error) Error() string { return e.Message }

// Errorf makes a client error.
func Errorf(status int, field, format string, args ...any) *Error {
	return &Error{Status: status, Field: field, Message: fmt.Sprintf(format, args...)}
}

type errorBody struct {
	Error string `json:"error"`
	Field string `json:"field,omitempty"`
}

// WriteError writes a JSON error; it is the auth.ErrorWriter for every middleware.
func WriteError(w http.ResponseWriter, _ *http.Request, status int, msg string) {
	WriteJSON(w, status, errorBody{Error: msg})
}

// Fail maps any error to a status in one place: client errors as they are,
// storage.ErrNotFound 404, storage.ErrConflict 409, an unreachable database 503,
// everything else 500 with the detail logged, never sent.
func Fail(log *slog.Logger, w http.ResponseWriter, r *http.Request, err error) {
	var ae *Error
	switch {
	case errors.As(err, &ae):
		WriteJSON(w, ae.Status, errorBody{Error: ae.Message, Field: ae.Field})
	case errors.Is(err, storage.ErrNotFound):
		WriteJSON(w, http.StatusNotFound, errorBody{Error: "not found"})
	case errors.Is(err, storage.ErrConflict):
		WriteJSON(w, http.StatusConflict, errorBody{Error: "conflict: " + conflictDetail(err)})
	case databaseDown(err):
		WriteJSON(w, http.StatusServiceUnavailable, errorBody{Error: "database unavailable"})
	default:
		log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		WriteJSON(w, http.StatusInternalServerError, errorBody{Error: "internal error"})
	}
}

func conflictDetail(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, storage.ErrConflict.Error()+": "); i >= 0 {
		return s[i+len(storage.ErrConflict.Error())+2:]
	}
	return "already exists"
}

func databaseDown(err error) bool {
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) || pgconn.SafeToRetry(err) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	// PostgreSQL shutting down or restarting ends the pool's open connections with
	// class 57P (admin or crash shutdown, cannot connect now) or 08 (connection).
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (strings.HasPrefix(pe.Code, "57P") || strings.HasPrefix(pe.Code, "08"))
}

// Unprocessable is a 422 naming the field at fault.
func Unprocessable(field, format string, args ...any) error {
	return Errorf(http.StatusUnprocessableEntity, field, format, args...)
}

// Require is auth.Require answering with JSON errors.
func Require(p auth.Permission) func(http.Handler) http.Handler { return auth.Require(p, WriteError) }

// WriteJSON writes v as the JSON answer with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// Decode reads a JSON object into dst: 400 for malformed JSON, 413 over the body
// limit, 408 when the body did not arrive in time, 422 for unknown fields or wrong
// types (naming the field).
func Decode(r *http.Request, dst any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(dst)
	if err == nil {
		if f := nulField(reflect.ValueOf(dst)); f != "" {
			// PostgreSQL text cannot hold NUL; refuse it here with the field's name.
			return Errorf(http.StatusUnprocessableEntity, f, "field %q must not contain NUL characters", f)
		}
		if dec.More() {
			return Errorf(http.StatusBadRequest, "", "request body must hold one JSON object")
		}
		if _, err := dec.Token(); err != io.EOF {
			return Errorf(http.StatusBadRequest, "", "request body must hold one JSON object")
		}
		return nil
	}
	var mbe *http.MaxBytesError
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	var he *Error // a field's own UnmarshalJSON said what is wrong
	switch {
	case errors.As(err, &he):
		return he
	case errors.As(err, &mbe):
		return Errorf(http.StatusRequestEntityTooLarge, "", "request body is larger than %d bytes", mbe.Limit)
	case SlowBody(err):
		return Errorf(http.StatusRequestTimeout, "", "request body did not arrive within server.request_timeout")
	case errors.Is(err, io.EOF):
		return Errorf(http.StatusBadRequest, "", "request body is empty; a JSON object is expected")
	case errors.As(err, &se), errors.Is(err, io.ErrUnexpectedEOF):
		return Errorf(http.StatusBadRequest, "", "malformed JSON: %v", err)
	case errors.As(err, &te):
		return Errorf(http.StatusUnprocessableEntity, te.Field, "field %q must be %s", te.Field, jsonKind(te.Type.Kind().String()))
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		f := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return Errorf(http.StatusUnprocessableEntity, f, "unknown field %q", f)
	}
	return Errorf(http.StatusBadRequest, "", "malformed JSON: %v", err)
}

// SlowBody reports whether err is a request body read that ran past its deadline
// (server.request_timeout).
func SlowBody(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

// nulField names the top-level field of a decoded request that holds a NUL
// character anywhere inside it, or returns "".
func nulField(v reflect.Value) string {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return ""
		}
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return ""
	}
	for i := 0; i < v.NumField(); i++ {
		if hasNUL(v.Field(i)) {
			return strings.Split(v.Type().Field(i).Tag.Get("json"), ",")[0]
		}
	}
	return ""
}

func hasNUL(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		return !v.IsNil() && hasNUL(v.Elem())
	case reflect.String:
		return strings.ContainsRune(v.String(), 0)
	case reflect.Slice, reflect.Array:
		for i := 0; i < v.Len(); i++ {
			if hasNUL(v.Index(i)) {
				return true
			}
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if hasNUL(v.Field(i)) {
				return true
			}
		}
	}
	return false
}

func jsonKind(k string) string {
	switch k {
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "slice":
		return "a list"
	case "struct", "map":
		return "an object"
	}
	return "a number"
}

// List is the envelope of every paginated answer.
type List[T any] struct {
	Items  []T   `json:"items"`
	Total  int64 `json:"total"`
	Limit  int   `json:"limit"`
	Offset int   `json:"offset"`
}

// Pagination: a list answers DefaultLimit items unless ?limit= asks for another
// number, at most MaxLimit.
const (
	DefaultLimit = 50
	MaxLimit     = 500
)

// PageOf reads ?limit= (1 to MaxLimit, default DefaultLimit) and ?offset= (>= 0,
// default 0).
func PageOf(r *http.Request) (storage.Page, error) {
	p := storage.Page{Limit: DefaultLimit}
	q := r.URL.Query()
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxLimit {
			return p, Errorf(http.StatusUnprocessableEntity, "limit", "limit must be an integer from 1 to %d", MaxLimit)
		}
		p.Limit = n
	}
	if s := q.Get("offset"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return p, Errorf(http.StatusUnprocessableEntity, "offset", "offset must be a non-negative integer")
		}
		p.Offset = n
	}
	return p, nil
}

// PositiveQuery reads an optional query parameter that must be a positive integer
// (an id to filter by); absent is 0.
func PositiveQuery(r *http.Request, name string) (int64, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, Unprocessable(name, "%s must be a positive integer", name)
	}
	return n, nil
}

// NewList wraps a page of items in the list envelope.
func NewList[T any](items []T, total int64, p storage.Page) List[T] {
	if items == nil {
		items = []T{}
	}
	return List[T]{Items: items, Total: total, Limit: p.Limit, Offset: p.Offset}
}
