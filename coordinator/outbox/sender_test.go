package outbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/coordinator/forge"
	"github.com/fc-ci/fc/coordinator/outbox"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

const commit = "0123456789abcdef0123456789abcdef01234567"

// run starts an outbox over db until the test ends, and returns its log.
func run(t *testing.T, db *storage.DB, cfg outbox.Config) *coordtest.LogBuffer {
	t.Helper()
	log := &coordtest.LogBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if cfg.Backoff == 0 {
		cfg.Backoff = 50 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); outbox.New(cfg, db).Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("outbox log:\n%s", log.String())
		}
	})
	return log
}

// project makes a project with settings.
func project(t *testing.T, db *storage.DB, name string) storage.Project {
	t.Helper()
	p, err := db.CreateProject(context.Background(), storage.ProjectFields{Name: name, RepositoryURL: "https://example.org/r.git", Enabled: true})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func withForge(t *testing.T, db *storage.DB, p storage.Project, apiURL, token string) {
	t.Helper()
	if _, err := db.SetProjectForge(context.Background(), p.ID, storage.ProjectForgeFields{Type: storage.ForgeGitHub, APIURL: apiURL,
		Repository: "octo/demo", Token: &token}); err != nil {
		t.Fatal(err)
	}
}

func withWebhook(t *testing.T, db *storage.DB, p storage.Project, url, secret string) {
	t.Helper()
	if _, err := db.SetProjectNotifications(context.Background(), p.ID, storage.ProjectNotificationsFields{On: storage.NotifyOnAlways,
		WebhookURL: url, WebhookSecret: &secret}); err != nil {
		t.Fatal(err)
	}
}

func statusDelivery(p storage.Project, state, context string) storage.NewDelivery {
	b, _ := json.Marshal(forge.Status{SHA: commit, State: state, Context: context, Description: state, TargetURL: "http://ci/eval/1"})
	return storage.NewDelivery{Kind: storage.DeliveryStatus, Target: "github octo/demo " + context, ProjectID: p.ID, Payload: b,
		OrderingKey: "status/" + strconv.FormatInt(p.ID, 10) + "/" + commit + "/" + context}
}

func enqueue(t *testing.T, db *storage.DB, ds ...storage.NewDelivery) {
	t.Helper()
	if err := db.EnqueueDeliveries(context.Background(), ds); err != nil {
		t.Fatal(err)
	}
}

// deliveries lists every delivery, oldest first.
func deliveries(t *testing.T, db *storage.DB) []storage.Delivery {
	t.Helper()
	ds, _, err := db.ListDeliveries(context.Background(), "", storage.Page{Limit: 500})
	if err != nil {
		t.Fatal(err)
	}
	for i, j := 0, len(ds)-1; i < j; i, j = i+1, j-1 {
		ds[i], ds[j] = ds[j], ds[i]
	}
	return ds
}

// waitSettled waits until no delivery is pending.
func waitSettled(t *testing.T, db *storage.DB, within time.Duration) []storage.Delivery {
	t.Helper()
	var ds []storage.Delivery
	coordtest.Eventually(t, within, "every delivery delivered or failed", func() bool {
		ds = deliveries(t, db)
		for _, d := range ds {
			if d.Status == storage.DeliveryPending {
				return false
			}
		}
		return len(ds) > 0
	})
	return ds
}

// seenStatus is a status a fake forge was sent.
type seenStatus struct {
	Path, Auth string
	Body       map[string]string
}

// fakeForge answers statuses with the codes in answers, one per request (201 once
// they run out).
type fakeForge struct {
	*httptest.Server
	mu      sync.Mutex
	answers []int
	seen    []seenStatus
}

func newFakeForge(t *testing.T, answers ...int) *fakeForge {
	f := &fakeForge{answers: answers}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]string
		_ = json.NewDecoder(r.Body).Decode(&body)
		f.mu.Lock()
		f.seen = append(f.seen, seenStatus{Path: r.Method + " " + r.URL.Path, Auth: r.Header.Get("Authorization"), Body: body})
		code := http.StatusCreated
		if len(f.answers) > 0 {
			code, f.answers = f.answers[0], f.answers[1:]
		}
		f.mu.Unlock()
		w.WriteHeader(code)
		fmt.Fprint(w, `{"message":"answer"}`)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeForge) statuses() []seenStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]seenStatus(nil), f.seen...)
}

// The forge answers 500 twice, then 201: the status is delivered on the third
// attempt, the same request each time, and the list says so.
func TestDelivery_RetriedWithBackoffUntilDelivered(t *testing.T) {
	t.Parallel()
	db := storagetest.New(t)
	gh := newFakeForge(t, 500, 500)
	p := project(t, db, "demo")
	withForge(t, db, p, gh.URL, "gh-token")
	enqueue(t, db, statusDelivery(p, forge.StateSuccess, "fc/main"))
	run(t, db, outbox.Config{Backoff: 100 * time.Millisecond})
	ds := waitSettled(t, db, 30*time.Second)
	if len(ds) != 1 || ds[0].Status != storage.DeliveryDelivered || ds[0].Attempts != 3 || ds[0].DeliveredAt == nil {
		t.Fatalf("deliveries %+v, want one delivered after 3 attempts", ds)
	}
	if !strings.Contains(ds[0].LastError, "500") {
		t.Errorf("last_error %q, want the 500 that came before", ds[0].LastError)
	}
	seen := gh.statuses()
	if len(seen) != 3 {
		t.Fatalf("the forge saw %d requests, want 3", len(seen))
	}
	for _, s := range seen {
		if s.Path != "POST /repos/octo/demo/statuses/"+commit || s.Auth != "Bearer gh-token" || s.Body["state"] != "success" || s.Body["context"] != "fc/main" {
			t.Errorf("request %+v", s)
		}
	}
}

// A refusal that will not change (404) fails the delivery at once; repeated
// server errors fail it after max attempts. Neither error nor the log shows the token.
func TestDelivery_FailsForGoodWithoutShowingTheToken(t *testing.T) {
	t.Parallel()
	db := storagetest.New(t)
	refusing, failing := newFakeForge(t, 404), newFakeForge(t, 502, 502, 502, 502)
	a, b := project(t, db, "a"), project(t, db, "b")
	withForge(t, db, a, refusing.URL, "secret-token-aaa")
	withForge(t, db, b, failing.URL, "secret-token-bbb")
	enqueue(t, db, statusDelivery(a, forge.StateFailure, "fc/main"), statusDelivery(b, forge.StateFailure, "fc/main"))
	log := run(t, db, outbox.Config{Backoff: 20 * time.Millisecond, MaxAttempts: 3})
	ds := waitSettled(t, db, 30*time.Second)
	if ds[0].Status != storage.DeliveryFailed || ds[0].Attempts != 1 || !strings.Contains(ds[0].LastError, "404") {
		t.Errorf("refused: %+v, want failed after 1 attempt", ds[0])
	}
	if ds[1].Status != storage.DeliveryFailed || ds[1].Attempts != 3 || !strings.Contains(ds[1].LastError, "502") {
		t.Errorf("failing: %+v, want failed after 3 attempts", ds[1])
	}
	for _, secret := range []string{"secret-token-aaa", "secret-token-bbb"} {
		if strings.Contains(log.String(), secret) || strings.Contains(fmt.Sprint(ds), secret) {
			t.Errorf("%s shows up in the log or the deliveries", secret)
		}
	}
	if !log.Contains("delivery failed for good", fmt.Sprintf("delivery=%d", ds[0].ID)) {
		t.Error("no log line says the delivery failed for good")
	}
}

// Statuses of one commit and context go out in the order they were queued, even
// when an earlier one must be retried: the forge ends on the newest state.
func TestDelivery_OneContextInOrder(t *testing.T) {
	t.Parallel()
	db := storagetest.New(t)
	gh := newFakeForge(t, 500)
	p := project(t, db, "demo")
	withForge(t, db, p, gh.URL, "gh-token")
	enqueue(t, db, statusDelivery(p, forge.StatePending, "fc/main"), statusDelivery(p, forge.StateRunning, "fc/main"),
		statusDelivery(p, forge.StateSuccess, "fc/main"))
	run(t, db, outbox.Config{Backoff: 100 * time.Millisecond, Senders: 3})
	waitSettled(t, db, 30*time.Second)
	var states []string
	for _, s := range gh.statuses() {
		states = append(states, s.Body["state"])
	}
	if strings.Join(states, " ") != "pending pending pending success" {
		t.Errorf("the forge saw %v, want the first retried, then the others in order", states)
	}
}

// receiver is an outgoing webhook's receiver: it checks the signature and counts
// the deliveries it accepted, by X-FC-Delivery.
type receiver struct {
	*httptest.Server
	t        *testing.T
	secret   string
	mu       sync.Mutex
	down     bool
	accepted map[string]int
	bodies   map[string][]byte
	events   map[string]string
}

func newReceiver(t *testing.T, secret string) *receiver {
	rc := &receiver{t: t, secret: secret, accepted: map[string]int{}, bodies: map[string][]byte{}, events: map[string]string{}}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if got, want := r.Header.Get(outbox.HeaderSignature), outbox.Sign(secret, body); got != want {
			t.Errorf("signature %q, want %q", got, want)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if r.Method != "POST" || r.Header.Get("Content-Type") != "application/json" || !json.Valid(body) {
			t.Errorf("webhook %s %q %q", r.Method, r.Header.Get("Content-Type"), body)
		}
		rc.mu.Lock()
		defer rc.mu.Unlock()
		if rc.down {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		id := r.Header.Get(outbox.HeaderDelivery)
		rc.accepted[id]++
		rc.bodies[id] = body
		rc.events[id] = r.Header.Get(outbox.HeaderEvent)
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) setDown(down bool) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.down = down
}

// counts is how often each delivery id was accepted.
func (rc *receiver) counts() map[string]int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	out := map[string]int{}
	for k, v := range rc.accepted {
		out[k] = v
	}
	return out
}

func webhookDelivery(p storage.Project, n int) storage.NewDelivery {
	return storage.NewDelivery{Kind: storage.DeliveryWebhook, Target: "http://127.0.0.1/…", ProjectID: p.ID,
		Payload: json.RawMessage(fmt.Sprintf(`{"event": "build.finished", "build": {"id": %d}}`, n))}
}

// Two coordinators' senders on one database never send one delivery twice: each of
// many webhooks arrives once, signed, with its delivery id.
func TestDelivery_TwoSendersNeverSendOneTwice(t *testing.T) {
	t.Parallel()
	db := storagetest.New(t)
	rc := newReceiver(t, "a-webhook-secret-0123")
	p := project(t, db, "demo")
	withWebhook(t, db, p, rc.URL+"/hook?key=s3cr3t-in-the-query", "a-webhook-secret-0123")
	const n = 60
	var ds []storage.NewDelivery
	for i := range n {
		ds = append(ds, webhookDelivery(p, i))
	}
	run(t, db, outbox.Config{Senders: 4})
	run(t, db, outbox.Config{Senders: 4})
	enqueue(t, db, ds...)
	got := waitSettled(t, db, 60*time.Second)
	counts := rc.counts()
	if len(got) != n || len(counts) != n {
		t.Fatalf("%d deliveries, %d received, want %d", len(got), len(counts), n)
	}
	for _, d := range got {
		if d.Status != storage.DeliveryDelivered || d.Attempts != 1 || counts[strconv.FormatInt(d.ID, 10)] != 1 {
			t.Errorf("delivery %d: %s after %d attempts, received %d times", d.ID, d.Status, d.Attempts, counts[strconv.FormatInt(d.ID, 10)])
		}
		if strings.Contains(d.Target, "s3cr3t") {
			t.Errorf("the target shows the URL's query: %q", d.Target)
		}
	}
}

// A sender that claimed a delivery and died mid-send holds it only until its
// lease ends; then another sends it (the claim counted as an attempt).
func TestDelivery_ClaimOfADeadSenderIsTakenOverAfterItsLease(t *testing.T) {
	t.Parallel()
	db := storagetest.New(t)
	rc := newReceiver(t, "a-webhook-secret-0123")
	p := project(t, db, "demo")
	withWebhook(t, db, p, rc.URL, "a-webhook-secret-0123")
	enqueue(t, db, webhookDelivery(p, 1))
	const lease = 2 * time.Second
	claimed, err := db.ClaimDeliveries(context.Background(), 10, lease)
	if err != nil || len(claimed) != 1 {
		t.Fatalf("claim: %v %v", claimed, err)
	}
	at := time.Now()
	if again, _ := db.ClaimDeliveries(context.Background(), 10, lease); len(again) != 0 {
		t.Fatalf("a claimed delivery was claimed again within its lease: %+v", again)
	}
	run(t, db, outbox.Config{Lease: lease})
	ds := waitSettled(t, db, 30*time.Second)
	if ds[0].Status != storage.DeliveryDelivered || ds[0].Attempts != 2 || ds[0].DeliveredAt.Before(at.Add(lease-100*time.Millisecond)) {
		t.Errorf("delivery %+v (claimed at %v), want delivered on attempt 2 after the lease", ds[0], at)
	}
	// The dead sender's answer, arriving late, records nothing.
	if ok, err := db.MarkAttemptFailed(context.Background(), claimed[0].ID, claimed[0].Claim, "late", nil); ok || err != nil {
		t.Errorf("a stale claim recorded its answer: %v %v", ok, err)
	}
	if c := rc.counts(); len(c) != 1 || c[strconv.FormatInt(ds[0].ID, 10)] != 1 {
		t.Errorf("received %v", c)
	}
}

// runCommandDelivery is a build's JSON for run_command.
func runCommandDelivery(p storage.Project) storage.NewDelivery {
	return storage.NewDelivery{Kind: storage.DeliveryCommand, Target: "run_command", ProjectID: p.ID,
		Payload: json.RawMessage(`{"id": 42, "job": "hello", "status": "failed"}`)}
}

// run_command gets the build's JSON on its standard input and in the file
// $FC_BUILD_JSON names, with the delivery's id; a non-zero exit fails the attempt
// with what it printed last, and one that runs too long is killed.
func TestDelivery_RunCommand(t *testing.T) {
	t.Parallel()
	db := storagetest.New(t)
	p := project(t, db, "demo")
	dir := t.TempDir()
	script := fmt.Sprintf(`cat > %[1]s/stdin.json; cp "$FC_BUILD_JSON" %[1]s/file.json; echo "$FC_DELIVERY_ID" > %[1]s/id`, dir)
	enqueue(t, db, runCommandDelivery(p))
	run(t, db, outbox.Config{RunCommand: script})
	ds := waitSettled(t, db, 30*time.Second)
	if ds[0].Status != storage.DeliveryDelivered {
		t.Fatalf("%+v", ds[0])
	}
	for _, name := range []string{"stdin.json", "file.json"} {
		var b map[string]any
		if raw := readFile(t, dir+"/"+name); json.Unmarshal(raw, &b) != nil || b["job"] != "hello" || b["id"] != float64(42) {
			t.Errorf("%s: %q", name, raw)
		}
	}
	if id := strings.TrimSpace(string(readFile(t, dir+"/id"))); id != strconv.FormatInt(ds[0].ID, 10) {
		t.Errorf("FC_DELIVERY_ID %q, want %d", id, ds[0].ID)
	}

	db2 := storagetest.New(t)
	p2 := project(t, db2, "demo")
	enqueue(t, db2, runCommandDelivery(p2))
	run(t, db2, outbox.Config{RunCommand: `echo starting; echo "it broke" >&2; exit 3`, MaxAttempts: 1})
	if d := waitSettled(t, db2, 30*time.Second)[0]; d.Status != storage.DeliveryFailed || !strings.Contains(d.LastError, "exit status 3: it broke") {
		t.Errorf("a failing command: %+v", d)
	}

	db3 := storagetest.New(t)
	p3 := project(t, db3, "demo")
	enqueue(t, db3, runCommandDelivery(p3))
	start := time.Now()
	run(t, db3, outbox.Config{RunCommand: `sleep 60 & wait`, RunCommandTimeout: 500 * time.Millisecond, MaxAttempts: 1})
	if d := waitSettled(t, db3, 30*time.Second)[0]; d.Status != storage.DeliveryFailed || !strings.Contains(d.LastError, "killed after") {
		t.Errorf("a command past its timeout: %+v", d)
	}
	if time.Since(start) > 20*time.Second {
		t.Errorf("the timeout did not end the command and its children promptly")
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return b
}
