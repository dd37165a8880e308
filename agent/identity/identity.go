// Package identity manages the agent's ed25519 key in OpenSSH format: created once,
// its public half pinned by the coordinator at enrollment, used to sign each
// connection's challenge.
package identity

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Identity is a loaded key.
type Identity struct {
	Signer ssh.Signer
	Path   string
}

// PublicKey is the authorized_keys line (with comment).
func (id Identity) PublicKey(comment string) string {
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(id.Signer.PublicKey())))
	if comment != "" {
		line += " " + comment
	}
	return line
}

// Fingerprint is the key's SHA256 fingerprint, as ssh-keygen -l prints it.
func (id Identity) Fingerprint() string { return ssh.FingerprintSHA256(id.Signer.PublicKey()) }

// Generate writes a new key to path (mode 0600); it refuses to overwrite one.
func Generate(path, comment string) (Identity, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return Identity{}, fmt.Errorf("generate key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return Identity{}, fmt.Errorf("encode key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return Identity{}, fmt.Errorf("create key directory: %w", err)
	}
	// Written whole to a temporary file, then linked into place: link(2) fails if the
	// key exists, so two processes starting on one state directory never see a partial
	// key and the loser loads the winner's (LoadOrGenerate).
	f, err := os.CreateTemp(filepath.Dir(path), ".agent_key-*")
	if err != nil {
		return Identity{}, fmt.Errorf("write key %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if err := pem.Encode(f, block); err != nil {
		f.Close()
		return Identity{}, fmt.Errorf("write key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return Identity{}, fmt.Errorf("write key %s: %w", path, err)
	}
	if err := os.Link(f.Name(), path); err != nil {
		return Identity{}, fmt.Errorf("write key %s: %w", path, err)
	}
	return Load(path)
}

// Load reads a key written by Generate (or ssh-keygen -t ed25519).
func Load(path string) (Identity, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Identity{}, fmt.Errorf("read key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return Identity{}, fmt.Errorf("parse key %s: %w", path, err)
	}
	if signer.PublicKey().Type() != ssh.KeyAlgoED25519 {
		return Identity{}, fmt.Errorf("key %s is %s; FC agents use ed25519", path, signer.PublicKey().Type())
	}
	return Identity{Signer: signer, Path: path}, nil
}

// LoadOrGenerate loads the key at path, creating it first if it does not exist.
func LoadOrGenerate(path, comment string) (id Identity, created bool, err error) {
	id, err = Load(path)
	if err == nil {
		return id, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return Identity{}, false, err
	}
	id, err = Generate(path, comment)
	if errors.Is(err, os.ErrExist) {
		// Another process on the same state directory created it first.
		id, err = Load(path)
		return id, false, err
	}
	return id, err == nil, err
}

// Sign signs a challenge message.
func (id Identity) Sign(msg []byte) (*ssh.Signature, error) {
	return id.Signer.Sign(rand.Reader, msg)
}
