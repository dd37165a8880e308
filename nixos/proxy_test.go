package nixos_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage/storagetest"
)

// nginxConf writes the virtual hosts as NixOS's nginx module does (proxyWebsockets:
// HTTP/1.1 with the Upgrade and Connection headers, $connection_upgrade mapped in the
// http block), listening on listen, for a private nginx run from dir.
func nginxConf(n nginx, listen, dir string) string {
	var b strings.Builder
	if os.Geteuid() == 0 {
		b.WriteString("user root root;\n") // the workers read temporary files in dir
	}
	fmt.Fprintf(&b, "daemon off;\nworker_processes 1;\npid %s/nginx.pid;\nerror_log %s/error.log;\nevents {}\nhttp {\n", dir, dir)
	for _, p := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		fmt.Fprintf(&b, "  %s_temp_path %s/%s;\n", p, dir, p)
	}
	fmt.Fprintf(&b, "  access_log %s/access.log;\n", dir)
	b.WriteString("  map $http_upgrade $connection_upgrade { default upgrade; '' close; }\n")
	for name, vh := range n.VirtualHosts {
		fmt.Fprintf(&b, "  server {\n    listen %s;\n    server_name %s;\n", listen, name)
		locs := make([]string, 0, len(vh.Locations))
		for l := range vh.Locations {
			locs = append(locs, l)
		}
		sort.Strings(locs)
		for _, l := range locs {
			loc := vh.Locations[l]
			fmt.Fprintf(&b, "    location %s {\n", l)
			if loc.ProxyPass != "" {
				fmt.Fprintf(&b, "      proxy_pass %s;\n", loc.ProxyPass)
			}
			if loc.ProxyWebsockets {
				b.WriteString("      proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection $connection_upgrade;\n")
			}
			b.WriteString("      " + strings.ReplaceAll(strings.TrimSpace(loc.ExtraConfig), "\n", "\n      ") + "\n    }\n")
		}
		b.WriteString("  }\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// startNginx runs nginx with the module's virtual hosts on port until the test ends,
// after nginx -t accepted the configuration.
func startNginx(t *testing.T, n nginx, port int, dir string, log io.Writer) {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		bin = "/usr/sbin/nginx" // not on a non-root PATH
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("nginx is needed (apt-get install nginx-light; .ci/run does): %v", err)
		}
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(nginxConf(n, fmt.Sprintf("127.0.0.1:%d", port), dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-t", "-c", conf).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}
	ng := exec.Command(bin, "-c", conf)
	ng.Stdout, ng.Stderr = log, log
	if err := ng.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ng.Process.Signal(syscall.SIGQUIT); _ = ng.Wait() })
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startUnit runs a unit's ExecStart with its environment and working directory, plus
// extra variables (the stand-ins for systemd's credentials), until the test ends.
func startUnit(t *testing.T, u unit, log io.Writer, extra ...string) *exec.Cmd {
	t.Helper()
	argv := strings.Fields(u.ServiceConfig["ExecStart"].(string))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = u.ServiceConfig["WorkingDirectory"].(string)
	if err := os.MkdirAll(cmd.Dir, 0o700); err != nil { // StateDirectory's or tmpfiles' job
		t.Fatal(err)
	}
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + cmd.Dir, "XDG_CACHE_HOME=" + t.TempDir()}, extra...)
	for k, v := range u.Environment {
		if k != "NIX_REMOTE" && k != "XDG_CACHE_HOME" { // no nix-daemon here; a cache of its own
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	cmd.Env = append(cmd.Env, "FC_CONFIG_FILE="+u.ConfigFile) // environment.etc's file
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	return cmd
}

// The coordinator and an agent run as their units say with the modules' TOML, behind a
// real nginx configured as nginx.enable makes it: the declared key and project exist,
// both daemons tell systemd they are ready
// (Type=notify) and ping its watchdog, the agent's WebSocket session passes
// the proxy, bodies up to server.max_body_size pass, larger ones get 413, and the rate
// limit keys on the client nginx forwards, not on nginx. The admin command, run as
// the module wrote it, creates the key and the enrollment token in the real database.
func TestModules_CoordinatorAndAgentBehindTheGeneratedNginx(t *testing.T) {
	h := newHarness(t)
	dir := t.TempDir()
	urlFile, tokenFile := filepath.Join(dir, "db-url"), filepath.Join(dir, "token")
	if err := os.WriteFile(urlFile, []byte(storagetest.URL(t)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port, proxyPort := freePort(t), freePort(t)
	// An admin key declared by its hash, and a project: applied when the coordinator starts.
	const declaredKey = "fc_0123456789abcdef0123456789abcdef"
	sum := sha256.Sum256([]byte(declaredKey))
	declaredHash := hex.EncodeToString(sum[:])
	proxy := fmt.Sprintf("http://127.0.0.1:%d", proxyPort)
	s, err := h.eval(t, []string{"default"}, fmt.Sprintf(`{
	  services.fc-coordinator = { enable = true; nginx = { enable = true; virtualHost = "127.0.0.1"; };
	    database.createLocally = false; database.urlFile = %q;
	    settings = { state_dir = %q; server = { port = %d; max_body_size = 2097152; rate_limit_rps = 0.01; rate_limit_burst = 4; };
	      api_keys = [ { name = "declared"; role = "admin"; key_hash = %q; } ];
	      projects = [ { name = "examples"; repository_url = "https://example.org/examples.git";
	        jobsets = [ { name = "main"; nix_expression = "release.nix"; } ]; } ]; }; };
	  services.fc-agent = { enable = true; enrollmentTokenFile = %q; settings.coordinator.url = %q;
	    settings.agent = { name = "proxied"; state_dir = %q; roles = [ "build" ]; max_jobs = 1; }; };
	}`, urlFile, filepath.Join(dir, "coordinator"), port, declaredHash, tokenFile, proxy, filepath.Join(dir, "agent")))
	if err != nil || len(s.FailedAssertions) > 0 {
		t.Fatalf("%v %q", err, s.FailedAssertions)
	}
	var log lockedLog
	// Type=notify and WatchdogSec, as systemd would run them.
	coordNotify, coordMsgs := notifySocket(t)
	startUnit(t, s.Units["fc-coordinator"], &log, "FC_DATABASE__URL_FILE="+urlFile,
		"NOTIFY_SOCKET="+coordNotify, "WATCHDOG_USEC=2000000")
	waitNotify(t, coordMsgs, "READY=1", "the coordinator", 90*time.Second, &log)
	waitNotify(t, coordMsgs, "WATCHDOG=1", "the coordinator", 10*time.Second, &log)

	startNginx(t, s.Nginx, proxyPort, dir, &log)

	// Each client of the proxy sends its own address, as an edge proxy would; nginx
	// appends its peer (127.0.0.1, trusted), so the coordinator keys on the first.
	get := func(path, client, key string) (int, string) {
		req, _ := http.NewRequest("GET", proxy+path, nil)
		req.Header.Set("X-Forwarded-For", client)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor(t, 90*time.Second, "the coordinator serving through nginx", &log, func(i int) bool {
		code, _ := get("/health", fmt.Sprintf("198.51.100.%d", i%250+1), "")
		return code == http.StatusOK
	})

	if code, body := get("/api/v1/projects/examples", "198.51.100.251", declaredKey); code != http.StatusOK ||
		!strings.Contains(body, `"declared":true`) {
		t.Errorf("the declared project, with the declared key: %d %s", code, body)
	}

	admin := s.Scripts[0]
	key, err := h.runScript(t, admin, "admin", "create-key", "--name", "proxy-test", "--role", "admin")
	if err != nil {
		t.Fatalf("fc-coordinator-admin admin create-key: %v\n%s", err, key)
	}
	key = strings.TrimSpace(key)
	token, err := h.runScript(t, admin, "admin", "create-agent-token", "--name", "proxied")
	if err != nil {
		t.Fatalf("fc-coordinator-admin admin create-agent-token: %v\n%s", err, token)
	}
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	agentNotify, agentMsgs := notifySocket(t)
	startUnit(t, s.Units["fc-agent"], &log, "FC_COORDINATOR__ENROLLMENT_TOKEN_FILE="+tokenFile,
		"NOTIFY_SOCKET="+agentNotify, "WATCHDOG_USEC=2000000")
	waitNotify(t, agentMsgs, "READY=1", "the agent", 90*time.Second, &log)
	waitFor(t, 90*time.Second, "the agent connected through nginx", &log, func(i int) bool {
		code, body := get("/api/v1/agents", fmt.Sprintf("203.0.113.%d", i%250+1), key)
		return code == http.StatusOK && strings.Contains(body, `"name":"proxied"`) && strings.Contains(body, `"connected":true`)
	})

	checkLimits(t, proxy, key, get)

}

// checkLimits: bodies up to max_body_size (2 MiB) pass nginx, larger ones get 413; a
// burst of 4 per client, so the fifth request of one client is refused, and another
// client behind the same proxy is not.
func checkLimits(t *testing.T, proxy, key string, get func(path, client, key string) (int, string)) {
	t.Helper()
	post := func(size int) int {
		req, _ := http.NewRequest("POST", proxy+"/api/v1/projects", bytes.NewReader(bytes.Repeat([]byte(" "), size)))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("X-Forwarded-For", fmt.Sprintf("192.0.2.%d", size%250+1))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(1536 << 10); code == http.StatusRequestEntityTooLarge || code >= 500 {
		t.Errorf("a 1.5 MiB body (under max_body_size, over nginx's default) got %d", code)
	}
	if code := post(3 << 20); code != http.StatusRequestEntityTooLarge {
		t.Errorf("a 3 MiB body got %d, want 413", code)
	}

	for i := 1; i <= 4; i++ {
		if code, body := get("/api/v1/projects", "192.0.2.200", key); code != http.StatusOK {
			t.Fatalf("request %d of client A: %d %s", i, code, body)
		}
	}
	if code, _ := get("/api/v1/projects", "192.0.2.200", key); code != http.StatusTooManyRequests {
		t.Errorf("client A's fifth request: %d, want 429", code)
	}
	if code, _ := get("/api/v1/projects", "192.0.2.201", key); code != http.StatusOK {
		t.Errorf("client B behind the same proxy: %d, want 200 (the limit keyed on nginx's address?)", code)
	}
}

// notifySocket listens where systemd would for a Type=notify unit's messages
// (NOTIFY_SOCKET) and passes on each datagram.
func notifySocket(t *testing.T) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	msgs := make(chan string, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			select {
			case msgs <- string(buf[:n]):
			default: // nobody reads any more
			}
		}
	}()
	return path, msgs
}

// waitNotify waits for a notify message holding want.
func waitNotify(t *testing.T, msgs <-chan string, want, who string, within time.Duration, log *lockedLog) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m := <-msgs:
			if strings.Contains(m, want) {
				return
			}
		case <-deadline:
			out := log.String()
			t.Fatalf("%s sent no %s within %v; log tail:\n%s", who, want, within, out[max(0, len(out)-6000):])
		}
	}
}

// lockedLog collects the daemons' and nginx's output for a failure message.
type lockedLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// waitFor polls cond (given the attempt's number) every 300 ms, for states only an HTTP
// answer shows, and fails with the log's tail when within passes.
func waitFor(t *testing.T, within time.Duration, what string, log *lockedLog, cond func(i int) bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for i := 0; !cond(i); i++ {
		if time.Now().After(deadline) {
			out := log.String()
			t.Fatalf("timed out after %v waiting for %s; log tail:\n%s", within, what, out[max(0, len(out)-6000):])
		}
		time.Sleep(300 * time.Millisecond)
	}
}
