package cli_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fc-ci/fc/storage/storagetest"
)

// keyWorks says whether key authenticates as an admin on the coordinator at addr.
func keyWorks(t *testing.T, addr, key string) bool {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+addr+"/api/v1/api-keys", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func declaredKey(name, key string) string {
	sum := sha256.Sum256([]byte(key))
	return fmt.Sprintf("[[api_keys]]\nname = %q\nrole = \"admin\"\nkey_hash = %q\n", name, hex.EncodeToString(sum[:]))
}

// waitLog waits until the coordinator's log has n lines containing all of parts.
func waitLog(t *testing.T, p *proc, n int, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		found := 0
		for _, l := range strings.Split(p.stderr.String(), "\n") {
			all := true
			for _, part := range parts {
				all = all && strings.Contains(l, part)
			}
			if all {
				found++
			}
		}
		if found >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %d log lines with %q within 60 s:\n%s", n, parts, p.stderr)
		}
		time.Sleep(50 * time.Millisecond) // polls the log a process writes; no event to wait on
	}
}

// TestServe_SIGHUPReappliesTheDeclarations sends a real SIGHUP to a real
// fc-coordinator serve: a changed config file is applied (a new key works, the
// removed one stops working); a broken one is logged and changes nothing.
func TestServe_SIGHUPReappliesTheDeclarations(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "fc.toml")
	first, second := "fc_"+strings.Repeat("1", 32), "fc_"+strings.Repeat("2", 32)
	if err := os.WriteFile(path, []byte(declaredKey("first", first)), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startServe(t, []string{"FC_DATABASE__URL=" + storagetest.URL(t), "FC_CONFIG_FILE=" + path, "FC_STATE_DIR=" + t.TempDir()})
	if !keyWorks(t, p.addr, first) || keyWorks(t, p.addr, second) {
		t.Fatalf("at start: the declared key must work, the other not:\n%s", p.stderr)
	}

	if err := os.WriteFile(path, []byte(declaredKey("second", second)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, p, 1, "declarations applied", `api_keys="1 created, 0 updated, 1 removed"`)
	if keyWorks(t, p.addr, first) || !keyWorks(t, p.addr, second) {
		t.Errorf("after SIGHUP: the removed key must stop working and the new one work")
	}

	if err := os.WriteFile(path, []byte("[[api_keys]]\nname = \"broken\"\nrole = \"admin\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, p, 1, "configuration not applied", "api_keys[0]: give key_hash or key_file")
	if !keyWorks(t, p.addr, second) {
		t.Errorf("a broken config on SIGHUP changed the running state")
	}
	select {
	case <-p.exited:
		t.Fatalf("the coordinator exited on SIGHUP:\n%s", p.stderr)
	default:
	}
}
