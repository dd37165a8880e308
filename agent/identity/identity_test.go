package identity_test

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/fc-ci/fc/agent/identity"
)

func TestGenerate_WritesAnOpenSSHEd25519KeyWithMode0600(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nested", "agent_key")
	id, err := identity.Generate(path, "builder1")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v, want 0600", st.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	if !bytes.HasPrefix(b, []byte("-----BEGIN OPENSSH PRIVATE KEY-----")) {
		t.Errorf("key is not in OpenSSH format:\n%s", b)
	}
	if id.Signer.PublicKey().Type() != ssh.KeyAlgoED25519 || id.Path != path {
		t.Errorf("identity %s at %s", id.Signer.PublicKey().Type(), id.Path)
	}
	line := id.PublicKey("builder1")
	if !strings.HasPrefix(line, "ssh-ed25519 ") || !strings.HasSuffix(line, " builder1") {
		t.Errorf("public key line %q", line)
	}
	if !strings.HasPrefix(id.Fingerprint(), "SHA256:") {
		t.Errorf("fingerprint %q", id.Fingerprint())
	}
	loaded, err := identity.Load(path)
	if err != nil || loaded.Fingerprint() != id.Fingerprint() {
		t.Errorf("Load after Generate: %v, fingerprint %s vs %s", err, loaded.Fingerprint(), id.Fingerprint())
	}
}

func TestGenerate_RefusesToOverwrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent_key")
	first, err := identity.Generate(path, "")
	if err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(path)
	if _, err := identity.Generate(path, ""); err == nil || !errors.Is(err, os.ErrExist) {
		t.Fatalf("second Generate: err = %v, want it to refuse (file exists)", err)
	}
	after, _ := os.ReadFile(path)
	if !bytes.Equal(before, after) {
		t.Fatal("second Generate changed the existing key")
	}
	again, err := identity.Load(path)
	if err != nil || again.Fingerprint() != first.Fingerprint() {
		t.Errorf("key after refused overwrite: %v %s", err, again.Fingerprint())
	}
}

func TestLoadOrGenerate_CreatesOnceThenKeeps(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent_key")
	a, created, err := identity.LoadOrGenerate(path, "x")
	if err != nil || !created {
		t.Fatalf("first: created=%v err=%v", created, err)
	}
	b, created, err := identity.LoadOrGenerate(path, "x")
	if err != nil || created {
		t.Fatalf("second: created=%v err=%v", created, err)
	}
	if a.Fingerprint() != b.Fingerprint() {
		t.Errorf("key changed: %s then %s", a.Fingerprint(), b.Fingerprint())
	}
}

// Two agents started on one state directory (a restart overlapping the old process,
// or a test's parallel runs) both end up with the one key, neither with an error.
func TestLoadOrGenerate_ConcurrentStartsShareOneKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent_key")
	const n = 8
	prints := make(chan string, n)
	errs := make(chan error, n)
	start := make(chan struct{})
	for range n {
		go func() {
			<-start
			id, _, err := identity.LoadOrGenerate(path, "x")
			if err != nil {
				errs <- err
				return
			}
			prints <- id.Fingerprint()
		}()
	}
	close(start)
	seen := map[string]bool{}
	for range n {
		select {
		case err := <-errs:
			t.Errorf("LoadOrGenerate: %v", err)
		case fp := <-prints:
			seen[fp] = true
		}
	}
	if len(seen) > 1 {
		t.Errorf("%d different keys, want one: %v", len(seen), seen)
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("the key directory holds %d files, want only the key (no temporary files left)", len(entries))
	}
}

func TestLoad_RejectsANonEd25519Key(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(key, "rsa")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "agent_key")
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = identity.Load(path)
	if err == nil {
		t.Fatal("an RSA key was accepted")
	}
	for _, want := range []string{path, ssh.KeyAlgoRSA, "ed25519"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	// LoadOrGenerate must not replace a key it cannot use.
	if _, _, err := identity.LoadOrGenerate(path, ""); err == nil {
		t.Error("LoadOrGenerate accepted or replaced an RSA key")
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, pem.EncodeToMemory(block)) {
		t.Error("LoadOrGenerate overwrote the RSA key")
	}
}

func TestLoad_MissingAndGarbledFiles(t *testing.T) {
	dir := t.TempDir()
	_, err := identity.Load(filepath.Join(dir, "absent"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing key: err = %v, want os.ErrNotExist", err)
	}
	bad := filepath.Join(dir, "garbled")
	if err := os.WriteFile(bad, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := identity.Load(bad); err == nil || errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), bad) {
		t.Errorf("garbled key: err = %v, want a parse error naming the file", err)
	}
	if _, _, err := identity.LoadOrGenerate(bad, ""); err == nil {
		t.Error("LoadOrGenerate replaced a garbled key instead of failing")
	}
}

func TestSign_VerifiesWithThePublishedPublicKey(t *testing.T) {
	id, err := identity.Generate(filepath.Join(t.TempDir(), "agent_key"), "signer")
	if err != nil {
		t.Fatal(err)
	}
	pub, comment, _, _, err := ssh.ParseAuthorizedKey([]byte(id.PublicKey("signer")))
	if err != nil {
		t.Fatalf("parse published key: %v", err)
	}
	if comment != "signer" || ssh.FingerprintSHA256(pub) != id.Fingerprint() {
		t.Errorf("published key: comment %q, fingerprint %s vs %s", comment, ssh.FingerprintSHA256(pub), id.Fingerprint())
	}
	msg := []byte("fc challenge nonce 0123456789abcdef")
	sig, err := id.Sign(msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := pub.Verify(msg, sig); err != nil {
		t.Fatalf("signature does not verify: %v", err)
	}
	if err := pub.Verify([]byte("another message"), sig); err == nil {
		t.Error("signature verifies for a different message")
	}
	other, err := identity.Generate(filepath.Join(t.TempDir(), "other_key"), "")
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Signer.PublicKey().Verify(msg, sig); err == nil {
		t.Error("signature verifies with another agent's key")
	}
}
