// Package config defines the coordinator's settings and loads them: compiled
// defaults, ./coordinator.toml, the --config / FC_CONFIG_FILE file, then FC_ variables.
// coordinator.toml at the repository root documents every key.
package config

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/fc-ci/fc/internal/tomlenv"
	"github.com/fc-ci/fc/protocol"
)

// Config is everything the coordinator can be told.
type Config struct {
	// StateDir holds the coordinator's files (embedded database, keys, blobs, logs)
	// unless a section names another place.
	StateDir string `toml:"state_dir"`
	// LogLevel is debug, info, warn or error.
	LogLevel string   `toml:"log_level"`
	Database Database `toml:"database"`
	Server   Server   `toml:"server"`
	Cache    Cache    `toml:"cache"`
	GC       GC       `toml:"gc"`
	Eval     Eval     `toml:"evaluator"`
	Queue    Queue    `toml:"queue_runner"`
	Logs     Logs     `toml:"logs"`
	// S3 is the object store the cache and the logs use when their store is "s3".
	S3 S3 `toml:"s3"`
	// LocalAgent is an agent run inside the coordinator process (the quickstart's).
	LocalAgent LocalAgent `toml:"local_agent"`
	// Notifications are e-mail, run_command and the delivery of every notification.
	Notifications Notifications `toml:"notifications"`
	// Cluster lets several coordinators on one database know each other.
	Cluster Cluster `toml:"cluster"`
	// Declarations are the projects, API keys, agents and users the file declares
	// (top-level [[projects]], [[api_keys]], [[agents]], [[users]]; declared.go).
	Declarations
}

// LocalAgent is the [local_agent] section: an agent the coordinator runs in its own
// process, the same code as fc-agent, dialling the coordinator's own listener over
// loopback and enrolled automatically.
type LocalAgent struct {
	Enabled bool `toml:"enabled"`
	// Name is the agent's name in the fleet.
	Name string `toml:"name"`
	// StateDir holds the agent's key and work files; empty: state_dir/local-agent.
	StateDir string `toml:"state_dir"`
	// MaxJobs is steps built at once; 0: one per CPU core.
	MaxJobs int `toml:"max_jobs"`
	// Roles are "build" and/or "eval".
	Roles []string `toml:"roles"`
	// DrainTimeout is seconds the coordinator's shutdown waits for the agent's running
	// work to finish before cancelling it (and handing it back).
	DrainTimeout int `toml:"drain_timeout"`
}

// Logs is the [logs] section: build logs.
type Logs struct {
	// LogDir holds build logs; empty: state_dir/logs.
	LogDir string `toml:"log_dir"`
	// MaxLogSize is the most bytes of log a step may write; past it the step ends
	// log_limit_exceeded and the log is cut there.
	MaxLogSize int64 `toml:"max_log_size"`
	// Compress stores finished logs zstd-compressed.
	Compress bool `toml:"compress"`
	// Store keeps finished logs in log_dir ("dir") or in the [s3] bucket ("s3"); logs
	// being written stay in log_dir until their step ends.
	Store string `toml:"store"`
}

// Eval is the [evaluator] section.
type Eval struct {
	MaxConcurrentEvals int  `toml:"max_concurrent_evals"`
	EvalTimeout        int  `toml:"eval_timeout"`    // seconds
	MaxMemorySize      int  `toml:"max_memory_size"` // MiB per evaluation worker
	Workers            int  `toml:"workers"`
	RestrictEval       bool `toml:"restrict_eval"`
	AllowIFD           bool `toml:"allow_ifd"`
	GitTimeout         int  `toml:"git_timeout"` // seconds
	// AllowedInputPaths are the directories (on the evaluating agents) that jobsets'
	// path inputs may name, at or below; empty: path inputs are refused.
	AllowedInputPaths []string `toml:"allowed_input_paths"`
	// PullRequestInterval is seconds between passes that list the open pull requests
	// of projects with a forge (for jobsets with pull_requests); 0: webhooks only.
	PullRequestInterval int `toml:"pull_request_interval"`
	// DeclarativeInterval is seconds between reads of the declarative files of
	// projects that have one (declarative_file, e.g. .fc.toml); 0: never read.
	DeclarativeInterval int `toml:"declarative_interval"`
}

// Queue is the [queue_runner] section: leases on evaluations and steps.
type Queue struct {
	LeaseTTL     int `toml:"lease_ttl"`     // seconds a lease lives without a heartbeat
	LeaseGrace   int `toml:"lease_grace"`   // seconds a disconnected agent keeps its leases
	MaxAttempts  int `toml:"max_attempts"`  // infrastructure failures before aborting
	RetryBackoff int `toml:"retry_backoff"` // seconds; doubles with each attempt
	// BuildTimeout and MaxSilent (seconds) apply to steps whose job sets no
	// meta.timeout or meta.maxSilent.
	BuildTimeout int `toml:"build_timeout"`
	MaxSilent    int `toml:"max_silent"`
	// MaxOutputSize is the most bytes (NAR) a step's outputs may have.
	MaxOutputSize int64 `toml:"max_output_size"`
	// SweepInterval is seconds between safety-net passes of the build scheduler (it is
	// woken by events; the sweep only catches what an event missed).
	SweepInterval int `toml:"sweep_interval"`
	// UnsupportedWait is seconds a step waits for an agent able to build it before it
	// ends unsupported_system.
	UnsupportedWait int `toml:"unsupported_wait"`
	// AgentFailureThreshold is how many infrastructure failures in a row (steps an
	// agent reported as such or lost with its lease; not work released on shutdown) keep an
	// agent from new steps for AgentBackoff seconds, doubled for each further failure
	// up to AgentBackoffMax; 0 never does. A step with stored outputs, or an admin's
	// enable, resets the count. A derivation's own failure neither counts nor resets.
	AgentFailureThreshold int `toml:"agent_failure_threshold"`
	AgentBackoff          int `toml:"agent_backoff"`
	AgentBackoffMax       int `toml:"agent_backoff_max"`
}

// GC is the [gc] section: cache retention.
type GC struct {
	// MaxAgeDays: cached paths outside the keep rules are deleted once this old.
	MaxAgeDays int `toml:"max_age_days"`
	// CleanupInterval is seconds between retention runs; 0 disables them.
	CleanupInterval int `toml:"cleanup_interval"`
}

// Cache is the [cache] section: the binary cache served under /nix-cache/.
type Cache struct {
	// Dir holds the NARs (zstd-compressed, or plain); empty: state_dir/cache.
	Dir string `toml:"dir"`
	// SecretKeyFile is the signing key (Nix's name:base64 format); empty:
	// state_dir/cache-key.sec, generated on first start.
	SecretKeyFile string `toml:"secret_key_file"`
	// KeyName names a generated key; empty: fc-<host name>-1.
	KeyName        string   `toml:"key_name"`
	Priority       int      `toml:"priority"`
	UpstreamCaches []string `toml:"upstream_caches"`
	UpstreamKeys   []string `toml:"upstream_keys"`
	// Private makes reading the cache need an API key (bearer, or basic password).
	Private bool `toml:"private"`
	// PlainNARs lets agents upload data that does not compress as plain NARs, stored
	// and served as nar/<narhash>.nar (Compression: none).
	PlainNARs bool `toml:"plain_nars"`
	// Store keeps the NARs in dir ("dir") or in the [s3] bucket ("s3").
	Store string `toml:"store"`
	// Redirect answers a NAR download with a 302 to a presigned URL of the object
	// (store = "s3"), which the client then fetches from S3 itself; off, the
	// coordinator streams it through.
	Redirect bool `toml:"redirect"`
	// PresignExpiry is seconds a presigned NAR URL stays valid.
	PresignExpiry int `toml:"presign_expiry"`
}

// Database is the [database] section. Durations are seconds.
type Database struct {
	URL string `toml:"url"` // empty: a private PostgreSQL in state_dir/postgres
	// URLFile is a file holding the URL (with its password), read when the database is
	// opened, so the secret stays out of the configuration; not with url.
	URLFile        string `toml:"url_file"`
	MaxConnections int    `toml:"max_connections"`
	MinConnections int    `toml:"min_connections"`
	ConnectTimeout int    `toml:"connect_timeout"`
	IdleTimeout    int    `toml:"idle_timeout"`
	MaxLifetime    int    `toml:"max_lifetime"`
	AutoMigrate    bool   `toml:"auto_migrate"`
}

// Server is the [server] section.
type Server struct {
	Host string `toml:"host"`
	Port int    `toml:"port"`
	// RequestTimeout bounds an ordinary request: its handler, and reading its body
	// (WebSockets are exempt).
	RequestTimeout int `toml:"request_timeout"`
	// HeaderTimeout bounds reading a request's headers; IdleTimeout ends a keep-alive
	// connection that waits this long for its next request.
	HeaderTimeout  int      `toml:"header_timeout"`
	IdleTimeout    int      `toml:"idle_timeout"`
	MaxBodySize    int64    `toml:"max_body_size"`
	CorsPermissive bool     `toml:"cors_permissive"`
	AllowedOrigins []string `toml:"allowed_origins"`
	RateLimitRPS   float64  `toml:"rate_limit_rps"`
	RateLimitBurst int      `toml:"rate_limit_burst"`
	// TrustedProxies are addresses or CIDR ranges of reverse proxies in front of the
	// coordinator: for a request from one of them, the rate limit keys on the client
	// address its X-Forwarded-For names (the nearest hop no trusted proxy added).
	TrustedProxies []string `toml:"trusted_proxies"`
	AgentHeartbeat int      `toml:"agent_heartbeat"`
	// PublicURL is where people reach this coordinator (https://ci.example.org), for
	// links in commit statuses and messages; empty: http://host:port.
	PublicURL string `toml:"public_url"`
}

// Defaults are the compiled defaults, the same as the commented values in coordinator.toml.
func Defaults() Config {
	return Config{
		StateDir: "/var/lib/fc",
		LogLevel: "info",
		Database: Database{
			MaxConnections: 20,
			MinConnections: 2,
			ConnectTimeout: 30,
			IdleTimeout:    600,
			MaxLifetime:    1800,
			AutoMigrate:    true,
		},
		Cache: Cache{Priority: 30, UpstreamCaches: []string{}, UpstreamKeys: []string{}, PlainNARs: true,
			Store: StoreDir, PresignExpiry: 3600},
		GC: GC{MaxAgeDays: 30, CleanupInterval: 3600},
		Eval: Eval{MaxConcurrentEvals: 4, EvalTimeout: 1800, MaxMemorySize: 4096, Workers: 2, RestrictEval: true,
			GitTimeout: 600, AllowedInputPaths: []string{}, PullRequestInterval: 300, DeclarativeInterval: 60},
		Queue: Queue{LeaseTTL: 60, LeaseGrace: 120, MaxAttempts: 3, RetryBackoff: 10, BuildTimeout: 36000, MaxSilent: 7200,
			MaxOutputSize: 2 << 30, SweepInterval: 30, UnsupportedWait: 60,
			AgentFailureThreshold: 3, AgentBackoff: 60, AgentBackoffMax: 3600},
		Logs:          Logs{MaxLogSize: 64 << 20, Compress: true, Store: StoreDir},
		S3:            s3Defaults(),
		LocalAgent:    LocalAgent{Name: "local", Roles: []string{protocol.RoleBuild, protocol.RoleEval}, DrainTimeout: 10},
		Notifications: notificationDefaults(),
		Cluster:       clusterDefaults(),
		Server: Server{
			Host:           "127.0.0.1",
			Port:           3000,
			RequestTimeout: 30,
			HeaderTimeout:  10,
			IdleTimeout:    120,
			MaxBodySize:    10 << 20,
			AllowedOrigins: []string{},
			TrustedProxies: []string{},
			AgentHeartbeat: 15,
		},
	}
}

// FileName is the file read from the working directory when present.
const FileName = "coordinator.toml"

// Load reads the configuration. configFlag is the --config value ("" if not given);
// environ is os.Environ().
func Load(configFlag string, environ []string) (Config, error) {
	cfg := Defaults()
	files := tomlenv.Files(FileName, configFlag, environ)
	if err := tomlenv.Load(&cfg, files, "FC_", environ); err != nil {
		return Config{}, err
	}
	if err := findDeclarations(&cfg.Declarations, files); err != nil {
		return Config{}, err
	}
	return cfg, cfg.Validate()
}

// Validate checks values that parse but make no sense.
func (c Config) Validate() error {
	switch {
	case c.StateDir == "":
		return fmt.Errorf("state_dir must not be empty")
	case c.Server.Port < 0 || c.Server.Port > 65535:
		return fmt.Errorf("server.port %d is not a TCP port", c.Server.Port)
	case c.Server.RequestTimeout <= 0:
		return fmt.Errorf("server.request_timeout must be > 0 seconds")
	case c.Server.HeaderTimeout <= 0:
		return fmt.Errorf("server.header_timeout must be > 0 seconds")
	case c.Server.IdleTimeout <= 0:
		return fmt.Errorf("server.idle_timeout must be > 0 seconds")
	case c.Server.MaxBodySize <= 0:
		return fmt.Errorf("server.max_body_size must be > 0 bytes")
	case c.Server.RateLimitRPS < 0 || c.Server.RateLimitBurst < 0:
		return fmt.Errorf("server.rate_limit_rps and rate_limit_burst must be >= 0")
	case c.Server.AgentHeartbeat < 1 || c.Server.AgentHeartbeat > 20:
		// Three missed beats must fit in storage.PresenceWindow (60 s).
		return fmt.Errorf("server.agent_heartbeat must be from 1 to 20 seconds")
	case c.Eval.PullRequestInterval < 0:
		return fmt.Errorf("evaluator.pull_request_interval must be >= 0 seconds (0 = webhooks only)")
	case c.Eval.DeclarativeInterval < 0:
		return fmt.Errorf("evaluator.declarative_interval must be >= 0 seconds (0 = never)")
	case c.Database.MaxConnections <= 0:
		return fmt.Errorf("database.max_connections must be > 0")
	case c.Database.MinConnections < 0 || c.Database.MinConnections > c.Database.MaxConnections:
		return fmt.Errorf("database.min_connections must be between 0 and max_connections")
	}
	if c.Eval.MaxConcurrentEvals < 1 || c.Eval.Workers < 1 || c.Eval.EvalTimeout < 1 || c.Eval.GitTimeout < 1 || c.Eval.MaxMemorySize < 0 {
		return fmt.Errorf("evaluator: max_concurrent_evals, workers, eval_timeout and git_timeout must be >= 1")
	}
	for _, p := range c.Eval.AllowedInputPaths {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("evaluator.allowed_input_paths: %q is not an absolute path", p)
		}
	}
	if c.Queue.LeaseTTL < 1 || c.Queue.LeaseGrace < 0 || c.Queue.MaxAttempts < 1 || c.Queue.RetryBackoff < 0 {
		return fmt.Errorf("queue_runner: lease_ttl and max_attempts must be >= 1, lease_grace and retry_backoff >= 0")
	}
	if c.Queue.BuildTimeout < 1 || c.Queue.MaxSilent < 1 || c.Queue.MaxOutputSize < 1 || c.Queue.SweepInterval < 1 || c.Queue.UnsupportedWait < 0 {
		return fmt.Errorf("queue_runner: build_timeout, max_silent, max_output_size and sweep_interval must be >= 1, unsupported_wait >= 0")
	}
	if c.Queue.AgentFailureThreshold < 0 || c.Queue.AgentBackoff < 0 || c.Queue.AgentBackoffMax < c.Queue.AgentBackoff {
		return fmt.Errorf("queue_runner: agent_failure_threshold and agent_backoff must be >= 0, agent_backoff_max >= agent_backoff")
	}
	if c.Logs.MaxLogSize < 1 {
		return fmt.Errorf("logs.max_log_size must be >= 1")
	}
	if c.GC.MaxAgeDays < 0 || c.GC.CleanupInterval < 0 {
		return fmt.Errorf("gc.max_age_days and gc.cleanup_interval must be >= 0")
	}
	if c.Cache.Priority < 1 {
		return fmt.Errorf("cache.priority must be >= 1 (lower is preferred by Nix)")
	}
	if c.Database.URLFile != "" && (c.Database.URL != "" || !filepath.IsAbs(c.Database.URLFile)) {
		return fmt.Errorf("database.url_file %q must be an absolute path, and database.url empty", c.Database.URLFile)
	}
	if _, err := c.Server.TrustedProxyPrefixes(); err != nil {
		return err
	}
	if err := c.validateStores(); err != nil {
		return err
	}
	if err := validPublicURL(c.Server.PublicURL); err != nil {
		return err
	}
	if err := c.LocalAgent.validate(); err != nil {
		return err
	}
	if err := c.Notifications.validate(); err != nil {
		return err
	}
	if err := c.Cluster.validate(); err != nil {
		return err
	}
	if err := c.Declarations.validate(); err != nil {
		return err
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("log_level %q: use debug, info, warn or error", c.LogLevel)
	}
	return nil
}

func (l LocalAgent) validate() error {
	if !l.Enabled {
		return nil
	}
	if err := protocol.CheckAgentName("local_agent.name", l.Name); err != nil {
		return err
	}
	if l.MaxJobs < 0 {
		return fmt.Errorf("local_agent.max_jobs must be >= 0 (0 = one per CPU core)")
	}
	if l.DrainTimeout < 0 {
		return fmt.Errorf("local_agent.drain_timeout must be >= 0 seconds")
	}
	if len(l.Roles) == 0 {
		return fmt.Errorf("local_agent.roles must name at least one of build, eval")
	}
	for _, r := range l.Roles {
		if r != protocol.RoleBuild && r != protocol.RoleEval {
			return fmt.Errorf("local_agent.roles: %q is not build or eval", r)
		}
	}
	return nil
}

// AllowedInputPathsKey is the setting that lists the directories path inputs may name.
const AllowedInputPathsKey = "evaluator.allowed_input_paths"

// PathInputAllowed is a path input's value cleaned (".." and "//" resolved as the
// path reads, without looking at the file system) and whether it lies under, or is,
// one of roots (evaluator.allowed_input_paths). The agent that evaluates checks again
// with symlinks resolved, against its own list.
func PathInputAllowed(value string, roots []string) (string, bool) {
	if !strings.HasPrefix(value, "/") {
		return value, false
	}
	p := filepath.Clean(value)
	for _, r := range roots {
		if r = filepath.Clean(r); r == "/" || p == r || strings.HasPrefix(p, r+"/") {
			return p, true
		}
	}
	return p, false
}

// AgentStateDir is local_agent.state_dir, or state_dir/local-agent.
func (c Config) AgentStateDir() string {
	if c.LocalAgent.StateDir != "" {
		return c.LocalAgent.StateDir
	}
	return filepath.Join(c.StateDir, "local-agent")
}

// CacheDir is cache.dir, or state_dir/cache.
func (c Config) CacheDir() string {
	if c.Cache.Dir != "" {
		return c.Cache.Dir
	}
	return filepath.Join(c.StateDir, "cache")
}

// CacheKeyFile is cache.secret_key_file, or state_dir/cache-key.sec.
func (c Config) CacheKeyFile() string {
	if c.Cache.SecretKeyFile != "" {
		return c.Cache.SecretKeyFile
	}
	return filepath.Join(c.StateDir, "cache-key.sec")
}

// CacheKeyName is cache.key_name, or fc-<this machine's short host name>-1.
func (c Config) CacheKeyName() string {
	if c.Cache.KeyName != "" {
		return c.Cache.KeyName
	}
	host, _ := os.Hostname()
	return "fc-" + strings.SplitN(host, ".", 2)[0] + "-1"
}

// LogDir is logs.log_dir, or state_dir/logs.
func (c Config) LogDir() string {
	if c.Logs.LogDir != "" {
		return c.Logs.LogDir
	}
	return filepath.Join(c.StateDir, "logs")
}

// DatabaseURL is database.url, or the content of database.url_file without its
// surrounding space; empty: the private cluster.
func (c Config) DatabaseURL() (string, error) {
	if c.Database.URLFile == "" {
		return c.Database.URL, nil
	}
	b, err := os.ReadFile(c.Database.URLFile)
	if err != nil {
		return "", fmt.Errorf("database.url_file: %w", err)
	}
	u := strings.TrimSpace(string(b))
	if u == "" {
		return "", fmt.Errorf("database.url_file %s is empty", c.Database.URLFile)
	}
	return u, nil
}

// EmbeddedDatabaseDir is state_dir/postgres, the private PostgreSQL cluster used when
// no database.url is configured.
func (c Config) EmbeddedDatabaseDir() string { return filepath.Join(c.StateDir, "postgres") }

// GitDir is state_dir/git, where git keeps what it needs on the coordinator (SSH
// known_hosts).
func (c Config) GitDir() string { return filepath.Join(c.StateDir, "git") }

// validPublicURL accepts an empty server.public_url or an absolute http(s) URL with a
// host and nothing after its path (links are made by appending paths to it).
func validPublicURL(s string) error {
	if s == "" {
		return nil
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Errorf("server.public_url %q is not a URL: %w", s, err)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("server.public_url %q must be an absolute http or https URL (like https://ci.example.org)", s)
	case u.Host == "":
		return fmt.Errorf("server.public_url %q has no host", s)
	case u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "":
		return fmt.Errorf("server.public_url %q must not have a user, a query or a fragment", s)
	}
	return nil
}

// PublicURL is server.public_url without a trailing slash, or http://host:port (the
// listen address) when it is not set: the root that links to pages and API
// resources are made from.
func (c Config) PublicURL() string {
	if c.Server.PublicURL != "" {
		return strings.TrimRight(c.Server.PublicURL, "/")
	}
	return "http://" + c.Server.Addr()
}

// TrustedProxyPrefixes parses server.trusted_proxies: an address is a one-address range.
func (s Server) TrustedProxyPrefixes() ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(s.TrustedProxies))
	for _, v := range s.TrustedProxies {
		if p, err := netip.ParsePrefix(v); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, fmt.Errorf("server.trusted_proxies: %q is not an IP address or CIDR range", v)
		}
		a = a.Unmap()
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// Addr is the listen address.
func (s Server) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// Days turns a days setting into a duration.
func Days(n int) time.Duration { return time.Duration(n) * 24 * time.Hour }

// Seconds turns a seconds setting into a duration.
func Seconds(n int) time.Duration { return time.Duration(n) * time.Second }
