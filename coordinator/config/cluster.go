package config

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
)

// Cluster is the [cluster] section: several coordinators on one database that know
// each other (gossip with hashicorp/memberlist). Off by default: one coordinator
// needs none of it.
type Cluster struct {
	Enabled bool `toml:"enabled"`
	// Name names this coordinator among the members; empty: the host name.
	Name string `toml:"name"`
	// Bind is the host:port gossip listens on (UDP and TCP).
	Bind string `toml:"bind"`
	// Advertise is the host:port other members reach gossip at; empty: bind's.
	Advertise string `toml:"advertise"`
	// Join lists members' gossip addresses (host:port) to join at start.
	Join []string `toml:"join"`
	// KeyFile holds the gossip encryption key, 16, 24 or 32 bytes: base64 (standard
	// encoding, one line) or those raw bytes. The members' internal API (forwarded
	// commands) is authenticated with a secret derived from it. Required.
	KeyFile string `toml:"key_file"`
	// APIAddress is how other coordinators reach this one's HTTP API
	// (http://host:port); empty: server.public_url, else http://server.host:port.
	APIAddress string `toml:"api_address"`
	// ProbeIntervalMS is milliseconds between failure probes; a member that stops
	// answering is dead within a few of them.
	ProbeIntervalMS int `toml:"probe_interval_ms"`
}

func clusterDefaults() Cluster {
	return Cluster{Bind: "0.0.0.0:7946", Join: []string{}, ProbeIntervalMS: 1000}
}

func (c Cluster) validate() error {
	if !c.Enabled {
		return nil
	}
	if _, _, err := SplitHostPort(c.Bind); err != nil {
		return fmt.Errorf("cluster.bind: %w", err)
	}
	if c.Advertise != "" {
		if _, _, err := SplitHostPort(c.Advertise); err != nil {
			return fmt.Errorf("cluster.advertise: %w", err)
		}
	}
	for _, j := range c.Join {
		if _, _, err := SplitHostPort(j); err != nil {
			return fmt.Errorf("cluster.join: %w", err)
		}
	}
	if c.KeyFile == "" {
		return fmt.Errorf("cluster.key_file is required when cluster.enabled (gossip is encrypted, forwarded commands authenticated)")
	}
	if c.APIAddress != "" {
		if u, err := url.Parse(c.APIAddress); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("cluster.api_address %q must be an absolute http or https URL (like http://10.0.0.2:3000)", c.APIAddress)
		}
	}
	if c.ProbeIntervalMS < 50 || c.ProbeIntervalMS > 60000 {
		return fmt.Errorf("cluster.probe_interval_ms must be from 50 to 60000")
	}
	return nil
}

// SplitHostPort splits host:port and checks the port.
func SplitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%q is not host:port: %w", addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%q: port %q is not a TCP port", addr, p)
	}
	return host, port, nil
}

// ClusterKey reads cluster.key_file: base64 of 16, 24 or 32 bytes, else exactly that
// many raw bytes.
func (c Cluster) ClusterKey() ([]byte, error) {
	data, err := os.ReadFile(c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("cluster.key_file: %w", err)
	}
	if k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(data))); err == nil && validKeyLen(len(k)) {
		return k, nil
	}
	if validKeyLen(len(data)) && !bytes.ContainsAny(data, "\n") {
		return data, nil
	}
	return nil, fmt.Errorf("cluster.key_file %s: want base64 of 16, 24 or 32 bytes (or those raw bytes), e.g. `head -c 32 /dev/urandom | base64`", c.KeyFile)
}

func validKeyLen(n int) bool { return n == 16 || n == 24 || n == 32 }

// ClusterAPIAddress is where other members reach this coordinator's HTTP API.
func (c Config) ClusterAPIAddress() string {
	if c.Cluster.APIAddress != "" {
		return strings.TrimRight(c.Cluster.APIAddress, "/")
	}
	return c.PublicURL()
}

// ClusterName is this member's name.
func (c Config) ClusterName() string {
	if c.Cluster.Name != "" {
		return c.Cluster.Name
	}
	h, _ := os.Hostname()
	return h
}

// LocalStoresNotes says, for a coordinator in a cluster, which of its stores keep
// files on its own disk: those are served only by this coordinator (a NAR another
// member is asked for is missing there, a finished log is empty there) unless the
// directory is shared by all members. Empty when clustering is off or both are on S3.
func (c Config) LocalStoresNotes() []string {
	if !c.Cluster.Enabled {
		return nil
	}
	var notes []string
	if c.Cache.Store != StoreS3 {
		notes = append(notes, fmt.Sprintf("cache.store is %q: the NARs in %s are served only by this coordinator unless every member shares that directory; use cache.store = \"s3\"", StoreDir, c.CacheDir()))
	}
	if c.Logs.Store != StoreS3 {
		notes = append(notes, fmt.Sprintf("logs.store is %q: finished build logs in %s are served only by this coordinator unless every member shares that directory; use logs.store = \"s3\"", StoreDir, c.LogDir()))
	}
	return notes
}
