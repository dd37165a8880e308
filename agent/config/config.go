// Package config defines fc-agent's settings and loads them like the coordinator's
// (internal/tomlenv): compiled defaults, ./agent.toml, the --config / FC_CONFIG_FILE
// file, then FC_ variables (FC_COORDINATOR__URL, FC_AGENT__NAME, ...). agent.toml
// documents every key. The coordinator's settings are coordinator/config.
package config

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fc-ci/fc/internal/tomlenv"
	"github.com/fc-ci/fc/protocol"
)

// Config is everything fc-agent can be told.
type Config struct {
	LogLevel    string      `toml:"log_level"`
	Coordinator Coordinator `toml:"coordinator"`
	Agent       Agent       `toml:"agent"`
}

// Coordinator says where the coordinators are and how to enroll with them.
type Coordinator struct {
	// URL is one coordinator's base URL; URLs are several (coordinators sharing one
	// database), tried in turn when the current one is gone. At most one of the two
	// may be set; neither: DefaultURL. Read them through Config.URLs.
	URL                 string   `toml:"url"`
	URLs                []string `toml:"urls"`
	EnrollmentToken     string   `toml:"enrollment_token"`
	EnrollmentTokenFile string   `toml:"enrollment_token_file"`
	CAFile              string   `toml:"ca_file"`
}

// Agent describes this builder.
type Agent struct {
	Name              string   `toml:"name"`
	KeyFile           string   `toml:"key_file"`
	StateDir          string   `toml:"state_dir"`
	Systems           []string `toml:"systems"`
	Features          []string `toml:"features"`
	MandatoryFeatures []string `toml:"mandatory_features"`
	MaxJobs           int      `toml:"max_jobs"`
	// StepSlots is how many steps the agent takes at once; 0: 16 × max_jobs. Steps
	// beyond max_jobs share nix-store processes (batches) rather than each paying a
	// process start; the coordinator hands out more than 2 × max_jobs only while the
	// agent's steps are quick.
	StepSlots int `toml:"step_slots"`
	// NixConnection is how builds reach Nix: "daemon" (warm nix-daemon --stdio
	// connections, Nix 2.8 or later; nix-store processes where none starts; the
	// default) or "process" (a nix-store --realise per batch, any Nix 2.x).
	NixConnection string   `toml:"nix_connection"`
	SpeedFactor   float64  `toml:"speed_factor"`
	Roles         []string `toml:"roles"`
	// CompressionLevel is the zstd level of uploads (1 fastest .. 19 smallest).
	CompressionLevel int `toml:"compression_level"`
	// MinFreeDisk (bytes) is the free space in the Nix store under which the agent
	// takes no steps; 0: no minimum.
	MinFreeDisk int64 `toml:"min_free_disk"`
	// GCInterval is the seconds between garbage collections (nix-store --gc); 0: never.
	GCInterval int `toml:"gc_interval"`
	// EvalStore is where evaluations write .drv files: "auto" (a store of the
	// agent's own under /dev/shm when that is a writable directory with room, else
	// Nix's own), "system" (Nix's own store), or a directory of the agent user's own
	// in which the agent keeps its store (see EvalStoreParent).
	EvalStore string `toml:"eval_store"`
	// EvalStoreMaxSize (bytes): a larger eval store is emptied between evaluations.
	EvalStoreMaxSize int64 `toml:"eval_store_max_size"`
	// AllowedInputPaths are the directories jobsets' path inputs may name, at or
	// below, with symlinks resolved; empty: path inputs are refused. Whatever it
	// says, a path input never reaches the state directory, the key or Protected.
	AllowedInputPaths []string `toml:"allowed_input_paths"`
	// Protected are more paths no path input may reach (be inside or contain); not a
	// setting: the coordinator's local agent protects the coordinator's own files.
	Protected []string `toml:"-"`
}

// Defaults are the compiled defaults, as documented (commented out) in agent.toml.
func Defaults() Config {
	return Config{
		LogLevel:    "info",
		Coordinator: Coordinator{URLs: []string{}},
		Agent: Agent{
			StateDir:          "/var/lib/fc-agent",
			Systems:           []string{},
			Features:          []string{},
			MandatoryFeatures: []string{},
			SpeedFactor:       1,
			Roles:             []string{protocol.RoleBuild, protocol.RoleEval},
			CompressionLevel:  1,
			EvalStore:         "auto",
			NixConnection:     "daemon",
			EvalStoreMaxSize:  2 << 30,
			AllowedInputPaths: []string{},
		},
	}
}

// DefaultURL is the coordinator's URL when neither coordinator.url nor
// coordinator.urls is set.
const DefaultURL = "http://127.0.0.1:3000"

// URLs are the coordinators the agent connects to, in the order it tries them:
// coordinator.urls, else coordinator.url, else DefaultURL.
func (c Config) URLs() []string {
	switch {
	case len(c.Coordinator.URLs) > 0:
		return c.Coordinator.URLs
	case c.Coordinator.URL != "":
		return []string{c.Coordinator.URL}
	default:
		return []string{DefaultURL}
	}
}

// FileName is read from the working directory when present.
const FileName = "agent.toml"

// Load reads the configuration; configFlag is --config ("" if absent).
func Load(configFlag string, environ []string) (Config, error) {
	cfg := Defaults()
	if err := tomlenv.Load(&cfg, tomlenv.Files(FileName, configFlag, environ), "FC_", environ); err != nil {
		return Config{}, err
	}
	return cfg, cfg.Validate()
}

// Validate checks values that parse but make no sense.
func (c Config) Validate() error {
	if err := c.validateURLs(); err != nil {
		return err
	}
	if c.Agent.StateDir == "" {
		return fmt.Errorf("agent.state_dir must not be empty")
	}
	if c.Agent.Name != "" {
		if err := protocol.CheckAgentName("agent.name", c.Agent.Name); err != nil {
			return err
		}
	}
	if c.Agent.MaxJobs < 0 {
		return fmt.Errorf("agent.max_jobs must be >= 0 (0 = one per CPU core)")
	}
	if c.Agent.StepSlots < 0 {
		return fmt.Errorf("agent.step_slots must be >= 0 (0 = 16 × max_jobs)")
	}
	if c.Agent.SpeedFactor <= 0 {
		return fmt.Errorf("agent.speed_factor must be > 0")
	}
	if c.Agent.CompressionLevel < 1 || c.Agent.CompressionLevel > 22 {
		return fmt.Errorf("agent.compression_level must be from 1 to 22")
	}
	if c.Agent.MinFreeDisk < 0 {
		return fmt.Errorf("agent.min_free_disk must be >= 0 (bytes; 0 = no minimum)")
	}
	if c.Agent.GCInterval < 0 {
		return fmt.Errorf("agent.gc_interval must be >= 0 (seconds; 0 = never)")
	}
	if s := c.Agent.NixConnection; s != "daemon" && s != "process" {
		return fmt.Errorf("agent.nix_connection %q must be \"daemon\" or \"process\"", s)
	}
	if s := c.Agent.EvalStore; s != "auto" && s != "system" && !filepath.IsAbs(s) {
		return fmt.Errorf("agent.eval_store %q must be \"auto\", \"system\" or an absolute directory", s)
	}
	if c.Agent.EvalStoreMaxSize < 0 {
		return fmt.Errorf("agent.eval_store_max_size must be >= 0 (bytes; 0 = no limit)")
	}
	for _, p := range c.Agent.AllowedInputPaths {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("agent.allowed_input_paths: %q is not an absolute path", p)
		}
	}
	if len(c.Agent.Roles) == 0 {
		return fmt.Errorf("agent.roles must name at least one of build, eval")
	}
	for _, r := range c.Agent.Roles {
		if r != protocol.RoleBuild && r != protocol.RoleEval {
			return fmt.Errorf("agent.roles: %q is not build or eval", r)
		}
	}
	return nil
}

// validateURLs checks coordinator.url and coordinator.urls: one or the other, each
// an http(s) base URL, none twice.
func (c Config) validateURLs() error {
	if c.Coordinator.URL != "" && len(c.Coordinator.URLs) > 0 {
		return fmt.Errorf("coordinator.url %q and coordinator.urls %q are both set: put every coordinator in coordinator.urls", c.Coordinator.URL, c.Coordinator.URLs)
	}
	key := "coordinator.url"
	if len(c.Coordinator.URLs) > 0 {
		key = "coordinator.urls"
	}
	seen := map[string]bool{}
	for _, raw := range c.URLs() {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%s: %q must be a coordinator's http:// or https:// base URL", key, raw)
		}
		norm := strings.TrimSuffix(raw, "/")
		if seen[norm] {
			return fmt.Errorf("%s: %q is listed twice", key, raw)
		}
		seen[norm] = true
	}
	return nil
}

// EvalStoreParent is the directory that holds the agent's eval store ("" for Nix's
// own store) and whether it was picked by "auto": /dev/shm/fc-agent-<uid>, when
// /dev/shm is a writable directory with room for eval_store_max_size (at least 1 GiB;
// a small /dev/shm, such as a container's 64 MB, would fail evaluations).
func (c Config) EvalStoreParent() (dir string, auto bool) {
	switch c.Agent.EvalStore {
	case "system":
		return "", false
	case "auto":
		var st unix.Statfs_t
		if unix.Access("/dev/shm", unix.W_OK) != nil || unix.Statfs("/dev/shm", &st) != nil ||
			int64(st.Bavail)*int64(st.Bsize) < max(c.Agent.EvalStoreMaxSize, 1<<30) {
			return "", true
		}
		return fmt.Sprintf("/dev/shm/fc-agent-%d", os.Getuid()), true
	default:
		return c.Agent.EvalStore, false
	}
}

// EvalStoreName is the eval store's directory in its parent, named after the state
// directory: two agents on one machine never share a store.
func (c Config) EvalStoreName() string {
	state, err := filepath.Abs(c.Agent.StateDir)
	if err != nil {
		state = c.Agent.StateDir
	}
	sum := sha256.Sum256([]byte(state))
	return "eval-" + hex.EncodeToString(sum[:6])
}

// InputProtected are the paths no jobset's path input may reach (be inside, or
// contain): the state directory, the key, the enrollment token file and Protected.
func (c Config) InputProtected() []string {
	out := []string{c.Agent.StateDir, c.KeyPath()}
	if c.Coordinator.EnrollmentTokenFile != "" {
		out = append(out, c.Coordinator.EnrollmentTokenFile)
	}
	return append(out, c.Agent.Protected...)
}

// KeyPath is where the agent's private key lives.
func (c Config) KeyPath() string {
	if c.Agent.KeyFile != "" {
		return c.Agent.KeyFile
	}
	return filepath.Join(c.Agent.StateDir, "agent_key")
}

// Name is the configured name, or the host name (its first label). An agent that has
// no agent.name and enrolls with a token takes the token's name instead (the
// coordinator chooses: agent.name, then the token's name, then the host name).
func (c Config) Name() string {
	if c.Agent.Name != "" {
		return c.Agent.Name
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "agent"
	}
	return strings.SplitN(h, ".", 2)[0]
}

// MaxJobs is max_jobs, or the number of CPU cores when it is 0.
func (c Config) MaxJobs() int {
	if c.Agent.MaxJobs > 0 {
		return c.Agent.MaxJobs
	}
	return runtime.NumCPU()
}

// StepSlots is step_slots, or 16 × MaxJobs when it is 0.
func (c Config) StepSlots() int {
	if c.Agent.StepSlots > 0 {
		return c.Agent.StepSlots
	}
	return 16 * c.MaxJobs()
}

// GCEvery is gc_interval as a duration (0: never).
func (c Config) GCEvery() time.Duration { return time.Duration(c.Agent.GCInterval) * time.Second }

// EnrollmentToken is the token from the setting or its file, if any.
func (c Config) EnrollmentToken() (string, error) {
	if c.Coordinator.EnrollmentToken != "" {
		return c.Coordinator.EnrollmentToken, nil
	}
	if c.Coordinator.EnrollmentTokenFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(c.Coordinator.EnrollmentTokenFile)
	if err != nil {
		return "", fmt.Errorf("coordinator.enrollment_token_file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
