package auth

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Passwords, which people choose and reuse, are stored as argon2id hashes in the PHC
// string format ($argon2id$v=19$m=19456,t=2,p=1$salt$hash), so the parameters travel
// with each hash and can be raised later without breaking stored ones.

// MinPasswordLength and MaxPasswordLength bound a password, in bytes. The maximum only
// keeps hashing cheap to refuse; any passphrase fits.
const (
	MinPasswordLength = 8
	MaxPasswordLength = 1024
)

// ErrBadCredentials is a failed sign-in: an unknown user, a wrong password, a
// disabled account or an unknown API key. Callers must not tell them apart to the
// person signing in.
var ErrBadCredentials = errors.New("wrong username or password")

// The parameters of new hashes: OWASP's argon2id recommendation (19 MiB, 2 passes,
// 1 lane), which costs some 20 ms a hash.
const (
	argonMemoryKiB = 19 * 1024
	argonTime      = 2
	argonThreads   = 1
	argonSaltLen   = 16
	argonKeyLen    = 32
)

// Bounds on the parameters of a stored hash, so a corrupt row cannot make one check
// take gigabytes or minutes.
const (
	maxArgonMemoryKiB = 1 << 20
	maxArgonTime      = 20
)

// CheckPasswordLength is nil when password has an acceptable length, else why not.
func CheckPasswordLength(password string) error {
	switch {
	case len(password) < MinPasswordLength:
		return fmt.Errorf("must be at least %d characters long", MinPasswordLength)
	case len(password) > MaxPasswordLength:
		return fmt.Errorf("must be at most %d bytes long", MaxPasswordLength)
	}
	return nil
}

// HashPassword returns the argon2id hash of password in the PHC string format, with
// a fresh random salt.
func HashPassword(password string) (string, error) {
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("generate password salt: %w", err)
	}
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemoryKiB, argonThreads, argonKeyLen)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemoryKiB, argonTime, argonThreads,
		b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// CheckPassword reports whether password matches hash (a HashPassword result),
// comparing in constant time; a malformed hash is an error.
func CheckPassword(hash, password string) (bool, error) {
	p, err := parseArgon2id(hash)
	if err != nil {
		return false, err
	}
	key := argon2.IDKey([]byte(password), p.salt, p.time, p.memory, p.threads, uint32(len(p.key)))
	return subtle.ConstantTimeCompare(key, p.key) == 1, nil
}

type argonHash struct {
	memory, time uint32
	threads      uint8
	salt, key    []byte
}

// parseArgon2id reads "$argon2id$v=19$m=M,t=T,p=P$salt$key" (unpadded base64).
func parseArgon2id(s string) (argonHash, error) {
	var h argonHash
	bad := func(why string) (argonHash, error) {
		return argonHash{}, fmt.Errorf("malformed argon2id hash: %s", why)
	}
	parts := strings.Split(s, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return bad("not $argon2id$v=..$m=..,t=..,p=..$salt$hash")
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return bad("unsupported version " + parts[2])
	}
	var threads uint32
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &h.memory, &h.time, &threads); err != nil {
		return bad("parameters " + parts[3])
	}
	if h.memory < 8 || h.memory > maxArgonMemoryKiB || h.time < 1 || h.time > maxArgonTime || threads < 1 || threads > 255 {
		return bad("parameters out of range " + parts[3])
	}
	h.threads = uint8(threads)
	var err error
	if h.salt, err = base64.RawStdEncoding.DecodeString(parts[4]); err != nil || len(h.salt) < 8 {
		return bad("salt")
	}
	if h.key, err = base64.RawStdEncoding.DecodeString(parts[5]); err != nil || len(h.key) < 16 || len(h.key) > 64 {
		return bad("hash")
	}
	return h, nil
}
