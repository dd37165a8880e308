package server_test

import (
	"context"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage"
)

type notificationsView struct {
	Email            []string `json:"email"`
	On               string   `json:"on"`
	WebhookURL       string   `json:"webhook_url"`
	WebhookSecretSet bool     `json:"webhook_secret_set"`
}

type projectWithNotifications struct {
	ID            int64              `json:"id"`
	Notifications *notificationsView `json:"notifications"`
}

// A project's notifications are set on create and update, shown by every GET
// without the webhook's secret (only whether one is set), changed field by field,
// and removed with null; the secret reaches storage for the sender.
func TestProjects_NotificationSettings(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	const secret = "whsec-0123456789-SECRET"
	r := e.do("POST", "/api/v1/projects", e.admin, obj{"name": "hello", "repository_url": "https://example.org/hello.git",
		"notifications": obj{"email": []string{"Dev Team <dev@example.org>", "ops@example.org"},
			"webhook_url": "https://hooks.example.org/fc", "webhook_secret": secret}}).want(t, http.StatusCreated)
	if strings.Contains(string(r.Body), secret) {
		t.Fatalf("the secret is shown: %s", r.Body)
	}
	var p projectWithNotifications
	r.decode(t, &p)
	want := notificationsView{Email: []string{"dev@example.org", "ops@example.org"}, On: "failure",
		WebhookURL: "https://hooks.example.org/fc", WebhookSecretSet: true}
	if p.Notifications == nil || !reflect.DeepEqual(*p.Notifications, want) {
		t.Fatalf("created notifications %+v, want %+v", p.Notifications, want)
	}
	for _, path := range []string{fmt.Sprintf("/api/v1/projects/%d", p.ID), "/api/v1/projects/hello", "/api/v1/projects"} {
		got := e.do("GET", path, e.admin, nil).want(t, http.StatusOK)
		if strings.Contains(string(got.Body), secret) || !strings.Contains(string(got.Body), `"webhook_secret_set":true`) {
			t.Errorf("GET %s: %s", path, got.Body)
		}
		// Those who do not manage the project see none of it: addresses are personal,
		// and a webhook URL is often a credential itself.
		for who, key := range map[string]string{"anonymous": "", "read-only": e.key(storage.RoleReadOnly),
			"another owner": e.key(storage.RoleCreateProjects)} {
			got := e.do("GET", path, key, nil).want(t, http.StatusOK)
			if strings.Contains(string(got.Body), "example.org/fc") || strings.Contains(string(got.Body), "ops@example.org") ||
				!strings.Contains(string(got.Body), `"notifications":null`) {
				t.Errorf("GET %s as %s shows the notifications: %s", path, who, got.Body)
			}
		}
	}
	n, ok, err := e.db.ProjectNotifications(context.Background(), p.ID)
	if err != nil || !ok || n.WebhookSecret != secret || n.On != storage.NotifyOnFailure {
		t.Fatalf("stored notifications %+v %v %v", n, ok, err)
	}

	// One field changes; the others and the secret stay.
	e.do("PUT", fmt.Sprintf("/api/v1/projects/%d", p.ID), e.admin, obj{"notifications": obj{"on": "change"}}).
		want(t, http.StatusOK).decode(t, &p)
	want.On = "change"
	if p.Notifications == nil || !reflect.DeepEqual(*p.Notifications, want) {
		t.Fatalf("after changing on: %+v, want %+v", p.Notifications, want)
	}
	if n, _, _ := e.db.ProjectNotifications(context.Background(), p.ID); n.WebhookSecret != secret {
		t.Errorf("the secret changed")
	}
	// "" clears the secret; null removes everything.
	e.do("PUT", fmt.Sprintf("/api/v1/projects/%d", p.ID), e.admin, obj{"notifications": obj{"webhook_secret": ""}}).
		want(t, http.StatusOK).decode(t, &p)
	if p.Notifications == nil || p.Notifications.WebhookSecretSet {
		t.Fatalf("after clearing the secret: %+v", p.Notifications)
	}
	e.do("PUT", fmt.Sprintf("/api/v1/projects/%d", p.ID), e.admin, obj{"notifications": nil}).want(t, http.StatusOK).decode(t, &p)
	if p.Notifications != nil {
		t.Fatalf("after null: %+v", p.Notifications)
	}
	if _, ok, _ := e.db.ProjectNotifications(context.Background(), p.ID); ok {
		t.Error("null left the settings stored")
	}
}

// Bad settings are refused with 422 naming the field, and change nothing.
func TestProjects_NotificationSettingsRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	var p projectWithNotifications
	e.do("POST", "/api/v1/projects", e.admin, obj{"name": "hello", "repository_url": "https://example.org/hello.git",
		"notifications": obj{"email": []string{"dev@example.org"}}}).want(t, http.StatusCreated).decode(t, &p)
	for _, c := range []struct {
		body  obj
		field string
	}{
		{obj{"on": "sometimes"}, "notifications.on"},
		{obj{"email": []string{"not an address"}}, "notifications.email"},
		{obj{"email": "dev@example.org"}, "notifications.email"},
		{obj{"webhook_url": "ftp://example.org/x"}, "notifications.webhook_url"},
		{obj{"webhook_url": "https://user:pw@example.org/x"}, "notifications.webhook_url"},
		{obj{"webhook_secret": "short"}, "notifications.webhook_secret"},
		{obj{"webhook": "https://example.org"}, "notifications.webhook"},
	} {
		r := e.do("PUT", fmt.Sprintf("/api/v1/projects/%d", p.ID), e.admin, obj{"notifications": c.body})
		if r.Status != http.StatusUnprocessableEntity {
			t.Errorf("%v: %d %s, want 422", c.body, r.Status, r.Body)
			continue
		}
		if err := r.apiErr(t, http.StatusUnprocessableEntity); err.Field != c.field {
			t.Errorf("%v: field %q, want %q (%s)", c.body, err.Field, c.field, err.Error)
		}
	}
	if n, _, _ := e.db.ProjectNotifications(context.Background(), p.ID); !reflect.DeepEqual(n.Emails, []string{"dev@example.org"}) || n.On != "failure" {
		t.Errorf("refused requests changed the settings: %+v", n)
	}
	// A project is not created with bad settings.
	e.do("POST", "/api/v1/projects", e.admin, obj{"name": "other", "repository_url": "https://example.org/o.git",
		"notifications": obj{"on": "never"}}).want(t, http.StatusUnprocessableEntity)
	e.do("GET", "/api/v1/projects/other", "", nil).want(t, http.StatusNotFound)
}

// The deliveries list: admins only, newest first, paginated, filtered by status,
// showing where each went and how it fared but never its payload.
func TestDeliveries_List(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	ctx := context.Background()
	var ds []storage.NewDelivery
	for i := range 5 {
		ds = append(ds, storage.NewDelivery{Kind: storage.DeliveryWebhook, Target: "https://hooks.example.org/…",
			Payload: []byte(fmt.Sprintf(`{"event": "build.finished", "build": {"id": %d, "secret_looking": "PAYLOAD"}}`, i))})
	}
	if err := e.db.EnqueueDeliveries(ctx, ds); err != nil {
		t.Fatal(err)
	}
	claimed, err := e.db.ClaimDeliveries(ctx, 2, time.Minute)
	if err != nil || len(claimed) != 2 {
		t.Fatalf("claim: %v %v", claimed, err)
	}
	if ok, err := e.db.MarkAttemptFailed(ctx, claimed[0].ID, claimed[0].Claim, "POST https://hooks.example.org/…: 500", nil); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if ok, err := e.db.MarkDelivered(ctx, claimed[1].ID, claimed[1].Claim); !ok || err != nil {
		t.Fatal(ok, err)
	}
	type item struct {
		ID        int64  `json:"id"`
		Kind      string `json:"kind"`
		Target    string `json:"target"`
		Status    string `json:"status"`
		Attempts  int    `json:"attempts"`
		LastError string `json:"last_error"`
	}
	var page struct {
		Items []item `json:"items"`
		Total int    `json:"total"`
	}
	r := e.do("GET", "/api/v1/notifications/deliveries?limit=2&offset=1", e.admin, nil).want(t, http.StatusOK)
	r.decode(t, &page)
	if page.Total != 5 || len(page.Items) != 2 || page.Items[0].ID <= page.Items[1].ID || strings.Contains(string(r.Body), "PAYLOAD") {
		t.Errorf("page: %s", r.Body)
	}
	e.do("GET", "/api/v1/notifications/deliveries?status=failed", e.admin, nil).want(t, http.StatusOK).decode(t, &page)
	if page.Total != 1 || page.Items[0] != (item{ID: claimed[0].ID, Kind: "webhook", Target: "https://hooks.example.org/…", Status: "failed",
		Attempts: 1, LastError: "POST https://hooks.example.org/…: 500"}) {
		t.Errorf("failed ones: %+v", page)
	}
	e.do("GET", "/api/v1/notifications/deliveries?status=delivered", e.admin, nil).want(t, http.StatusOK).decode(t, &page)
	if page.Total != 1 || page.Items[0].ID != claimed[1].ID {
		t.Errorf("delivered ones: %+v", page)
	}
	if err := e.do("GET", "/api/v1/notifications/deliveries?status=lost", e.admin, nil).apiErr(t, http.StatusUnprocessableEntity); err.Field != "status" {
		t.Errorf("a bad status: %+v", err)
	}
}
