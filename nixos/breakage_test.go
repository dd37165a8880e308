package nixos_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// broken is a copy of the repository's flake and modules with one edit: old (which must
// occur exactly once in file) replaced by new.
func (h harness) broken(t *testing.T, file, old, new string) harness {
	t.Helper()
	dst := t.TempDir()
	for _, pattern := range []string{"flake.nix", "nixos/*.nix", "nixos/test/*.nix"} {
		matches, err := filepath.Glob(filepath.Join(h.repo, pattern))
		if err != nil || len(matches) == 0 {
			t.Fatalf("%s: %v", pattern, err)
		}
		for _, m := range matches {
			rel, _ := filepath.Rel(h.repo, m)
			b, err := os.ReadFile(m)
			if err != nil {
				t.Fatal(err)
			}
			if rel == file {
				if n := strings.Count(string(b), old); n != 1 {
					t.Fatalf("%s holds %q %d times; the breakage needs it once", file, old, n)
				}
				b = []byte(strings.Replace(string(b), old, new, 1))
			}
			if err := os.MkdirAll(filepath.Dir(filepath.Join(dst, rel)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dst, rel), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	h.repo = dst
	return h
}

const agentCase = `{ services.fc-agent = { enable = true; settings.coordinator.url = "http://127.0.0.1:3000"; }; }`

// The test catches a module broken on purpose: each break below must fail it, saying why.
func TestModules_BrokenOnPurposeIsCaught(t *testing.T) {
	h := newHarness(t)

	t.Run("an unknown systemd service option fails evaluation", func(t *testing.T) {
		b := h.broken(t, "nixos/agent.nix", "restartIfChanged = false;", "restartIfChangd = false;")
		_, err := b.eval(t, []string{"agent"}, agentCase)
		if err == nil || !strings.Contains(err.Error(), "restartIfChangd") || !strings.Contains(err.Error(), "does not exist") {
			t.Errorf("evaluation with systemd.services.fc-agent.restartIfChangd: %v", err)
		}
	})

	t.Run("an unknown systemd directive fails systemd-analyze verify", func(t *testing.T) {
		b := h.broken(t, "nixos/hardening.nix", "ProtectHome = true;", "ProtectHomee = true;")
		s, err := b.eval(t, []string{"agent"}, agentCase)
		if err != nil {
			t.Fatal(err) // serviceConfig takes any directive, as in NixOS
		}
		if err := verify(t, s); err == nil || !strings.Contains(err.Error(), "Unknown key") || !strings.Contains(err.Error(), "ProtectHomee") {
			t.Errorf("verify with ProtectHomee: %v", err)
		}
	})

	t.Run("a TOML key the coordinator rejects fails its config check", func(t *testing.T) {
		b := h.broken(t, "nixos/coordinator.nix", "{ database.url_file = credential", "{ database.urlfile = credential")
		dir := t.TempDir()
		urlFile := filepath.Join(dir, "db-url")
		if err := os.WriteFile(urlFile, []byte("postgres:///fc\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := b.eval(t, []string{"coordinator"}, `{ services.fc-coordinator = { enable = true;
		  database.createLocally = false; database.urlFile = "`+urlFile+`"; }; }`)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.configCheck(t, s.Units["fc-coordinator"], "fc-coordinator"); err == nil || !strings.Contains(err.Error(), `"database.urlfile"`) {
			t.Errorf("config check of a coordinator.toml with database.urlfile: %v", err)
		}
	})

	t.Run("a TOML key the agent rejects fails its config check", func(t *testing.T) {
		s, err := h.eval(t, []string{"agent"}, `{ services.fc-agent = { enable = true;
		  settings.coordinator.url = "http://127.0.0.1:3000"; settings.agent.max_jobz = 4; }; }`)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.configCheck(t, s.Units["fc-agent"], "fc-agent"); err == nil || !strings.Contains(err.Error(), `"agent.max_jobz"`) {
			t.Errorf("config check of an agent.toml with agent.max_jobz: %v", err)
		}
	})

	t.Run("a declaration the coordinator refuses fails its config check", func(t *testing.T) {
		s, err := h.eval(t, []string{"coordinator"}, `{ services.fc-coordinator = { enable = true;
		  settings.projects = [ { name = "p"; repository_url = "https://example.org/p";
		    jobsets = [ { name = "main"; nix_expresion = "release.nix"; } ]; } ]; }; }`)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.configCheck(t, s.Units["fc-coordinator"], "fc-coordinator"); err == nil || !strings.Contains(err.Error(), "nix_expresion") {
			t.Errorf("config check of a jobset with nix_expresion: %v", err)
		}
	})

	t.Run("modules without a key cannot be imported twice", func(t *testing.T) {
		b := h.broken(t, "nixos/coordinator.nix", `key = "github.com/fc-ci/fc/nixos/coordinator.nix";`, "")
		_, err := b.eval(t, []string{"default", "coordinator"}, `{ services.fc-coordinator.enable = true; }`)
		if err == nil || !strings.Contains(err.Error(), "already declared") {
			t.Errorf("default + coordinator without the key: %v", err)
		}
	})

	assertions := []struct{ name, module, want string }{
		{"no database", `{ services.fc-coordinator = { enable = true; database.createLocally = false; }; }`,
			"database.createLocally = false needs the database named"},
		{"URL file with a local database", `{ services.fc-coordinator = { enable = true; database.urlFile = "/run/keys/db"; }; }`,
			"database.urlFile names the database, so set\ndatabase.createLocally = false"},
		{"firewall open on loopback", `{ services.fc-coordinator = { enable = true; openFirewall = true; }; }`,
			`settings.server.host = "127.0.0.1" listens on loopback only`},
	}
	for _, a := range []struct{ name, module, want string }{
		{"agent without a coordinator", `{ services.fc-agent.enable = true; }`, "services.fc-agent: name the coordinator"},
	} {
		t.Run("an assertion explains: "+a.name, func(t *testing.T) {
			s, err := h.eval(t, []string{"agent"}, a.module)
			if err != nil {
				t.Fatal(err)
			}
			if len(s.FailedAssertions) != 1 || !strings.Contains(s.FailedAssertions[0], a.want) {
				t.Errorf("failed assertions %q; want one saying %q", s.FailedAssertions, a.want)
			}
		})
	}
	for _, a := range assertions {
		t.Run("an assertion explains: "+a.name, func(t *testing.T) {
			s, err := h.eval(t, []string{"coordinator"}, a.module)
			if err != nil {
				t.Fatal(err)
			}
			if len(s.FailedAssertions) != 1 || !strings.Contains(s.FailedAssertions[0], a.want) {
				t.Errorf("failed assertions %q; want one saying %q", s.FailedAssertions, a.want)
			}
		})
	}
}
