package multihost_test

// The network: one namespace per host, each with an eth0 whose veth peer is a port of
// a bridge in a hub namespace. Every name carries the test process's pid, so parallel
// runs never meet; the namespaces (and with them the links) go in t.Cleanup, and a
// later run removes what a killed one left behind.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// subnet is the hosts' /24: private to this run's namespaces, so it never meets the
// machine's own networks or another run's.
const subnet = "10.77.0."

type network struct {
	t      *testing.T
	prefix string // fcmh<pid>-
	hub    string
	hosts  []*host
}

// host is a network namespace with one address on the bridge.
type host struct {
	name string
	ns   string
	addr string // 10.77.0.N
	port string // the bridge port (in the hub namespace) its eth0 is joined to
	net  *network
}

func ipCmd(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// newNetwork makes the hub with its bridge; hosts are added with add.
func newNetwork(t *testing.T) *network {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the multi-host tests make network namespaces: run them as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("the multi-host tests need ip (Debian: apt-get install iproute2)")
	}
	removeStale()
	n := &network{t: t, prefix: fmt.Sprintf("fcmh%d-", os.Getpid())}
	n.hub = n.prefix + "hub"
	t.Cleanup(n.remove)
	ipCmd(t, "netns", "add", n.hub)
	ipCmd(t, "-n", n.hub, "link", "add", "br0", "type", "bridge")
	ipCmd(t, "-n", n.hub, "link", "set", "br0", "up")
	return n
}

// add makes host name at 10.77.0.last.
func (n *network) add(name string, last int) *host {
	t := n.t
	t.Helper()
	h := &host{name: name, ns: n.prefix + name, addr: subnet + strconv.Itoa(last), port: "p-" + name, net: n}
	ipCmd(t, "netns", "add", h.ns)
	n.hosts = append(n.hosts, h)
	ipCmd(t, "-n", h.ns, "link", "set", "lo", "up")
	ipCmd(t, "-n", n.hub, "link", "add", h.port, "type", "veth", "peer", "name", "eth0", "netns", h.ns)
	ipCmd(t, "-n", n.hub, "link", "set", h.port, "master", "br0", "up")
	ipCmd(t, "-n", h.ns, "addr", "add", h.addr+"/24", "dev", "eth0")
	ipCmd(t, "-n", h.ns, "link", "set", "eth0", "up")
	return h
}

// remove kills what still runs in the namespaces and deletes them.
func (n *network) remove() {
	for _, h := range n.hosts {
		killIn(h.ns)
		_ = exec.Command("ip", "netns", "del", h.ns).Run()
	}
	_ = exec.Command("ip", "netns", "del", n.hub).Run()
}

// killIn SIGKILLs every process in namespace ns.
func killIn(ns string) {
	out, _ := exec.Command("ip", "netns", "pids", ns).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// removeStale deletes the namespaces of runs whose process is gone (killed before
// their cleanup ran).
func removeStale() {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], "fcmh") {
			continue
		}
		pid, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(f[0], "fcmh"), "-", 2)[0])
		if err != nil || syscall.Kill(pid, 0) == nil {
			continue
		}
		killIn(f[0])
		_ = exec.Command("ip", "netns", "del", f[0]).Run()
	}
}

// cut takes the host off the network (its bridge port down: its eth0 loses carrier,
// nothing reaches it and nothing it sends leaves); mend puts it back.
func (h *host) cut()  { ipCmd(h.net.t, "-n", h.net.hub, "link", "set", h.port, "down") }
func (h *host) mend() { ipCmd(h.net.t, "-n", h.net.hub, "link", "set", h.port, "up") }

// command runs name in the host's namespace.
func (h *host) command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.ns, name}, args...)...)
}

// dial opens a connection from inside the host's namespace: the socket is made on a
// thread switched into it, and keeps to it when the thread switches back.
func (h *host) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		c, err, back := h.dialLocked(ctx, network, addr)
		if back {
			runtime.UnlockOSThread()
		} // else the thread is left in the namespace: it ends with this goroutine
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

func (h *host) dialLocked(ctx context.Context, network, addr string) (c net.Conn, err error, back bool) {
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		return nil, err, true
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + h.ns)
	if err != nil {
		return nil, err, true
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("enter network namespace %s: %w", h.ns, err), true
	}
	var d net.Dialer
	c, err = d.DialContext(ctx, network, addr)
	return c, err, unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil
}

// client is an HTTP client whose connections start in the host's namespace.
func (h *host) client() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: h.dial, MaxIdleConnsPerHost: 4}}
}
