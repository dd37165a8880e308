package multihost_test

// The cluster the fault tests share: the network, PostgreSQL, SeaweedFS, three
// coordinators and four agents (one evaluator, three builders), all real processes.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/coordinator/fleet"
	"github.com/fc-ci/fc/coordinator/objstore/objstoretest"
	"github.com/fc-ci/fc/storage"
)

// lease is the [queue_runner] lease of the coordinators (seconds).
type lease struct{ ttl, grace int }

type cluster struct {
	t      *testing.T
	net    *network
	op     *host // where the test's own requests come from
	log    *coordtest.LogBuffer
	pg     *postgres
	s3     *seaweed
	db     *storage.DB // over the Unix socket
	admin  string
	coords []*coord
	agents map[string]*agent
	dir    string // shared files: keys, records the builders append to
	pubKey string // the cache's public key
	lease  lease
}

type coord struct {
	c    *cluster
	name string
	h    *host
	dir  string
	url  string
	proc *proc
	hc   *http.Client // from the op host
}

// in is the coordinator's API for test t (coordtest's helpers), reached from the op host.
func (k *coord) in(t *testing.T) *coordtest.Coordinator {
	return coordtest.Remote(t, k.url, k.c.admin, k.c.db, k.c.log, k.hc)
}

type agent struct {
	name string
	h    *host
	urls []string
	proc *proc
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	started := time.Now()
	c := &cluster{t: t, log: &coordtest.LogBuffer{}, agents: map[string]*agent{}, dir: tempDir(t, "fcmh-"), lease: lease{60, 120}}
	t.Cleanup(func() {
		if t.Failed() {
			var lines []string
			for _, l := range strings.Split(c.log.String(), "\n") {
				if !strings.Contains(l, `msg="http request"`) && !strings.Contains(l, "level=DEBUG") && !strings.HasPrefix(l, "seaweedfs: I") {
					lines = append(lines, l)
				}
			}
			t.Logf("processes' output without HTTP requests and debug lines, last 300 lines:\n%s", strings.Join(lines[max(len(lines)-300, 0):], "\n"))
		}
	})
	weed := objstoretest.Binary(t)
	coordBin, err := coordinatorBin()
	if err != nil {
		t.Fatal(err)
	}
	agentBin := coordtest.AgentBinary(t)
	c.net = newNetwork(t)
	c.op = c.net.add("op", 2)
	c.pg = startPostgres(t, c.net.add("pg", 10), c.log)
	c.s3 = startSeaweed(t, c.net.add("s3", 11), weed, c.log)
	c.openDB()
	c.keys()
	c.waitBucket()
	for i := range 3 {
		c.coords = append(c.coords, &coord{c: c, name: fmt.Sprintf("c%d", i+1), h: c.net.add(fmt.Sprintf("c%d", i+1), 21+i),
			dir: tempDir(t, "fcmh-coord-")})
	}
	for _, k := range c.coords {
		k.url = "http://" + k.h.addr + ":3000"
		k.hc = c.op.client()
		k.start(coordBin)
	}
	for _, k := range c.coords {
		c.log.WaitFor(t, 120*time.Second, k.name+": ", "coordinator listening")
	}
	for i := range 4 {
		name := fmt.Sprintf("a%d", i+1)
		var urls []string
		for j := range c.coords { // each agent starts on another coordinator
			urls = append(urls, c.coords[(i+j)%len(c.coords)].url)
		}
		roles := "build"
		if i == 0 {
			roles = "eval"
		}
		a := &agent{name: name, h: c.net.add(name, 31+i), urls: urls}
		c.agents[name] = a
		c.startAgent(a, agentBin, roles)
	}
	for name := range c.agents {
		c.log.WaitFor(t, 120*time.Second, name+": ", "connected to coordinator")
	}
	t.Logf("cluster up in %v", time.Since(started).Round(time.Millisecond))
	return c
}

// openDB creates and migrates the database over the socket, and an admin key.
func (c *cluster) openDB() {
	t := c.t
	ctx := context.Background()
	if out, err := exec.Command(filepath.Join(c.pg.bin, "psql"), c.pg.socketURL("postgres"), "-c", "CREATE DATABASE fc").CombinedOutput(); err != nil {
		t.Fatalf("create database: %v\n%s", err, out)
	}
	db, err := storage.Open(ctx, storage.Config{URL: c.pg.socketURL("fc"), MaxConnections: 5}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if err := db.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	c.db = db
	if _, c.admin, err = auth.CreateKey(ctx, db, "multihost-admin", storage.RoleAdmin); err != nil {
		t.Fatal(err)
	}
}

// keys writes the gossip key and the cache's signing key every coordinator shares.
func (c *cluster) keys() {
	t := c.t
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	if err := os.WriteFile(filepath.Join(c.dir, "cluster.key"), []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	sec, pub := filepath.Join(c.dir, "cache.sec"), filepath.Join(c.dir, "cache.pub")
	if out, err := exec.Command("nix-store", "--generate-binary-cache-key", "fcmh-1", sec, pub).CombinedOutput(); err != nil {
		t.Fatalf("generate the cache key: %v\n%s", err, out)
	}
	b, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}
	c.pubKey = strings.TrimSpace(string(b))
}

// s3Client talks to the S3 server from the op host.
func (c *cluster) s3Client() *minio.Client {
	cl, err := minio.New(c.s3.endpoint(), &minio.Options{Creds: credentials.NewStaticV4(accessKey, secretKey, ""), Region: "us-east-1",
		MaxRetries: 1, Transport: &http.Transport{DialContext: c.op.dial}})
	if err != nil {
		c.t.Fatal(err)
	}
	return cl
}

// waitBucket waits until the S3 server answers and has the bucket.
func (c *cluster) waitBucket() {
	t := c.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		err := c.s3Client().MakeBucket(ctx, bucket, minio.MakeBucketOptions{})
		if r := minio.ToErrorResponse(err); r.Code == "BucketAlreadyOwnedByYou" || r.Code == "BucketAlreadyExists" {
			err = nil
		}
		if err == nil {
			if _, err = c.s3Client().BucketExists(ctx, bucket); err == nil {
				return
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("SeaweedFS at %s: %v", c.s3.endpoint(), err)
		}
		time.Sleep(200 * time.Millisecond) // SeaweedFS says nothing when it is ready; bounded by ctx
	}
}

func (k *coord) config() string {
	c := k.c
	var join []string
	for _, o := range c.coords {
		if o != k {
			join = append(join, strconv.Quote(o.h.addr+":7946"))
		}
	}
	return fmt.Sprintf(`state_dir = %q
log_level = "debug"
[database]
url = %q
max_connections = 10
connect_timeout = 5
[server]
host = %q
port = 3000
agent_heartbeat = 1
[cache]
store = "s3"
secret_key_file = %q
[logs]
store = "s3"
[s3]
endpoint = %q
bucket = %q
region = "us-east-1"
tls = false
access_key_file = %q
secret_key_file = %q
[queue_runner]
lease_ttl = %d
lease_grace = %d
retry_backoff = 1
max_attempts = 5
sweep_interval = 1
agent_failure_threshold = 0
[gc]
cleanup_interval = 0
[evaluator]
pull_request_interval = 0
declarative_interval = 0
[cluster]
enabled = true
name = %q
bind = %q
join = [%s]
key_file = %q
probe_interval_ms = 200
`, k.dir, c.pg.tcpURL("fc"), k.h.addr, filepath.Join(c.dir, "cache.sec"), c.s3.endpoint(), bucket,
		filepath.Join(c.s3.keyDir, "access_key"), filepath.Join(c.s3.keyDir, "secret_key"), c.lease.ttl, c.lease.grace,
		k.name, k.h.addr+":7946", strings.Join(join, ", "), filepath.Join(c.dir, "cluster.key"))
}

// start runs fc-coordinator serve in the coordinator's namespace with its config.
func (k *coord) start(bin string) {
	t := k.c.t
	t.Helper()
	file := filepath.Join(k.dir, "coordinator.toml")
	if err := os.WriteFile(file, []byte(k.config()), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := k.h.command(bin, "--config", file, "serve")
	cmd.Dir = k.dir
	cmd.Env = cleanEnv()
	k.proc = startProc(t, k.name, k.c.log, cmd)
}

// restart starts the coordinator again (after kill or stop) and waits until it listens.
func (k *coord) restart() {
	t := k.c.t
	t.Helper()
	bin, _ := coordinatorBin()
	before := k.c.linesOf(k.name, "coordinator listening")
	k.start(bin)
	k.c.waitLines(t, 60*time.Second, before, k.name, "coordinator listening")
}

// cleanEnv is the test's environment without FC_ variables (they would configure
// the processes).
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FC_") {
			env = append(env, kv)
		}
	}
	return env
}

// startAgent runs fc-agent in the agent's namespace and its own mount namespace with
// an empty /nix: as on a separate host, all it builds from comes through the cache.
func (c *cluster) startAgent(a *agent, bin, roles string) {
	t := c.t
	t.Helper()
	root := tempDir(t, "fcmh-agent-")
	store := filepath.Join(root, "nix")
	if err := os.MkdirAll(store, 0o755); err != nil {
		t.Fatal(err)
	}
	_, token, err := fleet.CreateToken(context.Background(), c.db, a.name, 1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cmd := a.h.command("unshare", "--mount", "/bin/sh", "-c", `mount --bind "$FC_TEST_STORE" /nix && exec "$FC_TEST_AGENT" run`)
	cmd.Env = append(cleanEnv(),
		"FC_TEST_STORE="+store, "FC_TEST_AGENT="+bin,
		"FC_COORDINATOR__URLS="+strings.Join(a.urls, ","),
		"FC_COORDINATOR__ENROLLMENT_TOKEN="+token,
		"FC_AGENT__NAME="+a.name,
		"FC_AGENT__STATE_DIR="+filepath.Join(root, "state"),
		"FC_AGENT__ROLES="+roles,
		"FC_AGENT__MAX_JOBS=1",
		"FC_LOG_LEVEL=debug",
		"XDG_CACHE_HOME="+filepath.Join(root, "xdg"),
		// The stores are separate but the nixbld users are the machine's: builds run as
		// root instead, so one store's builds never kill another's.
		"NIX_CONFIG=build-users-group =",
	)
	a.proc = startProc(t, a.name, c.log, cmd)
}

// coordOf is the coordinator agent name holds its session with now: the last
// "connected to coordinator" line of its log.
func (c *cluster) coordOf(name string) *coord {
	url := ""
	for _, l := range strings.Split(c.log.String(), "\n") {
		if strings.HasPrefix(l, name+": ") && strings.Contains(l, "connected to coordinator") {
			if i := strings.Index(l, "coordinator_url="); i >= 0 {
				url = strings.Fields(l[i+len("coordinator_url="):])[0]
			}
		}
	}
	for _, k := range c.coords {
		if k.url == url {
			return k
		}
	}
	return nil
}

// linesOf counts the log lines with every part, from process name.
func (c *cluster) linesOf(name string, parts ...string) int {
	return c.log.Count(append([]string{name + ": "}, parts...)...)
}

// waitLines waits for a line with every part from process name, logged after
// linesOf counted before.
func (c *cluster) waitLines(t testing.TB, within time.Duration, before int, name string, parts ...string) {
	t.Helper()
	c.log.WaitForMore(t, within, before, append([]string{name + ": "}, parts...)...)
}

// coordLines counts the coordinators' log lines with every part.
func (c *cluster) coordLines(parts ...string) int {
	n := 0
	for _, k := range c.coords {
		n += c.linesOf(k.name, parts...)
	}
	return n
}
