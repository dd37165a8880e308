package server_test

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

type apiKey struct {
	ID         int64      `json:"id"`
	Name       string     `json:"name"`
	Role       string     `json:"role"`
	Key        string     `json:"key"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
}

var keyRE = regexp.MustCompile(`^fc_[0-9a-f]{32}$`)

func TestAPIKeys_CreateShowsTheKeyOnceAndItAuthenticates(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	r := e.do("POST", "/api/v1/api-keys", e.admin, obj{"name": "ci-bot", "role": "create-projects"}).want(t, http.StatusCreated)
	var k apiKey
	r.decode(t, &k)
	if !keyRE.MatchString(k.Key) {
		t.Fatalf("key %q, want fc_ and 32 lower-case hex characters", k.Key)
	}
	if k.ID <= 0 || k.Name != "ci-bot" || k.Role != "create-projects" || k.CreatedAt.IsZero() || k.LastUsedAt != nil {
		t.Errorf("created key = %+v", k)
	}
	if want := fmt.Sprintf("/api/v1/api-keys/%d", k.ID); r.Header.Get("Location") != want {
		t.Errorf("Location %q, want %q", r.Header.Get("Location"), want)
	}
	// Only the hash is stored.
	var hash []byte
	if err := e.db.Pool().QueryRow(context.Background(), `SELECT key_hash FROM api_keys WHERE id = $1`, k.ID).Scan(&hash); err != nil {
		t.Fatal(err)
	}
	if n := e.count(`SELECT count(*) FROM api_keys WHERE key_hash = $1`, []byte(k.Key)); n != 0 {
		t.Errorf("the key itself is stored")
	}

	// The key works, with its role's rights and no more.
	// (It manages the projects it creates, and no other.)
	e.do("POST", "/api/v1/projects", k.Key, obj{"name": "by-bot", "repository_url": "https://example.org/r.git"}).want(t, http.StatusCreated)
	e.createProject("by-admin", nil)
	e.do("DELETE", "/api/v1/projects/by-admin", k.Key, nil).apiErr(t, http.StatusForbidden)
	e.do("GET", "/api/v1/api-keys", k.Key, nil).apiErr(t, http.StatusForbidden)

	// The list never shows the key or its hash.
	lr := e.do("GET", "/api/v1/api-keys", e.admin, nil).want(t, http.StatusOK)
	body := string(lr.Body)
	for _, secret := range []string{k.Key, strings.TrimPrefix(k.Key, "fc_"), hex.EncodeToString(hash)} {
		if strings.Contains(body, secret) {
			t.Errorf("key list contains %q: %s", secret, body)
		}
	}
	var raw struct {
		Items []map[string]json.RawMessage `json:"items"`
		Total int64                        `json:"total"`
		Limit int                          `json:"limit"`
	}
	lr.decode(t, &raw)
	if raw.Total != 2 || len(raw.Items) != 2 || raw.Limit != 50 {
		t.Fatalf("key list: total %d, %d items, limit %d; want the admin key and ci-bot", raw.Total, len(raw.Items), raw.Limit)
	}
	for _, item := range raw.Items {
		for field := range item {
			if strings.Contains(field, "key") || strings.Contains(field, "hash") {
				t.Errorf("key list item has field %q: %s", field, body)
			}
		}
	}
	var l list[apiKey]
	lr.decode(t, &l)
	if l.Items[0].ID != k.ID || l.Items[0].Name != "ci-bot" || l.Items[0].LastUsedAt == nil {
		t.Errorf("newest key first, with its last use recorded: %+v", l.Items[0])
	}

	// Revoked, it authenticates no more.
	e.do("DELETE", fmt.Sprintf("/api/v1/api-keys/%d", k.ID), e.admin, nil).want(t, http.StatusNoContent)
	e.do("GET", "/api/v1/projects", k.Key, nil).apiErr(t, http.StatusUnauthorized)
	e.do("DELETE", fmt.Sprintf("/api/v1/api-keys/%d", k.ID), e.admin, nil).apiErr(t, http.StatusNotFound)
}

func TestAPIKeys_EachCreateMakesADifferentKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	seen := map[string]bool{}
	for i := range 3 {
		var k apiKey
		e.do("POST", "/api/v1/api-keys", e.admin, obj{"name": "same", "role": "read-only"}).want(t, http.StatusCreated).decode(t, &k)
		if seen[k.Key] || !keyRE.MatchString(k.Key) {
			t.Errorf("create %d: key %q repeated or malformed", i, k.Key)
		}
		seen[k.Key] = true
		e.do("GET", "/api/v1/projects", k.Key, nil).want(t, http.StatusOK)
	}
}
