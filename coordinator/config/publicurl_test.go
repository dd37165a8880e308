package config

import (
	"strings"
	"testing"
)

// server.public_url is an absolute http(s) URL or nothing; a bad one is refused with
// an error naming the key, and links fall back to the listen address.
func TestPublicURL(t *testing.T) {
	for _, tc := range []struct {
		value, want, err string
	}{
		{"", "http://127.0.0.1:3000", ""},
		{"https://ci.example.org", "https://ci.example.org", ""},
		{"https://ci.example.org/fc/", "https://ci.example.org/fc", ""},
		{"http://10.0.0.1:8080", "http://10.0.0.1:8080", ""},
		{"ci.example.org", "", "must be an absolute http or https URL"},
		{"ftp://ci.example.org", "", "must be an absolute http or https URL"},
		{"https://", "", "has no host"},
		{"https://user:pw@ci.example.org", "", "must not have a user"},
		{"https://ci.example.org/?x=1", "", "must not have a user, a query"},
		{"https://ci.example.org/%zz", "", "is not a URL"},
	} {
		c := Defaults()
		c.Server.PublicURL = tc.value
		err := c.Validate()
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), "server.public_url") || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("public_url %q: error %v, want one naming server.public_url with %q", tc.value, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("public_url %q: %v", tc.value, err)
		} else if got := c.PublicURL(); got != tc.want {
			t.Errorf("public_url %q: PublicURL() = %q, want %q", tc.value, got, tc.want)
		}
	}
	c := Defaults()
	c.Eval.PullRequestInterval = -1
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "evaluator.pull_request_interval") {
		t.Errorf("a negative pull_request_interval: %v", err)
	}
}
