package buildqueue_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"

	agentcli "github.com/fc-ci/fc/agent/cli"
	agentconfig "github.com/fc-ci/fc/agent/config"
	"github.com/fc-ci/fc/agent/push"
	"github.com/fc-ci/fc/agent/session"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/protocol"
)

// enrolledPush opens a push session as a freshly enrolled agent: an ordinary agent an
// admin gave a token to, nothing more.
func enrolledPush(t *testing.T, c *coordtest.Coordinator, name string) *session.Conn {
	t.Helper()
	cfg := agentconfig.Defaults()
	cfg.Coordinator.URL = c.URL
	cfg.Coordinator.EnrollmentToken = c.Token(1, time.Hour)
	cfg.Agent.StateDir = t.TempDir()
	cfg.Agent.Name = name
	sc, err := agentcli.SessionConfig(cfg, slog.New(slog.DiscardHandler), 0)
	if err != nil {
		t.Fatal(err)
	}
	sc.Purpose = protocol.PurposePush
	conn, err := session.Dial(context.Background(), sc, session.State{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// fileNAR is the NAR of one regular file holding content.
func fileNAR(t *testing.T, content string) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := nar.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(content))}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, content); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// An ordinary enrolled agent cannot put a forged output of a job into the signed cache
// (it could: the narinfo was signed, and the job then ended succeeded with no step);
// the job is built for real. A build product naming a path outside the step's own
// outputs is dropped, and the step says so.
func TestTrust_AnAgentWithoutWorkCannotForgeAJobsOutput(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	s := coordtest.Salt(t)
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf(`let
  %s
in rec {
  victim = mk "victim" { args = sh "echo genuine > $out"; };
  leaky = mk "leaky" { args = sh ''
    mkdir -p $out/nix-support
    echo mine > $out/mine.txt
    echo "file doc $out/mine.txt" > $out/nix-support/hydra-build-products
    echo "file secret ${victim}" >> $out/nix-support/hydra-build-products
  ''; };
}`, coordtest.MkLet(s))})
	victim := strings.Trim(strings.TrimSpace(runOut(t, "nix-instantiate", "--eval", "--strict", "-E",
		fmt.Sprintf("(import %s).victim.outPath", filepath.Join(repo.Dir, "release.nix")))), `"`)

	// The attacker uploads other content under the victim's output path, before
	// anybody built it.
	forged := fileNAR(t, "forged\n")
	sum := sha256.Sum256(forged)
	info := protocol.PathInfo{StorePath: victim, NarHash: "sha256:" + nixbase32.EncodeToString(sum[:]),
		NarSize: int64(len(forged)), References: []string{}}
	conn := enrolledPush(t, c, "attacker")
	_, err := push.Upload(context.Background(), conn, []protocol.PathInfo{info}, push.Options{
		Dump: func(_ context.Context, _ string, w io.Writer) error { _, err := w.Write(forged); return err }})
	if err == nil {
		t.Fatal("an agent holding no lease uploaded a job's output path")
	}
	if !strings.Contains(err.Error(), "may not upload") {
		t.Errorf("refusal does not say why: %v", err)
	}
	narinfoURL := c.URL + "/nix-cache/" + strings.TrimPrefix(victim, "/nix/store/")[:32] + ".narinfo"
	if code, _ := coordtest.Get(t, narinfoURL); code != 404 {
		t.Fatalf("the forged path's narinfo: %d, want 404", code)
	}

	_, js := c.Project("trust", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "worker", Roles: []string{"eval", "build"}})
	c.Trigger(js, false)
	bs := coordtest.BuildsOf(t, c, coordtest.Evaluated(t, c, js, 0))
	v := coordtest.WaitBuild(t, c, bs["victim"].ID, 120*time.Second, "finished", coordtest.Build.Finished)
	if v.Status != "succeeded" || len(v.Steps) == 0 {
		t.Fatalf("victim: %s with %d steps, want succeeded by a step of its own", v.Status, len(v.Steps))
	}
	code, body := coordtest.Get(t, narinfoURL)
	if code != 200 {
		t.Fatalf("victim's narinfo after the build: %d", code)
	}
	ni, err := narinfo.Parse(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	genuine := runOut(t, "nix-store", "-q", "--hash", victim) // the agent built it in this store
	if got := ni.NarHash.Format(nixhash.NixBase32, true); got != strings.TrimSpace(genuine) {
		t.Fatalf("the cache serves %s for the victim, the genuine NAR is %s", got, genuine)
	}

	l := coordtest.WaitBuild(t, c, bs["leaky"].ID, 120*time.Second, "finished", coordtest.Build.Finished)
	if l.Status != "succeeded" || len(l.Products) != 1 || !strings.HasSuffix(l.Products[0].Path, "/mine.txt") {
		t.Fatalf("leaky: %s, products %+v; want only its own file", l.Status, l.Products)
	}
	if len(l.Steps) == 0 || !strings.Contains(l.Steps[0].Error, "outside the step's outputs: "+victim) {
		t.Errorf("leaky's step does not say which product was dropped: %+v", l.Steps)
	}
}

func runOut(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return string(out)
}
