package config

import (
	"os"
	"strings"
	"testing"

	"github.com/fc-ci/fc/internal/tomlenv/tomlenvtest"
)

// FuzzLoad loads arbitrary agent.toml files and FC_ variables: a refusal
// names the line, key or variable at fault; what loads has finite numbers and
// survives being written back as TOML (see tomlenvtest.Check). Run it longer with
// go test -run '^$' -fuzz '^FuzzLoad$' -fuzztime 60s ./agent/config/
func FuzzLoad(f *testing.F) {
	example, err := os.ReadFile("../../agent.toml")
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range tomlenvtest.Seeds(example) {
		f.Add(s, "")
	}
	f.Add([]byte("[coordinator]\nurl = \"https://fc.example.org\"\nenrollment_token = \"fc-enroll-abc\"\n[agent]\nname = \"b1\"\nsystems = [\"x86_64-linux\"]\nmax_jobs = 4\nspeed_factor = 2.0\n"), "")
	f.Add([]byte("[agent]\nroles = [\"cook\"]\n"), "FC_AGENT__MAX_JOBS=-1")
	f.Add([]byte("[agent]\ncompression_level = 23\neval_store = \"relative\"\n"), "FC_COORDINATOR__URL=ftp://x")
	f.Add([]byte("[agent]\nmax_jobs = \"four\"\n"), "FC_AGENT__SPEED_FACTOR=fast")
	// TOML shapes beyond "key = value" under "[table]", and numbers that are no numbers.
	f.Add([]byte("agent = { nmae = \"b1\" }\n"), "")
	f.Add([]byte("[agent]\n'max.jobs' = 4\n"), "")
	f.Add([]byte("[agent]\nspeed_factor = inf\n"), "")
	f.Add([]byte("[agent]\nspeed_factor = 1.0\n"), "FC_AGENT__SPEED_FACTOR=NaN")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte, env string) {
		var environ []string
		if env != "" {
			environ = strings.Split(env, "\n")
		}
		tomlenvtest.Check(t, dir, data, environ, func(path string, environ []string) (any, error) {
			return Load(path, environ)
		})
	})
}
