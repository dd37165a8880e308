package protocol

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// An agent's key.pub is pinned without its comment, found by its fingerprint; any
// other kind of key, or not a key at all, is refused.
func TestParseAgentKey(t *testing.T) {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	bare := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))
	k, err := ParseAgentKey(bare + " builder-1\n")
	if err != nil {
		t.Fatal(err)
	}
	if k.Line != bare || k.Comment != "builder-1" || k.Fingerprint != ssh.FingerprintSHA256(sp) || !strings.HasPrefix(k.Fingerprint, "SHA256:") {
		t.Errorf("parsed %+v, want line %q, comment builder-1, fingerprint %s", k, bare, ssh.FingerprintSHA256(sp))
	}
	rk, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	rp, err := ssh.NewPublicKey(&rk.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "ssh-ed25519", "not a key", string(ssh.MarshalAuthorizedKey(rp))} {
		if _, err := ParseAgentKey(bad); !errors.Is(err, ErrNotAgentKey) {
			t.Errorf("ParseAgentKey(%.30q) = %v, want ErrNotAgentKey", bad, err)
		}
	}
}
