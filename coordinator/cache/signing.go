// Signing: the cache's key, loaded or created, and the signatures it makes.

package cache

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"

	"github.com/fc-ci/fc/storage"
)

// LoadOrCreateKey reads the signing key (Nix's "name:base64" secret key format), or
// creates it with name when the file does not exist.
func LoadOrCreateKey(path, name string) (signature.SecretKey, bool, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		sk, err := signature.LoadSecretKey(strings.TrimSpace(string(b)))
		if err != nil {
			return signature.SecretKey{}, false, fmt.Errorf("cache signing key %s: %w", path, err)
		}
		return sk, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return signature.SecretKey{}, false, fmt.Errorf("cache signing key: %w", err)
	}
	sk, _, err := signature.GenerateKeypair(name, rand.Reader)
	if err != nil {
		return signature.SecretKey{}, false, fmt.Errorf("generate cache signing key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return signature.SecretKey{}, false, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return signature.SecretKey{}, false, fmt.Errorf("write cache signing key: %w", err)
	}
	if _, err := f.WriteString(sk.String() + "\n"); err != nil {
		f.Close()
		return signature.SecretKey{}, false, err
	}
	return sk, true, f.Close()
}

// Fingerprint is what Nix signs and verifies for a path:
// 1;<store path>;<nar hash>;<nar size>;<full reference paths, sorted, comma-joined>.
// go-nix's NarInfo.Fingerprint does not sort the references; Nix does.
func Fingerprint(storePath, narHash string, narSize int64, refBasenames []string) string {
	refs := make([]string, len(refBasenames))
	for i, r := range refBasenames {
		refs[i] = "/nix/store/" + r
	}
	slices.Sort(refs)
	return "1;" + storePath + ";" + narHash + ";" + strconv.FormatInt(narSize, 10) + ";" + strings.Join(refs, ",")
}

// sign is the cache's signature (name:base64) of the path n describes: what Nix
// checks against the key clients trust.
func (c *Cache) sign(n storage.Narinfo) (string, error) {
	sig, err := c.key.Sign(nil, Fingerprint(n.StorePath, n.NarHash, n.NarSize, n.References))
	if err != nil {
		return "", fmt.Errorf("sign %s: %w", n.StorePath, err)
	}
	return sig.String(), nil
}

// Signer signs a step's outputs when its success is recorded (storage.FinishStep).
func (c *Cache) Signer() storage.Signer { return c.sign }
