package cluster_test

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/cluster"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

// freeAddr is a loopback host:port free for gossip (TCP and UDP) at this moment.
func freeAddr(t *testing.T) string {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err == nil {
			pc.Close()
			return addr
		}
	}
	t.Fatal("no free port for gossip")
	return ""
}

// keyFile is a gossip key file (base64 of 32 random bytes).
func keyFile(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cluster.key")
	if err := os.WriteFile(p, []byte(base64.StdEncoding.EncodeToString([]byte((rand.Text() + rand.Text())[:32]))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// startCluster starts n coordinators on one database, each a cluster member on a
// loopback port, joining the first.
func startCluster(t *testing.T, n int, edit func(*config.Config)) []*coordtest.Coordinator {
	t.Helper()
	key := keyFile(t)
	var db *storage.DB
	var first string
	var cs []*coordtest.Coordinator
	for i := range n {
		bind := freeAddr(t)
		c := coordtest.Start(t, coordtest.Options{DB: db, Config: func(cfg *config.Config) {
			cfg.Cluster = config.Cluster{Enabled: true, Name: fmt.Sprintf("c%d", i+1), Bind: bind, KeyFile: key,
				ProbeIntervalMS: 100}
			if first != "" {
				cfg.Cluster.Join = []string{first}
			}
			if edit != nil {
				edit(cfg)
			}
		}})
		if i == 0 {
			db, first = c.DB, bind
		}
		cs = append(cs, c)
	}
	return cs
}

type clusterJSON struct {
	Name    string           `json:"name"`
	Members []cluster.Member `json:"members"`
}

func members(t *testing.T, c *coordtest.Coordinator) map[string]cluster.Member {
	t.Helper()
	var out clusterJSON
	if code := c.Do("GET", "/api/v1/cluster", c.Admin, nil, &out); code != 200 {
		t.Fatalf("GET /api/v1/cluster: %d", code)
	}
	m := map[string]cluster.Member{}
	for _, mb := range out.Members {
		m[mb.Name] = mb
	}
	return m
}

// waitStatus waits until c lists member name with status.
func waitStatus(t *testing.T, c *coordtest.Coordinator, name, status string, within time.Duration) cluster.Member {
	t.Helper()
	var got cluster.Member
	coordtest.Eventually(t, within, fmt.Sprintf("%s sees %s %s", c.Cluster.Name(), name, status), func() bool {
		got = members(t, c)[name]
		return got.Status == status
	})
	return got
}

// TestCluster_JoinLeaveDeath: three coordinators see each other (with API addresses,
// this one marked); one shut down gracefully is "left" for the others at once; one
// whose gossip stops without leaving (a coordinator that dies) is "dead" within
// seconds.
func TestCluster_JoinLeaveDeath(t *testing.T) {
	t.Parallel()
	cs := startCluster(t, 3, nil)
	for _, c := range cs {
		for i, other := range cs {
			m := waitStatus(t, c, fmt.Sprintf("c%d", i+1), cluster.StatusAlive, 10*time.Second)
			if m.APIAddress != other.URL {
				t.Errorf("%s lists %s at %q, want %q", c.Cluster.Name(), m.Name, m.APIAddress, other.URL)
			}
			if m.Self != (c == other) {
				t.Errorf("%s lists %s with self=%v", c.Cluster.Name(), m.Name, m.Self)
			}
		}
	}
	if code := cs[0].Do("GET", "/api/v1/cluster", "", nil, nil); code != 401 {
		t.Errorf("GET /api/v1/cluster without a key: %d, want 401", code)
	}

	start := time.Now()
	cs[2].Stop()
	waitStatus(t, cs[0], "c3", cluster.StatusLeft, 5*time.Second)
	waitStatus(t, cs[1], "c3", cluster.StatusLeft, 5*time.Second)
	t.Logf("graceful leave seen in %v", time.Since(start))

	start = time.Now()
	cs[1].Cluster.Kill()
	waitStatus(t, cs[0], "c2", cluster.StatusDead, 10*time.Second)
	t.Logf("death seen in %v", time.Since(start))
}

// TestCluster_InternalAPINeedsTheSecret: the members' internal API refuses a request
// without the cluster secret, and one with another cluster's.
func TestCluster_InternalAPINeedsTheSecret(t *testing.T) {
	t.Parallel()
	cs := startCluster(t, 1, nil)
	for _, auth := range []string{"", "FC-Cluster wrong", "Bearer " + cs[0].Admin} {
		req, _ := newRequest("POST", cs[0].URL+cluster.InternalPrefix+"/command", `{"agent_id":1,"message":{"type":"cancel"}}`)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := httpClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Errorf("internal command with %q: %d, want 401", auth, resp.StatusCode)
		}
	}
}
