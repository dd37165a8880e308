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
	"unicode/utf8"
)

// seeds adds every recorded payload (testdata/webhooks) to f, with args after it.
func seeds(f *testing.F, args ...any) {
	files, err := filepath.Glob("testdata/webhooks/*.json")
	if err != nil || len(files) == 0 {
		f.Fatalf("no webhook payloads: %v", err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append([]any{b}, args...)...)
	}
}

// FuzzPushPayload feeds push payloads, starting from real GitHub, Gitea, Forgejo and
// GitLab ones (testdata/webhooks), to what the webhook route does with a verified
// body, read as GitHub's (the others' are the same but for GitLab's object_kind and
// project.default_branch). A payload is taken as a push to a branch exactly when it
// is one: its ref is refs/heads/<branch>, a name real git accepts (git
// check-ref-format), and it did not delete the branch; the branch and the default
// branch are the payload's. A body without a ref is not a push (an error, a 400). The
// signature of the body under the secret verifies, and no other does; GitLab's token
// is the secret itself and nothing else. Run it longer with
// go test -run '^$' -fuzz '^FuzzPushPayload$' -fuzztime 60s ./coordinator/evalapi/
func FuzzPushPayload(f *testing.F) {
	seeds(f, "a-very-secret-webhook-key", false)
	f.Add([]byte(`{"ref":"refs/heads/","repository":{"default_branch":""}}`), "s", false)
	f.Add([]byte(`{"ref":"refs/heads/a\u0000b","after":"1"}`), "s", false)
	f.Add([]byte(`{"ref":"refs/heads/x..y"}`), "", false)
	f.Add([]byte(`{"object_kind":"push","ref":"refs/heads/main","project":{"default_branch":"main"}}`), "s", true)
	f.Fuzz(func(t *testing.T, body []byte, secret string, asGitLab bool) {
		s := github
		if asGitLab {
			s = gitlab
		}
		push, ignored, err := parsePush(s, body)
		ok := err == nil && ignored == ""

		// The payload, read on its own.
		var raw struct {
			ObjectKind *string `json:"object_kind"`
			Ref        *string `json:"ref"`
			After      *string `json:"after"`
			Deleted    *bool   `json:"deleted"`
			Repository *struct {
				DefaultBranch *string `json:"default_branch"`
			} `json:"repository"`
			Project *struct {
				DefaultBranch *string `json:"default_branch"`
			} `json:"project"`
		}
		plain := json.Unmarshal(body, &raw) == nil && raw.Ref != nil &&
			(!asGitLab || (raw.ObjectKind != nil && *raw.ObjectKind == "push"))
		if plain != (err == nil) {
			t.Fatalf("%q: error %v, but a push payload with a ref: %v", body, err, plain)
		}
		if err != nil && !strings.Contains(err.Error(), "not a "+s.push+" event") {
			t.Fatalf("error %q does not say the body is not a push", err)
		}
		if !plain {
			return
		}
		branch, isBranch := strings.CutPrefix(*raw.Ref, "refs/heads/")
		deleted := (raw.Deleted != nil && *raw.Deleted) || (raw.After != nil && *raw.After != "" && strings.Trim(*raw.After, "0") == "")
		def := ""
		if d := raw.Repository; !asGitLab && d != nil && d.DefaultBranch != nil {
			def = *d.DefaultBranch
		}
		if d := raw.Project; asGitLab && d != nil && d.DefaultBranch != nil {
			def = *d.DefaultBranch
		}
		if ok && (!isBranch || push.Branch != branch || deleted) {
			t.Fatalf("ref %q (deleted %v) read as %+v", *raw.Ref, deleted, push)
		}
		if ok && push.DefaultBranch != def && (push.DefaultBranch != "" || validRefName("refs/heads/"+def)) {
			t.Fatalf("default branch %q read as %q", def, push.DefaultBranch)
		}
		if !ok && ignored == "" {
			t.Fatal("neither taken nor ignored, and no error")
		}
		if isBranch && !deleted {
			valid := exec.Command("git", "check-ref-format", *raw.Ref).Run() == nil
			if ok != valid {
				t.Fatalf("ref %q: taken %v, git says valid %v", *raw.Ref, ok, valid)
			}
		}
		if ok && !utf8.ValidString(ignored) {
			t.Fatalf("ignored reason %q is not UTF-8", ignored)
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
		if secret != "" && !validToken(secret, secret) {
			t.Fatal("GitLab's token equal to the secret does not verify")
		}
		if validToken(secret, secret+"x") || validToken(secret, "") || (len(secret) > 0 && validToken(secret, secret[1:])) {
			t.Fatal("a wrong GitLab token verifies")
		}
	})
}

// FuzzPullRequestPayload feeds pull request payloads, starting from the recorded
// ones, to each forge's reading of them. Whatever comes in, a pull request taken has
// a number, a full commit id at its head, a base branch git accepts, an action that
// changes what is evaluated, and text PostgreSQL stores (valid UTF-8, no NUL); its
// number and head are the payload's own. Anything else is ignored with a reason or
// refused as not a pull request event.
// go test -run '^$' -fuzz '^FuzzPullRequestPayload$' -fuzztime 60s ./coordinator/evalapi/
func FuzzPullRequestPayload(f *testing.F) {
	seeds(f, uint8(0))
	f.Add([]byte(`{"action":"opened","pull_request":{"number":1,"head":{"sha":"`+strings.Repeat("a", 40)+`"},"base":{"ref":"a..b"}}}`), uint8(0))
	f.Add([]byte(`{"object_kind":"merge_request","object_attributes":{"iid":2,"action":"open","target_branch":"main","last_commit":{"id":"`+strings.Repeat("b", 40)+`"}}}`), uint8(3))
	senders := []sender{github, gitea, forgejo, gitlab}
	f.Fuzz(func(t *testing.T, body []byte, which uint8) {
		s := senders[int(which)%len(senders)]
		ev, ignored, err := parsePull(s, body)
		if err != nil {
			if !strings.Contains(err.Error(), "not a "+s.pull+" event") {
				t.Fatalf("error %q does not say the body is not a pull request event", err)
			}
			return
		}
		if ignored != "" {
			return
		}
		pr := ev.PR
		if pr.Number <= 0 || !commitID.MatchString(pr.HeadSHA) || exec.Command("git", "check-ref-format", "refs/heads/"+pr.BaseBranch).Run() != nil {
			t.Fatalf("took %+v", pr)
		}
		for _, text := range []string{pr.Title, pr.HeadBranch, pr.HeadRepository, ev.DefaultBranch, pr.BaseBranch} {
			if !utf8.ValidString(text) || strings.ContainsRune(text, 0) {
				t.Fatalf("text %q would not store", text)
			}
		}
		var raw struct {
			Number *int64 `json:"number"`
			PR     struct {
				Number *int64 `json:"number"`
				Head   struct {
					SHA string `json:"sha"`
				} `json:"head"`
			} `json:"pull_request"`
			Attrs struct {
				IID        *int64 `json:"iid"`
				LastCommit struct {
					ID string `json:"id"`
				} `json:"last_commit"`
			} `json:"object_attributes"`
		}
		if err := json.Unmarshal(body, &raw); err != nil {
			t.Fatalf("took %q, which does not parse: %v", body, err)
		}
		number, head := raw.PR.Number, raw.PR.Head.SHA
		if s.forgeType == gitlab.forgeType {
			number, head = raw.Attrs.IID, raw.Attrs.LastCommit.ID
		}
		if number == nil || *number != pr.Number || head != pr.HeadSHA {
			t.Fatalf("read %+v from %q", pr, body)
		}
	})
}

// Every webhook sender is complete, and never takes what it acts on for an event to
// ignore.
func TestSenders(t *testing.T) {
	for _, s := range []sender{github, gitea, forgejo, gitlab} {
		if len(s.eventHeaders) == 0 || s.push == "" || s.pull == "" || (len(s.sigHeaders) == 0) == (s.tokenHeader == "") {
			t.Errorf("sender %s is incomplete: %+v", s.name, s)
		}
		if s.known[s.push] || s.known[s.pull] {
			t.Errorf("%s: push or pull request among the ignored events", s.name)
		}
	}
}
