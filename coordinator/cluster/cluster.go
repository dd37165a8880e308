// Package cluster lets coordinators that share one database know each other: they
// gossip (hashicorp/memberlist, encrypted) their name, the address of their HTTP
// API and which agents hold sessions with them, notice a member leaving or dying
// within seconds, and forward what only the coordinator holding an agent's session
// can do (commands to the agent, live logs) over an internal API authenticated with
// a secret derived from the gossip key.
//
// Agent lists travel out of band: a member's node metadata (at most 512 bytes)
// carries its API address, agent count and a version of its agent list; a member
// whose version changed is asked for its list over the internal API. So the list
// may be as long as the fleet, and a change spreads as fast as gossip.
package cluster

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Config configures a member.
type Config struct {
	// Name names this coordinator among the members (unique).
	Name string
	// Bind and Advertise are gossip's host:port; Advertise empty: Bind's.
	Bind, Advertise string
	// Join are members' gossip addresses to join at start.
	Join []string
	// Key encrypts gossip (16, 24 or 32 bytes) and keys the internal API's secret.
	Key []byte
	// APIAddress is how other members reach this one's HTTP API (http://host:port).
	APIAddress string
	// ProbeInterval is the time between failure probes (memberlist's LAN default: 1 s).
	ProbeInterval time.Duration
	// Agents lists the agents with a session on this coordinator.
	Agents func() []int64
	Logger *slog.Logger
	// Client calls other members' internal API; nil: a client with short timeouts.
	Client *http.Client
}

// Member statuses.
const (
	StatusAlive   = "alive"
	StatusSuspect = "suspect" // alive in gossip, but not answering this member's probes lately
	StatusDead    = "dead"
	StatusLeft    = "left"
)

// Member is one coordinator as this one knows it.
type Member struct {
	Name       string    `json:"name"`
	Status     string    `json:"status"`
	APIAddress string    `json:"api_address"`
	Gossip     string    `json:"gossip_address"`
	Agents     int       `json:"agents"`
	Self       bool      `json:"self"`
	Since      time.Time `json:"since"` // when the status last changed
	agentIDs   []int64
	version    uint64
	lastAck    time.Time
	leaving    bool
	// node addresses the member's gossip: a copy taken in memberlist's event
	// callbacks, which run under its lock. The nodes ml.Members() returns are
	// memberlist's own, rewritten in place by gossip, so they are not read outside it.
	node memberlist.Node
}

// meta is a member's node metadata (memberlist limits it to 512 bytes).
type meta struct {
	API     string `json:"a"`
	Count   int    `json:"n"`
	Version uint64 `json:"v"`
}

// Cluster is this coordinator's membership.
type Cluster struct {
	cfg    Config
	log    *slog.Logger
	secret string
	client *http.Client

	mu      sync.Mutex
	ml      *memberlist.Memberlist
	members map[string]*Member // the others, by name
	local   meta
	agents  []int64 // this member's, as last published
	changed chan struct{}
	stopped bool
	started time.Time
}

// New returns a member that is not running yet (see Run).
func New(cfg Config) (*Cluster, error) {
	if cfg.Name == "" || len(cfg.Key) == 0 || cfg.APIAddress == "" || cfg.Agents == nil {
		return nil, fmt.Errorf("cluster: name, key, api address and agents are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = time.Second
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 15 * time.Second}
	}
	mac := hmac.New(sha256.New, cfg.Key)
	mac.Write([]byte("fc cluster internal api"))
	return &Cluster{cfg: cfg, log: cfg.Logger.With("component", "cluster"), secret: hex.EncodeToString(mac.Sum(nil)),
		client: cfg.Client, members: map[string]*Member{}, changed: make(chan struct{}, 1),
		local: meta{API: cfg.APIAddress}}, nil
}

// Name is this member's name.
func (c *Cluster) Name() string { return c.cfg.Name }

// memberlistConfig is memberlist's LAN configuration, tuned to the probe interval:
// a member that stops answering is suspected after a probe timeout and declared dead
// after a few intervals.
func (c *Cluster) memberlistConfig() (*memberlist.Config, error) {
	mc := memberlist.DefaultLANConfig()
	mc.Name = c.cfg.Name
	host, port, err := splitHostPort(c.cfg.Bind)
	if err != nil {
		return nil, fmt.Errorf("cluster bind: %w", err)
	}
	mc.BindAddr, mc.BindPort = host, port
	mc.AdvertiseAddr, mc.AdvertisePort = host, port
	if c.cfg.Advertise != "" {
		if mc.AdvertiseAddr, mc.AdvertisePort, err = splitHostPort(c.cfg.Advertise); err != nil {
			return nil, fmt.Errorf("cluster advertise: %w", err)
		}
	}
	if mc.AdvertiseAddr == "0.0.0.0" || mc.AdvertiseAddr == "::" {
		mc.AdvertiseAddr = "" // memberlist picks a private address of this host
	}
	mc.SecretKey = c.cfg.Key
	mc.ProbeInterval = c.cfg.ProbeInterval
	mc.ProbeTimeout = max(c.cfg.ProbeInterval/2, 20*time.Millisecond)
	mc.GossipInterval = max(c.cfg.ProbeInterval/5, 10*time.Millisecond)
	mc.SuspicionMult = 3
	mc.SuspicionMaxTimeoutMult = 3
	mc.TCPTimeout = max(2*c.cfg.ProbeInterval, 500*time.Millisecond)
	mc.Delegate = delegate{c}
	mc.Events = events{c}
	mc.Ping = pings{c}
	mc.Logger = slog.NewLogLogger(c.log.Handler(), slog.LevelDebug)
	return mc, nil
}

// Run starts gossip, joins the configured members (trying again until one answers),
// publishes this coordinator's agents as they change, and on ctx's end leaves the
// cluster gracefully (the others see "left" at once).
func (c *Cluster) Run(ctx context.Context) error {
	mc, err := c.memberlistConfig()
	if err != nil {
		return err
	}
	c.refreshLocal()
	ml, err := memberlist.Create(mc)
	if err != nil {
		return fmt.Errorf("start gossip on %s: %w", c.cfg.Bind, err)
	}
	c.mu.Lock()
	c.ml, c.started = ml, time.Now()
	c.mu.Unlock()
	c.log.Info("cluster member started", "name", c.cfg.Name, "gossip", ml.LocalNode().Address(), "api", c.cfg.APIAddress)
	go c.join(ctx, ml)
	tick := time.NewTicker(c.cfg.ProbeInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			c.leave(ml)
			return nil
		case <-c.changed:
		case <-tick.C: // agent sessions changed without a hook (a safety net)
		}
		if c.refreshLocal() {
			if err := ml.UpdateNode(c.cfg.ProbeInterval); err != nil {
				c.log.Debug("publish agents", "err", err)
			}
		}
	}
}

// join joins the configured members, retrying until one answers.
func (c *Cluster) join(ctx context.Context, ml *memberlist.Memberlist) {
	if len(c.cfg.Join) == 0 {
		return
	}
	for wait := c.cfg.ProbeInterval; ctx.Err() == nil; wait = min(2*wait, 30*time.Second) {
		n, err := ml.Join(c.cfg.Join)
		if n > 0 {
			c.log.Info("joined the cluster", "contacted", n)
			return
		}
		c.log.Warn("join the cluster; trying again", "join", c.cfg.Join, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
}

// leave tells every member this one is leaving (over TCP, so they record "left",
// not "dead"), leaves the gossip and stops.
func (c *Cluster) leave(ml *memberlist.Memberlist) {
	c.mu.Lock()
	killed := c.stopped
	c.stopped = true
	c.mu.Unlock()
	if killed {
		return
	}
	c.mu.Lock()
	var to []memberlist.Node
	for _, m := range c.members {
		if m.Status == StatusAlive || m.Status == StatusSuspect {
			to = append(to, m.node)
		}
	}
	c.mu.Unlock()
	for i := range to {
		_ = ml.SendReliable(&to[i], []byte(msgLeaving+c.cfg.Name))
	}
	if err := ml.Leave(2 * c.cfg.ProbeInterval); err != nil {
		c.log.Warn("leave the cluster", "err", err)
	}
	_ = ml.Shutdown()
	c.log.Info("left the cluster")
}

// Kill stops gossip without leaving: the others find this member dead (for tests of
// a coordinator that dies).
func (c *Cluster) Kill() {
	c.mu.Lock()
	ml := c.ml
	c.stopped = true
	c.mu.Unlock()
	if ml != nil {
		_ = ml.Shutdown()
	}
}

// AgentsChanged tells the member its agent sessions changed (published at once).
func (c *Cluster) AgentsChanged() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// refreshLocal reads this coordinator's agents; true if they changed since last.
func (c *Cluster) refreshLocal() bool {
	ids := slices.Clone(c.cfg.Agents())
	slices.Sort(ids)
	c.mu.Lock()
	defer c.mu.Unlock()
	if slices.Equal(ids, c.agents) && c.local.Version > 0 {
		return false
	}
	c.agents = ids
	c.local.Count = len(ids)
	c.local.Version++
	return true
}

const msgLeaving = "leaving:"

// Members lists this coordinator and the others it knows, by name; dead and left
// ones stay listed for an hour.
func (c *Cluster) Members() []Member {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := []Member{{Name: c.cfg.Name, Status: StatusAlive, APIAddress: c.cfg.APIAddress, Agents: len(c.agents), Self: true, Since: c.started}}
	if c.ml != nil {
		out[0].Gossip = c.ml.LocalNode().Address()
	}
	suspectAfter := time.Duration(2*len(c.members)+3) * c.cfg.ProbeInterval
	for name, m := range c.members {
		if m.Status != StatusAlive && m.Status != StatusSuspect && time.Since(m.Since) > time.Hour {
			delete(c.members, name)
			continue
		}
		cp := *m
		if m.Status == StatusAlive && time.Since(m.lastAck) > suspectAfter {
			cp.Status = StatusSuspect
		}
		out = append(out, cp)
	}
	slices.SortFunc(out[1:], func(a, b Member) int { return cmpString(a.Name, b.Name) })
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Holder is the API address of the alive member holding agentID's session, if one
// does (not this one).
func (c *Cluster) Holder(agentID int64) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.members {
		if m.Status == StatusAlive && slices.Contains(m.agentIDs, agentID) {
			return m.APIAddress, true
		}
	}
	return "", false
}

// others are the API addresses of the alive members, the agent's holder first.
func (c *Cluster) others(agentID int64) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var first, rest []string
	for _, m := range c.members {
		switch {
		case m.Status != StatusAlive:
		case slices.Contains(m.agentIDs, agentID):
			first = append(first, m.APIAddress)
		default:
			rest = append(rest, m.APIAddress)
		}
	}
	slices.Sort(rest)
	return append(first, rest...)
}

// fetchAgents asks a member for its agent list (after its version changed).
func (c *Cluster) fetchAgents(name, api string, version uint64) {
	req, err := http.NewRequest(http.MethodGet, api+InternalPrefix+"/agents", nil)
	if err != nil {
		return
	}
	req.Header.Set("Authorization", authScheme+c.secret)
	resp, err := c.client.Do(req)
	if err != nil {
		c.log.Debug("fetch a member's agents", "member", name, "err", err)
		return
	}
	defer resp.Body.Close()
	var body agentsJSON
	if resp.StatusCode != http.StatusOK {
		c.log.Warn("fetch a member's agents", "member", name, "status", resp.Status)
		return
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&body); err != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if m, ok := c.members[name]; ok && body.Version >= version && body.Version >= m.version {
		m.agentIDs, m.version, m.Agents = body.Agents, body.Version, len(body.Agents)
	}
}
