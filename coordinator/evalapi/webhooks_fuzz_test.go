package evalapi

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzPushPayload feeds push payloads, starting from real GitHub, Gitea and Forgejo
// ones (testdata/webhooks), to what the webhook route does with a verified body. A
// payload is taken as a push to a branch exactly when it is one: its ref is
// refs/heads/<branch>, a name real git accepts (git check-ref-format), and it did not
// delete the branch; the branch and whether it is the default are the payload's. The
// signature of the body under the secret verifies, and no other does. Run it longer
// with go test -run '^$' -fuzz '^FuzzPushPayload$' -fuzztime 60s ./coordinator/evalapi/
func FuzzPushPayload(f *testing.F) {
	files, err := filepath.Glob("testdata/webhooks/*.json")
	if err != nil || len(files) == 0 {
		f.Fatalf("no webhook payloads: %v", err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "a-very-secret-webhook-key")
	}
	f.Add([]byte(`{"ref":"refs/heads/","repository":{"default_branch":""}}`), "s")
	f.Add([]byte(`{"ref":"refs/heads/a\u0000b","after":"1"}`), "s")
	f.Add([]byte(`{"ref":"refs/heads/x..y"}`), "")
	f.Fuzz(func(t *testing.T, body []byte, secret string) {
		push, ok := parsePush(body)

		// The payload, read on its own.
		var raw struct {
			Ref        *string `json:"ref"`
			After      *string `json:"after"`
			Deleted    *bool   `json:"deleted"`
			Repository *struct {
				DefaultBranch *string `json:"default_branch"`
			} `json:"repository"`
		}
		plain := json.Unmarshal(body, &raw) == nil && raw.Ref != nil
		if ok && !plain {
			t.Fatalf("took %q as a push to %q", body, push.Branch)
		}
		if plain {
			branch, isBranch := strings.CutPrefix(*raw.Ref, "refs/heads/")
			deleted := (raw.Deleted != nil && *raw.Deleted) || (raw.After != nil && *raw.After != "" && strings.Trim(*raw.After, "0") == "")
			def := ""
			if raw.Repository != nil && raw.Repository.DefaultBranch != nil {
				def = *raw.Repository.DefaultBranch
			}
			if ok && (!isBranch || push.Branch != branch || push.IsDefault != (branch == def) || deleted) {
				t.Fatalf("ref %q (deleted %v, default %q) read as %+v", *raw.Ref, deleted, def, push)
			}
			if isBranch && !deleted {
				valid := exec.Command("git", "check-ref-format", *raw.Ref).Run() == nil
				if ok != valid {
					t.Fatalf("ref %q: taken %v, git says valid %v", *raw.Ref, ok, valid)
				}
			}
		}

		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write(body)
		sig := mac.Sum(nil)
		if !validSignature(secret, body, hex.EncodeToString(sig)) || !validSignature(secret, body, " "+strings.ToUpper(hex.EncodeToString(sig))+"\n") {
			t.Fatal("the body's own signature does not verify")
		}
		for i := range sig {
			bad := append([]byte(nil), sig...)
			bad[i] ^= 1 << (i % 8)
			if validSignature(secret, body, hex.EncodeToString(bad)) {
				t.Fatalf("a signature with byte %d changed verifies", i)
			}
		}
		if validSignature(secret, body, hex.EncodeToString(sig)+"00") || validSignature(secret, body, "") ||
			validSignature(secret+"x", body, hex.EncodeToString(sig)) {
			t.Fatal("a wrong signature verifies")
		}
	})
}
