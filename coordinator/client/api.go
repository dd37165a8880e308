package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/fc-ci/fc/protocol"
)

// APIError is an error answer of the API: its status and its JSON error message.
type APIError struct {
	Status  int
	Message string
	Field   string
}

func (e *APIError) Error() string {
	msg := e.Message
	if e.Field != "" && !strings.Contains(msg, e.Field) {
		msg = e.Field + ": " + msg
	}
	return fmt.Sprintf("%s (HTTP %d %s)", msg, e.Status, http.StatusText(e.Status))
}

// errNotLoggedIn is the answer when no coordinator or key is known.
var errNotLoggedIn = errors.New("not logged in: run `fc login URL` (or set FC_URL and FC_API_KEY)")

// api talks to one coordinator.
type api struct {
	base string // the coordinator's root URL, without a trailing slash
	key  string
	http *http.Client
}

func newAPI(c Config) (*api, error) {
	if c.URL == "" {
		return nil, errNotLoggedIn
	}
	base, err := normalizeURL(c.URL)
	if err != nil {
		return nil, err
	}
	return &api{base: base, key: c.APIKey, http: &http.Client{}}, nil
}

// normalizeURL checks a coordinator URL and drops a trailing slash.
func normalizeURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", usagef("the coordinator's URL must be http://HOST[:PORT] or https://…, not %q", s)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// needKey refuses a write before sending it when no key is known.
func (a *api) needKey() error {
	if a.key == "" {
		return errNotLoggedIn
	}
	return nil
}

// do sends a request to path (under /api/v1) and returns the body of a 2xx answer;
// any other answer is an *APIError.
func (a *api) do(ctx context.Context, method, path string, q url.Values, body any) ([]byte, error) {
	u := a.base + "/api/v1" + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	a.authorize(req.Header)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: read answer: %w", method, u, err)
	}
	if resp.StatusCode/100 != 2 {
		return nil, errorOf(resp.StatusCode, b)
	}
	return b, nil
}

func (a *api) authorize(h http.Header) {
	h.Set("User-Agent", "fc/"+protocol.BuildVersion)
	if a.key != "" {
		h.Set("Authorization", "Bearer "+a.key)
	}
}

// errorOf makes an *APIError of an answer, with the API's message when it has one.
func errorOf(status int, body []byte) error {
	var e struct {
		Error string `json:"error"`
		Field string `json:"field"`
	}
	msg := ""
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		msg = e.Error
	} else {
		msg = strings.TrimSpace(string(body))
		if len(msg) > 300 {
			msg = msg[:300] + "…"
		}
		if msg == "" {
			msg = http.StatusText(status)
		}
	}
	return &APIError{Status: status, Message: msg, Field: e.Field}
}

// page is the API's list envelope with its items kept as they came.
type page struct {
	Items  []json.RawMessage `json:"items"`
	Total  int64             `json:"total"`
	Limit  int               `json:"limit"`
	Offset int               `json:"offset"`
}

// pageSize is what a followed list asks for at a time (the API's maximum).
const pageSize = 500

// list fetches one page when limit or offset is set, else every page in turn. raw is
// the JSON to print for --json: the answer itself, or for followed pages one
// envelope holding every item.
func (a *api) list(ctx context.Context, path string, q url.Values, limit, offset int) (items []json.RawMessage, raw []byte, err error) {
	if q == nil {
		q = url.Values{}
	}
	if limit > 0 || offset > 0 {
		if limit > 0 {
			q.Set("limit", strconv.Itoa(limit))
		}
		q.Set("offset", strconv.Itoa(offset))
		b, err := a.do(ctx, http.MethodGet, path, q, nil)
		if err != nil {
			return nil, nil, err
		}
		var p page
		if err := json.Unmarshal(b, &p); err != nil {
			return nil, nil, fmt.Errorf("GET %s: decode list: %w", path, err)
		}
		return p.Items, b, nil
	}
	all := page{Items: []json.RawMessage{}}
	for {
		q.Set("limit", strconv.Itoa(pageSize))
		q.Set("offset", strconv.Itoa(len(all.Items)))
		b, err := a.do(ctx, http.MethodGet, path, q, nil)
		if err != nil {
			return nil, nil, err
		}
		var p page
		if err := json.Unmarshal(b, &p); err != nil {
			return nil, nil, fmt.Errorf("GET %s: decode list: %w", path, err)
		}
		all.Items = append(all.Items, p.Items...)
		all.Total = p.Total
		if len(p.Items) == 0 || int64(len(all.Items)) >= p.Total {
			break
		}
	}
	all.Limit = len(all.Items)
	raw, err = json.Marshal(all)
	return all.Items, raw, err
}
