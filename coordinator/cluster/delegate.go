package cluster

import (
	"encoding/json"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate gives memberlist this member's metadata and takes other members' messages.
type delegate struct{ c *Cluster }

func (d delegate) NodeMeta(limit int) []byte {
	d.c.mu.Lock()
	m := d.c.local
	d.c.mu.Unlock()
	b, _ := json.Marshal(m)
	if len(b) > limit {
		return nil // an API address near 500 bytes: the config is refused before this
	}
	return b
}

func (d delegate) NotifyMsg(b []byte) {
	name, ok := strings.CutPrefix(string(b), msgLeaving)
	if !ok {
		return
	}
	d.c.mu.Lock()
	defer d.c.mu.Unlock()
	if m, ok := d.c.members[name]; ok {
		m.leaving = true // its leave, next, is recorded as "left"
	}
}

func (delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (delegate) LocalState(join bool) []byte                { return nil }
func (delegate) MergeRemoteState(buf []byte, join bool)     {}

// events follows members joining, changing and going.
type events struct{ c *Cluster }

func (e events) NotifyJoin(n *memberlist.Node)   { e.c.update(n) }
func (e events) NotifyUpdate(n *memberlist.Node) { e.c.update(n) }

func (e events) NotifyLeave(n *memberlist.Node) {
	c := e.c
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.members[n.Name]
	if !ok {
		return
	}
	m.Status = StatusDead
	if m.leaving {
		m.Status = StatusLeft
	}
	m.Since, m.agentIDs = time.Now(), nil
	c.log.Info("cluster member gone", "member", n.Name, "status", m.Status)
}

// update records a member's metadata; a changed agent list is fetched.
func (c *Cluster) update(n *memberlist.Node) {
	if n.Name == c.cfg.Name {
		return
	}
	var md meta
	_ = json.Unmarshal(n.Meta, &md)
	c.mu.Lock()
	m, ok := c.members[n.Name]
	if !ok {
		m = &Member{Name: n.Name}
		c.members[n.Name] = m
	}
	if m.Status != StatusAlive {
		m.Status, m.Since, m.leaving, m.version, m.agentIDs = StatusAlive, time.Now(), false, 0, nil
		c.log.Info("cluster member alive", "member", n.Name, "api", md.API)
	}
	m.lastAck = time.Now()
	m.APIAddress, m.Gossip, m.Agents = md.API, n.Address(), md.Count
	m.node = memberlist.Node{Name: n.Name, Addr: n.Addr, Port: n.Port}
	fetch := md.Version > m.version && md.API != "" && !c.stopped
	c.mu.Unlock()
	if fetch {
		go c.fetchAgents(n.Name, md.API, md.Version)
	}
}

// pings records answers to this member's probes (a member that stops answering is
// listed as suspect until gossip decides).
type pings struct{ c *Cluster }

func (pings) AckPayload() []byte { return nil }

func (p pings) NotifyPingComplete(other *memberlist.Node, rtt time.Duration, payload []byte) {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	if m, ok := p.c.members[other.Name]; ok {
		m.lastAck = time.Now()
	}
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, err
	}
	return host, port, nil
}
