package auth_test

import (
	"encoding/base64"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/crypto/argon2"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/storage"
)

var phc = regexp.MustCompile(`^\$argon2id\$v=19\$m=19456,t=2,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$`)

func TestPassword_HashIsArgon2idPHCAndChecks(t *testing.T) {
	t.Parallel()
	h1, err := auth.HashPassword("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	h2, _ := auth.HashPassword("correct horse")
	if !phc.MatchString(h1) {
		t.Fatalf("hash %q is not an argon2id PHC string with the expected parameters", h1)
	}
	if h1 == h2 {
		t.Error("two hashes of one password are equal: no fresh salt")
	}
	for _, c := range []struct {
		password string
		want     bool
	}{{"correct horse", true}, {"correct horse ", false}, {"Correct horse", false}, {"", false}} {
		if ok, err := auth.CheckPassword(h1, c.password); err != nil || ok != c.want {
			t.Errorf("check %q: %v %v, want %v", c.password, ok, err, c.want)
		}
	}
	// A hash made with other parameters checks with its own: they travel with it.
	salt := []byte("some salt, 16 b.")
	key := argon2.IDKey([]byte("password"), salt, 1, 64, 2, 32)
	other := fmt.Sprintf("$argon2id$v=19$m=64,t=1,p=2$%s$%s", base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
	if ok, err := auth.CheckPassword(other, "password"); err != nil || !ok {
		t.Errorf("check against a hash with other parameters: %v %v", ok, err)
	}
	if ok, err := auth.CheckPassword(other, "passwore"); err != nil || ok {
		t.Errorf("a wrong password against a hash with other parameters: %v %v", ok, err)
	}
}

func TestPassword_MalformedHashesAreErrors(t *testing.T) {
	t.Parallel()
	good, _ := auth.HashPassword("whatever1")
	parts := strings.Split(good, "$")
	for _, h := range []string{
		"",
		"plain",
		"$argon2i$v=19$m=19456,t=2,p=1$" + parts[4] + "$" + parts[5],
		"$argon2id$v=16$m=19456,t=2,p=1$" + parts[4] + "$" + parts[5],
		"$argon2id$v=19$m=99999999,t=2,p=1$" + parts[4] + "$" + parts[5], // too much memory
		"$argon2id$v=19$m=19456,t=999,p=1$" + parts[4] + "$" + parts[5],  // too many passes
		"$argon2id$v=19$m=19456,t=2,p=0$" + parts[4] + "$" + parts[5],
		"$argon2id$v=19$m=19456,t=2,p=1$!!!$" + parts[5],
		"$argon2id$v=19$m=19456,t=2,p=1$" + parts[4] + "$c2hvcnQ",
	} {
		if ok, err := auth.CheckPassword(h, "whatever1"); err == nil || ok {
			t.Errorf("hash %q: %v %v, want an error", h, ok, err)
		}
	}
}

func TestPassword_Length(t *testing.T) {
	t.Parallel()
	if auth.CheckPasswordLength("1234567") == nil {
		t.Error("7 characters accepted")
	}
	if err := auth.CheckPasswordLength("12345678"); err != nil {
		t.Errorf("8 characters: %v", err)
	}
	if auth.CheckPasswordLength(strings.Repeat("x", auth.MaxPasswordLength+1)) == nil {
		t.Error("an over-long password accepted")
	}
}

// ManagesProject: a create-projects user manages the projects that user owns, and no
// others (not another user's, not a key's with the same id); admins manage all.
func TestManagesProject_UserOwners(t *testing.T) {
	t.Parallel()
	id := func(n int64) *int64 { return &n }
	user := func(role string, uid int64) auth.Principal { return auth.Principal{UserID: uid, Role: role} }
	key := func(role string, kid int64) auth.Principal { return auth.Principal{KeyID: kid, Role: role} }
	for _, c := range []struct {
		name      string
		who       auth.Principal
		ownerKey  *int64
		ownerUser *int64
		want      bool
	}{
		{"owning user", user(storage.RoleCreateProjects, 7), nil, id(7), true},
		{"another user", user(storage.RoleCreateProjects, 8), nil, id(7), false},
		{"owning user without the role", user(storage.RoleEvalJobset, 7), nil, id(7), false},
		{"read-only owning user", user(storage.RoleReadOnly, 7), nil, id(7), false},
		{"admin user", user(storage.RoleAdmin, 9), nil, id(7), true},
		{"a key with the user's id", key(storage.RoleCreateProjects, 7), nil, id(7), false},
		{"a user with the key's id", user(storage.RoleCreateProjects, 5), id(5), nil, false},
		{"owning key", key(storage.RoleCreateProjects, 5), id(5), nil, true},
		{"no owner", user(storage.RoleCreateProjects, 7), nil, nil, false},
	} {
		if got := auth.ManagesProject(c.who, c.ownerKey, c.ownerUser); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	// The two-argument form (key owners only) still works.
	if !auth.ManagesProject(key(storage.RoleCreateProjects, 5), id(5)) || auth.ManagesProject(user(storage.RoleCreateProjects, 5), id(5)) {
		t.Error("ManagesProject with a key owner only")
	}
}
