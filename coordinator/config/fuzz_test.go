package config

import (
	"os"
	"strings"
	"testing"

	"github.com/fc-ci/fc/internal/tomlenv/tomlenvtest"
)

// FuzzLoad loads arbitrary coordinator.toml files and FC_ variables: a refusal
// names the line, key or variable at fault; what loads has finite numbers and
// survives being written back as TOML (see tomlenvtest.Check). Run it longer with
// go test -run '^$' -fuzz '^FuzzLoad$' -fuzztime 60s ./coordinator/config/
func FuzzLoad(f *testing.F) {
	example, err := os.ReadFile("../../coordinator.toml")
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range tomlenvtest.Seeds(example) {
		f.Add(s, "")
	}
	f.Add([]byte("[server]\nport = 3000\nhots = \"x\"\n"), "")
	f.Add([]byte("[database]\n\nmax_connections = \"many\"\n"), "")
	f.Add([]byte("[server]\nport = 70000\n"), "FC_SERVER__HOST=::1")
	f.Add([]byte("[server]\nrate_limit_rps = 2.5\nallowed_origins = [\"https://a.example\"]\n"), "FC_SERVER__RATE_LIMIT_RPS=fast")
	f.Add([]byte("[local_agent]\nenabled = true\nroles = [\"build\"]\n"), "FC_LOCAL_AGENT__ROLES=build, eval\nFC_LOCAL_AGENT__MAX_JOBS=2")
	f.Add([]byte("[cache]\nupstream_caches = [\"https://cache.nixos.org\"]\nupstream_keys = [\"cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=\"]\n"), "")
	// TOML shapes beyond "key = value" under "[table]", and numbers that are no numbers.
	f.Add([]byte("server = { prot = 3 }\n"), "")
	f.Add([]byte("\"state.dir\" = \"/x\"\n"), "")
	f.Add([]byte("[[servers]]\nport = 1\n"), "")
	f.Add([]byte("[server]\nrate_limit_rps = nan\n"), "")
	f.Add([]byte("[server]\nrate_limit_rps = 1.0\n"), "FC_SERVER__RATE_LIMIT_RPS=+Inf")
	f.Add([]byte(declaredExample), "")
	f.Add([]byte("[[projects]]\nname = \"p\"\nrepository_url = \"/r\"\njobsets = [{ name = \"a b\" }]\n"), "")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte, env string) {
		var environ []string
		if env != "" {
			environ = strings.Split(env, "\n")
		}
		tomlenvtest.Check(t, dir, data, environ, func(path string, environ []string) (any, error) {
			cfg, err := Load(path, environ)
			// Which file declares is the file's path (and its text), not a setting.
			cfg.Declarations.File, cfg.Declarations.data = "", nil
			return cfg, err
		})
	})
}
