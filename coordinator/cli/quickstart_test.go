package cli_test

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// quickstart is a running scripts/quickstart.
type quickstart struct {
	cmd       *exec.Cmd
	stderr    *lockedBuffer
	exited    chan struct{}
	state     string
	dashboard string // the URL it printed
	key       string
	banner    []string // every line it printed on stdout, up to "Press Ctrl-C"
}

var (
	dashboardRE = regexp.MustCompile(`^\s*Dashboard:\s+(\S+)`)
	adminKeyRE  = regexp.MustCompile(`^\s*Admin key:\s+(fc_[0-9a-f]+)`)
)

// startQuickstart runs scripts/quickstart in its own process group (as a terminal
// runs a foreground job) and waits until it has printed the dashboard URL.
func startQuickstart(t *testing.T, state string, env []string) *quickstart {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	cmd := exec.Command(filepath.Join(root, "scripts", "quickstart"))
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	q := &quickstart{cmd: cmd, stderr: &lockedBuffer{}, exited: make(chan struct{}), state: state}
	cmd.Stdout = pw
	cmd.Stderr = writerFunc(func(p []byte) (int, error) { q.stderr.WriteString(string(p)); return len(p), nil })
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	go func() { _ = cmd.Wait(); close(q.exited) }()
	t.Cleanup(func() { q.kill() })
	ready := make(chan struct{}) // closed after the last line of the banner
	go func() {
		defer pr.Close()
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			q.stderr.WriteString("[stdout] " + line + "\n")
			select {
			case <-ready:
			default:
				q.banner = append(q.banner, line)
			}
			if m := adminKeyRE.FindStringSubmatch(line); m != nil {
				q.key = m[1]
			}
			if m := dashboardRE.FindStringSubmatch(line); m != nil {
				q.dashboard = m[1]
			}
			if strings.HasPrefix(line, "Press Ctrl-C") {
				close(ready)
			}
		}
	}()
	select {
	case <-ready:
	case <-q.exited:
		t.Fatalf("quickstart ended (%v) before printing the dashboard URL:\n%s", cmd.ProcessState, q.diagnostics())
	case <-time.After(10 * time.Minute): // the first run may compile FC from scratch
		t.Fatalf("quickstart printed no dashboard URL within 10 minutes:\n%s", q.diagnostics())
	}
	return q
}

func (q *quickstart) diagnostics() string {
	log, _ := os.ReadFile(filepath.Join(q.state, "coordinator.log"))
	if len(log) > 6000 {
		log = log[len(log)-6000:]
	}
	return fmt.Sprintf("--- quickstart output\n%s\n--- end of coordinator.log\n%s", q.stderr, log)
}

// interrupt sends SIGINT to pid (the whole group for a negative one) and waits for the
// script to end; it returns the exit code.
func (q *quickstart) interrupt(t *testing.T, pid int) int {
	t.Helper()
	if err := syscall.Kill(pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-q.exited:
	case <-time.After(90 * time.Second):
		t.Fatalf("quickstart did not stop within 90 s of SIGINT:\n%s", q.diagnostics())
	}
	return q.cmd.ProcessState.ExitCode()
}

// kill stops whatever is left (a failed test): SIGINT to the group, then SIGKILL.
func (q *quickstart) kill() {
	select {
	case <-q.exited:
		return
	default:
	}
	_ = syscall.Kill(-q.cmd.Process.Pid, syscall.SIGINT)
	select {
	case <-q.exited:
	case <-time.After(60 * time.Second):
		_ = syscall.Kill(-q.cmd.Process.Pid, syscall.SIGKILL)
		<-q.exited
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// getJSON fetches url into v (when 200) and returns the status code (0: no answer).
func getJSON(url string, v any) int {
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK && v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			return -1
		}
	}
	return resp.StatusCode
}

func getText(url string) (int, string, string) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
}

// poll calls ok until it holds, failing the test after within.
func poll(t *testing.T, q *quickstart, within time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v\n%s", what, within, q.diagnostics())
		}
		select {
		case <-q.exited:
			t.Fatalf("%s: quickstart ended (%v)\n%s", what, q.cmd.ProcessState, q.diagnostics())
		case <-tick.C:
		}
	}
}

type qsBuild struct {
	ID     int64  `json:"id"`
	Job    string `json:"job"`
	Status string `json:"status"`
}

type qsList[T any] struct {
	Items []T `json:"items"`
	Total int `json:"total"`
}

// sampleBuilds is the newest evaluation of quickstart/examples and its builds by job.
func sampleBuilds(base string) (evalID int64, builds map[string]qsBuild) {
	var js struct{ ID int64 }
	if getJSON(base+"api/v1/projects/quickstart/jobsets/examples", &js) != 200 {
		return 0, nil
	}
	var evs qsList[struct {
		ID     int64  `json:"id"`
		Status string `json:"status"`
	}]
	if getJSON(fmt.Sprintf("%sapi/v1/evaluations?jobset_id=%d", base, js.ID), &evs) != 200 || len(evs.Items) == 0 ||
		evs.Items[0].Status != "succeeded" {
		return 0, nil
	}
	evalID = evs.Items[0].ID
	var bs qsList[qsBuild]
	if getJSON(fmt.Sprintf("%sapi/v1/builds?evaluation_id=%d&limit=500", base, evalID), &bs) != 200 {
		return 0, nil
	}
	builds = map[string]qsBuild{}
	for _, b := range bs.Items {
		builds[b.Job] = b
	}
	return evalID, builds
}

// The sample jobset and what each job ends as.
var sampleWant = map[string]string{
	"hello": "succeeded", "chain-1": "succeeded", "chain-2": "succeeded", "chain-3": "succeeded",
	"slow-log": "succeeded", "broken": "failed", "needs-broken": "dependency_failed",
}

func postgresLeft(t *testing.T, state string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(state, "postgres", "data", "postmaster.pid")); !os.IsNotExist(err) {
		t.Errorf("postmaster.pid still there after the quickstart stopped (%v)", err)
	}
	if out, err := exec.Command("pgrep", "-af", state).Output(); err == nil {
		t.Errorf("processes of the state directory left behind:\n%s", out)
	}
}

func TestQuickstart_BuildsTheSampleStopsOnCtrlCAndReusesItsState(t *testing.T) {
	t.Parallel()
	start := time.Now()
	state, err := os.MkdirTemp("", "fc-qs-") // short: the socket path must fit
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(state) })
	if err := os.Chmod(state, 0o755); err != nil { // the postgres user must reach state/postgres
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	salt := "qs" + hex.EncodeToString(b) // fresh derivations: nothing passes on old outputs
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FC_") { // a developer's FC_ settings must not leak in
			env = append(env, kv)
		}
	}
	env = append(env, "FC_STATE_DIR="+state, "FC_SERVER__HOST=127.0.0.1", "FC_SERVER__PORT="+port, "FC_QUICKSTART_SALT="+salt)

	q := startQuickstart(t, state, env)
	t.Logf("first run: dashboard printed after %v", time.Since(start).Round(time.Millisecond))
	base := q.dashboard
	if base != "http://127.0.0.1:"+port+"/" {
		t.Fatalf("dashboard URL %q, want http://127.0.0.1:%s/", base, port)
	}
	if saved, _ := os.ReadFile(filepath.Join(state, "admin-key")); q.key == "" || strings.TrimSpace(string(saved)) != q.key {
		t.Errorf("admin key printed %q, saved %q", q.key, saved)
	}
	printed := q.summary(t)
	if printed.password == "" {
		t.Errorf("the first run printed no admin user's password:\n%s", strings.Join(q.banner, "\n"))
	} else if who := signIn(t, q.dashboard, "admin", printed.password); who != "admin" {
		t.Errorf("signing in as admin with the printed password: signed in as %q", who)
	}

	// The slow job's log is readable while it runs.
	var evalID int64
	var builds map[string]qsBuild
	poll(t, q, 3*time.Minute, "the sample evaluation succeeds", func() bool {
		evalID, builds = sampleBuilds(base)
		return evalID != 0 && len(builds) == len(sampleWant)
	})
	slow := builds["slow-log"].ID
	// The banner came after the evaluation: it lists every job's build page, and
	// points at the slow one.
	for job := range sampleWant {
		if want := fmt.Sprintf("%sbuild/%d", base, builds[job].ID); printed.builds[job] != want {
			t.Errorf("printed build page of %s: %q, want %q", job, printed.builds[job], want)
		}
	}
	if !strings.Contains(printed.lines["slow-log"], "open this one now") {
		t.Errorf("slow-log's line does not say to open it now: %q", printed.lines["slow-log"])
	}
	poll(t, q, 60*time.Second, "slow-log's live log shows lines while it runs", func() bool {
		var bl qsBuild
		getJSON(fmt.Sprintf("%sapi/v1/builds/%d", base, slow), &bl)
		if bl.Status != "running" {
			if bl.Status != "queued" {
				t.Fatalf("slow-log is %s before its live log was seen", bl.Status)
			}
			return false
		}
		code, _, log := getText(fmt.Sprintf("%sapi/v1/builds/%d/log", base, slow))
		return code == 200 && strings.Contains(log, "slow-log: line ") && !strings.Contains(log, "line 50 of 50")
	})
	poll(t, q, 3*time.Minute, "every sample build reaches its expected status", func() bool {
		_, builds = sampleBuilds(base)
		for job, want := range sampleWant {
			if builds[job].Status != want {
				return false
			}
		}
		return true
	})
	broken := builds["broken"].ID
	if code, _, log := getText(fmt.Sprintf("%sapi/v1/builds/%d/log", base, slow)); code != 200 || !strings.Contains(log, "slow-log: line 50 of 50") {
		t.Errorf("slow-log's log (%d) lacks its last line:\n%s", code, log)
	}
	code, ctype, page := getText(base)
	if code != 200 || !strings.HasPrefix(ctype, "text/html") || !strings.Contains(page, fmt.Sprintf(`href="/build/%d"`, broken)) {
		t.Errorf("dashboard %s: %d %s, want the home page listing build %d:\n%s", base, code, ctype, broken, page)
	}
	var agents qsList[struct {
		Name      string `json:"name"`
		Connected bool   `json:"connected"`
	}]
	if getJSON(base+"api/v1/agents", &agents) != 200 || agents.Total != 1 || agents.Items[0].Name != "local" || !agents.Items[0].Connected {
		t.Errorf("agents = %+v, want the one local agent, connected", agents)
	}
	t.Logf("first run: builds finished after %v", time.Since(start).Round(time.Millisecond))
	printed.check(t, base, builds)

	// Ctrl-C: SIGINT to the foreground process group stops everything, PostgreSQL too.
	if code := q.interrupt(t, -q.cmd.Process.Pid); code != 0 {
		t.Fatalf("quickstart exited %d after Ctrl-C, want 0:\n%s", code, q.diagnostics())
	}
	postgresLeft(t, state)
	if t.Failed() {
		t.FailNow()
	}

	// Again on the same state: the same key, project, evaluation, builds and logs.
	q2 := startQuickstart(t, state, env)
	if q2.key != q.key || q2.dashboard != base {
		t.Errorf("second run printed key %q and %q, want %q and %q", q2.key, q2.dashboard, q.key, base)
	}
	if again := q2.summary(t); again.password != "" || !strings.Contains(again.user, "printed when it was made") {
		t.Errorf("the second run printed the admin user as %q (password %q), want no new password", again.user, again.password)
	}
	var projects qsList[struct {
		Name string `json:"name"`
	}]
	if getJSON(base+"api/v1/projects", &projects) != 200 || projects.Total != 1 || projects.Items[0].Name != "quickstart" {
		t.Errorf("projects after the second run = %+v, want only quickstart", projects)
	}
	again, builds2 := sampleBuilds(base)
	if again != evalID {
		t.Errorf("newest evaluation %d after the rerun, want %d (nothing changed)", again, evalID)
	}
	for job, want := range sampleWant {
		if b := builds2[job]; b.ID != builds[job].ID || b.Status != want {
			t.Errorf("%s after the rerun: %+v, want build %d %s", job, b, builds[job].ID, want)
		}
	}
	if code, _, log := getText(fmt.Sprintf("%sapi/v1/builds/%d/log", base, broken)); code != 200 || !strings.Contains(log, "this job fails on purpose") {
		t.Errorf("broken's log after the rerun (%d):\n%s", code, log)
	}
	if getJSON(base+"api/v1/agents", &agents) != 200 || agents.Total != 1 {
		t.Errorf("agents after the rerun = %+v, want the same one (its key reused)", agents)
	}

	// SIGINT to the script alone (kill PID) is forwarded to the coordinator.
	if code := q2.interrupt(t, q2.cmd.Process.Pid); code != 0 {
		t.Fatalf("quickstart exited %d after SIGINT, want 0:\n%s", code, q2.diagnostics())
	}
	postgresLeft(t, state)
	t.Logf("whole test: %v", time.Since(start).Round(time.Millisecond))
}
