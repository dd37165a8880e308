package dashboard_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage"
)

// agentHealthJSON is what GET /api/v1/agents/{id} says of an agent's health.
type agentHealthJSON struct {
	ConsecutiveFailures int        `json:"consecutive_failures"`
	DisabledUntil       *time.Time `json:"disabled_until"`
	LastFailure         string     `json:"last_failure"`
}

func (s *site) agentHealth(id int64) agentHealthJSON {
	s.t.Helper()
	code, body := s.get(fmt.Sprintf("/api/v1/agents/%d", id), s.person(storage.RoleReadOnly))
	var h agentHealthJSON
	if err := json.Unmarshal([]byte(body), &h); code != http.StatusOK || err != nil {
		s.t.Fatalf("GET agent %d: %d %v\n%s", id, code, err, body)
	}
	return h
}

// TestAgents_BackedOffAgentIsShownAndAnAdminsEnableResetsIt: the agents page and the
// API show an agent backed off after infrastructure failures (until when, how many)
// and one with failures below the threshold; an admin's Enable resets both, a
// read-only person cannot.
func TestAgents_BackedOffAgentIsShownAndAnAdminsEnableResetsIt(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	sick := s.agent("sick-builder", "")
	s.exec(`UPDATE agents SET consecutive_failures = 4, disabled_until = now() + interval '2 hours',
		last_failure = 'nix-store --realise exited with 1' WHERE id = $1`, sick)
	shaky := s.agent("shaky-builder", "consecutive_failures=1")
	past := s.agent("past-builder", "")
	s.exec(`UPDATE agents SET consecutive_failures = 3, disabled_until = now() - interval '1 minute' WHERE id = $1`, past)
	fine := s.agent("fine-builder", "")

	h := s.agentHealth(sick)
	if h.ConsecutiveFailures != 4 || h.DisabledUntil == nil || time.Until(*h.DisabledUntil) < time.Hour ||
		h.LastFailure != "nix-store --realise exited with 1" {
		t.Errorf("API of the backed-off agent: %+v", h)
	}
	if h := s.agentHealth(fine); h.ConsecutiveFailures != 0 || h.DisabledUntil != nil {
		t.Errorf("API of a healthy agent: %+v", h)
	}
	_, list := s.get("/api/v1/agents", s.person(storage.RoleReadOnly))
	if !strings.Contains(list, `"consecutive_failures":4`) || !strings.Contains(list, `"disabled_until":"`) {
		t.Errorf("GET /api/v1/agents lacks the health fields:\n%s", list)
	}

	reader, admin := s.person(storage.RoleReadOnly), s.person(storage.RoleAdmin)
	_, body := s.get("/agents", reader)
	row := func(page string, id int64) string {
		_, rest, _ := strings.Cut(page, fmt.Sprintf(`id="agent-%d"`, id))
		r, _, _ := strings.Cut(rest, "</tr>")
		return r
	}
	if r := row(body, sick); !strings.Contains(r, "backed off until <time") || !strings.Contains(r, "nix-store --realise exited with 1") {
		t.Errorf("the backed-off agent's row:\n%s", r)
	}
	if r := row(body, shaky); !strings.Contains(r, "1 infrastructure failure<") || strings.Contains(r, "backed off") {
		t.Errorf("the agent with one failure:\n%s", r)
	}
	if r := row(body, past); strings.Contains(r, "backed off") || !strings.Contains(r, "3 infrastructure failures") {
		t.Errorf("an agent whose backoff is over is still shown backed off:\n%s", r)
	}
	if r := row(body, fine); strings.Contains(r, "infrastructure") || strings.Contains(r, "backed off") {
		t.Errorf("a healthy agent's row:\n%s", r)
	}
	if strings.Contains(body, `action="/agents/`) {
		t.Error("a read-only person sees the Enable control")
	}
	if res, _ := s.post(fmt.Sprintf("/agents/%d/enable", sick), nil, reader); res.StatusCode != http.StatusForbidden ||
		s.agentHealth(sick).ConsecutiveFailures != 4 {
		t.Fatalf("read-only enable: %d", res.StatusCode)
	}

	_, body = s.get("/agents", admin)
	if !strings.Contains(row(body, sick), fmt.Sprintf(`action="/agents/%d/enable"`, sick)) ||
		strings.Contains(row(body, fine), "/enable") {
		t.Error("admin's Enable is not offered for the backed-off agent only")
	}
	res, page := s.post(fmt.Sprintf("/agents/%d/enable", sick), nil, admin)
	if res.StatusCode != http.StatusSeeOther {
		t.Fatalf("admin enable: %d\n%s", res.StatusCode, page)
	}
	if h := s.agentHealth(sick); h.ConsecutiveFailures != 0 || h.DisabledUntil != nil {
		t.Errorf("after the admin's enable: %+v, want reset", h)
	}
	if _, body = s.get("/agents", admin); strings.Contains(row(body, sick), "backed off") {
		t.Error("the page still shows the agent backed off after Enable")
	}
}
