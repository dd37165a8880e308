package cache_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"

	agentcli "github.com/fc-ci/fc/agent/cli"
	"github.com/fc-ci/fc/agent/push"
	"github.com/fc-ci/fc/coordinator/cache"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// scope is an in-process cache over a real database, with a jobset whose
// evaluations create steps, for tests of who may upload what.
type scope struct {
	db      *storage.DB
	c       *cache.Cache
	key     signature.SecretKey
	blobs   cache.BlobStore
	jobset  int64
	evalAgt int64
	n       int
}

func newScope(t *testing.T, blobs func(*cache.Dir) cache.BlobStore) *scope {
	t.Helper()
	db := storagetest.New(t)
	dir, err := cache.NewDir(filepath.Join(t.TempDir(), "cache"))
	if err != nil {
		t.Fatal(err)
	}
	key, _, err := cache.LoadOrCreateKey(filepath.Join(t.TempDir(), "key"), "test-1")
	if err != nil {
		t.Fatal(err)
	}
	var store cache.BlobStore = dir
	if blobs != nil {
		store = blobs(dir)
	}
	c, err := cache.New(cache.Config{}, db, store, key)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	p, err := db.CreateProject(ctx, storage.ProjectFields{Name: "p", RepositoryURL: "https://example.org/r.git", Enabled: true})
	if err != nil {
		t.Fatal(err)
	}
	j, err := db.CreateJobset(ctx, p.ID, storage.JobsetFields{Name: "main", NixExpression: "release.nix",
		SchedulingShares: 100, State: storage.JobsetEnabled, KeepNr: 3})
	if err != nil {
		t.Fatal(err)
	}
	s := &scope{db: db, c: c, key: key, blobs: store, jobset: j.ID}
	s.evalAgt = s.agent(t, "evaluator")
	return s
}

// agent registers an agent (no push permission) and returns its id.
func (s *scope) agent(t *testing.T, name string) int64 {
	t.Helper()
	a, err := s.db.RegisterAgent(context.Background(), name, "ssh-ed25519 AAAA"+name, "SHA256:"+name)
	if err != nil {
		t.Fatal(err)
	}
	return a.ID
}

// evaluating gives agent the lease of a running evaluation.
func (s *scope) evaluating(t *testing.T, agent int64) storage.Lease {
	t.Helper()
	ctx := context.Background()
	s.n++
	if _, err := s.db.CreateEvaluation(ctx, storage.NewEvaluation{JobsetID: s.jobset, Commit: fmt.Sprint(s.n), InputsHash: fmt.Sprint(s.n), Trigger: "api"}); err != nil {
		t.Fatal(err)
	}
	l, ok, err := s.db.ClaimEvaluation(ctx, agent, time.Minute)
	if err != nil || !ok {
		t.Fatalf("claim an evaluation: %v %v", ok, err)
	}
	return l
}

// step stores an evaluation with one job building drv into out (ca: its declared
// content address, or ""), and leases the step to agent.
func (s *scope) step(t *testing.T, agent int64, drv, out, ca string) storage.ClaimedStep {
	t.Helper()
	ctx := context.Background()
	l := s.evaluating(t, s.evalAgt)
	node := storage.EvalNode{DrvPath: drv, System: "x86_64-linux", Outputs: map[string]string{"out": out}}
	if ca != "" {
		node.OutputCA = map[string]string{"out": ca}
	}
	o := storage.EvalOutcome{Jobs: []storage.EvalJob{{Attr: "job", DrvPath: drv, System: "x86_64-linux",
		Outputs: map[string]string{"out": out}}}, Nodes: []storage.EvalNode{node}}
	if err := s.db.FinishEvaluation(ctx, l, o); err != nil {
		t.Fatal(err)
	}
	got, err := s.db.ClaimSteps(ctx, storage.AgentSlots{AgentID: agent, Systems: []string{"x86_64-linux"}, N: 1, TTL: time.Minute})
	if err != nil || len(got) != 1 {
		t.Fatalf("claim the step: %v %v", got, err)
	}
	return got[0]
}

// upload sends paths (their NARs from dump, or from the store) as agent.
func (s *scope) upload(agent int64, infos []protocol.PathInfo, dump func(ctx context.Context, p string, w io.Writer) error) (push.Stats, error) {
	return push.Upload(context.Background(), pipeOpener{s.c, agent}, infos, push.Options{Dump: dump})
}

func (s *scope) served(t *testing.T, p string) bool {
	t.Helper()
	_, err := s.db.GetNarinfo(context.Background(), strings.TrimPrefix(p, "/nix/store/")[:32])
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

// forgedNAR is the NAR of one file holding content, and a path info declaring it
// under storePath.
func forgedNAR(t *testing.T, storePath, content string) (protocol.PathInfo, []byte) {
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
	sum := sha256.Sum256(buf.Bytes())
	return protocol.PathInfo{StorePath: storePath, NarHash: "sha256:" + nixbase32.EncodeToString(sum[:]),
		NarSize: int64(buf.Len()), References: []string{}}, buf.Bytes()
}

func dumpBytes(b []byte) func(context.Context, string, io.Writer) error {
	return func(_ context.Context, _ string, w io.Writer) error { _, err := w.Write(b); return err }
}

// built builds a salted derivation writing text to $out and returns its drv and output.
func built(t *testing.T, text string) (drv, out string) {
	t.Helper()
	file := nixFile(t, fmt.Sprintf(`derivation { name = "out-%s"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo %s > $out" ]; }`, salt(t), text))
	return run(t, "nix-instantiate", file), buildTop(t, file)
}

// An agent that holds no lease, or only an evaluation's, cannot put a path into the
// cache (finding: it could, signed, under the output path of a job nobody built).
func TestUpload_AgentWithoutALeaseOrPushPermissionIsRefused(t *testing.T) {
	t.Parallel()
	s := newScope(t, nil)
	attacker := s.agent(t, "attacker")
	// The output path of a job that is queued but that nobody has built.
	_, victim := built(t, "genuine")
	s.step(t, s.agent(t, "builder"), "/nix/store/"+strings.Repeat("1", 32)+"-victim.drv", victim, "")
	forged, data := forgedNAR(t, victim, "forged\n")

	_, err := s.upload(attacker, []protocol.PathInfo{forged}, dumpBytes(data))
	if !errors.Is(err, push.ErrRefused) || !strings.Contains(err.Error(), "may not upload "+victim) ||
		!strings.Contains(err.Error(), "push permission") {
		t.Fatalf("upload without a lease: %v; want a refusal naming the path and the push permission", err)
	}
	// Holding an evaluation's lease allows content-addressed paths only.
	s.evaluating(t, attacker)
	_, err = s.upload(attacker, []protocol.PathInfo{forged}, dumpBytes(data))
	if !errors.Is(err, push.ErrRefused) || !strings.Contains(err.Error(), "content-addressed") {
		t.Fatalf("upload with an evaluation's lease: %v; want a refusal", err)
	}
	if s.served(t, victim) {
		t.Fatal("the forged path is in the cache")
	}
}

// A builder may upload the outputs of the step leased to it; they are neither served
// nor signed until the step's success is recorded, and then they are.
func TestUpload_StepOutputsAreServedOnlyOnceTheSuccessIsRecorded(t *testing.T) {
	t.Parallel()
	s := newScope(t, nil)
	ctx := context.Background()
	builder, other := s.agent(t, "builder"), s.agent(t, "other")
	drv, out := built(t, "genuine")
	st := s.step(t, builder, drv, out, "")
	infos, err := push.PathInfos(ctx, []string{out})
	if err != nil {
		t.Fatal(err)
	}
	// Another agent may not upload it, even while the step runs.
	if _, err := s.upload(other, infos, nil); !errors.Is(err, push.ErrRefused) {
		t.Fatalf("upload by an agent without the lease: %v", err)
	}
	if stats, err := s.upload(builder, infos, nil); err != nil || stats.Sent != 1 {
		t.Fatalf("the builder's upload: sent %d, %v", stats.Sent, err)
	}
	srv := httptest.NewServer(s.c.Handler())
	defer srv.Close()
	narinfoURL := srv.URL + "/" + strings.TrimPrefix(out, "/nix/store/")[:32] + ".narinfo"
	if code, _ := httpGet(t, narinfoURL); code != http.StatusNotFound {
		t.Fatalf("narinfo before the step's success: %d, want 404", code)
	}
	if present, err := s.c.Present(ctx, []string{out}); err != nil || len(present) != 0 {
		t.Fatalf("counted present before the step's success: %v %v", present, err)
	}
	if err := s.db.FinishStep(ctx, st.Lease, storage.StepOutcome{Status: "succeeded"}, s.c.Signer()); err != nil {
		t.Fatal(err)
	}
	code, body := httpGet(t, narinfoURL)
	if code != http.StatusOK {
		t.Fatalf("narinfo after the step's success: %d", code)
	}
	ni, err := narinfo.Parse(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	fp := cache.Fingerprint(ni.StorePath, ni.NarHash.Format(nixhash.NixBase32, true), int64(ni.NarSize), ni.References)
	if !signature.VerifyFirst(fp, ni.Signatures, []signature.PublicKey{s.key.ToPublicKey()}) {
		t.Fatalf("the promoted narinfo is not signed by the cache's key:\n%s", body)
	}
}

// A step that reports success without having uploaded its outputs is not recorded.
func TestFinishStep_OutputsMissingFromTheCacheRecordNothing(t *testing.T) {
	t.Parallel()
	s := newScope(t, nil)
	drv, out := built(t, "genuine")
	st := s.step(t, s.agent(t, "builder"), drv, out, "")
	err := s.db.FinishStep(context.Background(), st.Lease, storage.StepOutcome{Status: "succeeded"}, s.c.Signer())
	if !errors.Is(err, storage.ErrOutputsMissing) || !strings.Contains(err.Error(), out) {
		t.Fatalf("FinishStep: %v; want ErrOutputsMissing naming %s", err, out)
	}
	got, err := s.db.GetStep(context.Background(), st.ID)
	if err != nil || got.Status != "running" {
		t.Fatalf("step after the refused report: %q %v", got.Status, err)
	}
}

// A fixed-output derivation's output is accepted only with the content its
// derivation declares, whoever builds it.
func TestUpload_FixedOutputNeedsTheDeclaredContent(t *testing.T) {
	t.Parallel()
	s := newScope(t, nil)
	ctx := context.Background()
	file := nixFile(t, fmt.Sprintf(`derivation { name = "fixed-%s"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo hello > $out" ]; outputHashMode = "flat"; outputHashAlgo = "sha256";
  outputHash = builtins.hashString "sha256" "hello\n"; }`, salt(t)))
	drv, out := run(t, "nix-instantiate", file), buildTop(t, file)
	infos, err := push.PathInfos(ctx, []string{out})
	if err != nil {
		t.Fatal(err)
	}
	builder := s.agent(t, "builder")
	st := s.step(t, builder, drv, out, infos[0].CA)

	// The builder says nothing of a content address and sends other bytes.
	forged, data := forgedNAR(t, out, "goodbye\n")
	stats, err := s.upload(builder, []protocol.PathInfo{forged}, dumpBytes(data))
	if !errors.Is(err, push.ErrRejected) || len(stats.Rejections) != 1 || !strings.Contains(stats.Rejections[0], "content address") {
		t.Fatalf("forged fixed output: %v %q; want it rejected for its content", err, stats.Rejections)
	}
	if stats, err := s.upload(builder, infos, nil); err != nil || stats.Sent != 1 {
		t.Fatalf("genuine fixed output: sent %d, %v", stats.Sent, err)
	}
	if err := s.db.FinishStep(ctx, st.Lease, storage.StepOutcome{Status: "succeeded"}, s.c.Signer()); err != nil {
		t.Fatal(err)
	}
	n, err := s.db.GetNarinfo(ctx, strings.TrimPrefix(out, "/nix/store/")[:32])
	if err != nil || n.CA != infos[0].CA {
		t.Fatalf("narinfo CA %q (%v), want %q", n.CA, err, infos[0].CA)
	}
}

// An evaluation uploads its .drv closure: accepted only at the path its content
// makes.
func TestUpload_EvaluationsUploadOnlyWhatTheirContentAddresses(t *testing.T) {
	t.Parallel()
	s := newScope(t, nil)
	ctx := context.Background()
	evaluator := s.agent(t, "eval-only")
	s.evaluating(t, evaluator)
	drv, _ := built(t, "genuine")
	infos, err := push.ClosureInfos(ctx, []string{drv})
	if err != nil {
		t.Fatal(err)
	}
	// The same .drv path with other content: its path info says so honestly (hash
	// and size of the forged bytes) but the content address no longer makes the path.
	var pi protocol.PathInfo
	for _, i := range infos {
		if i.StorePath == drv {
			pi = i
		}
	}
	forged, data := forgedNAR(t, drv, "Derive([],[],[],\"x\",\"/bin/sh\",[],[])")
	forged.CA, forged.References = pi.CA, pi.References
	stats, err := s.upload(evaluator, []protocol.PathInfo{forged}, dumpBytes(data))
	if !errors.Is(err, push.ErrRejected) || len(stats.Rejections) != 1 || !strings.Contains(stats.Rejections[0], "content") {
		t.Fatalf("forged .drv: %v %q; want it rejected for its content", err, stats.Rejections)
	}
	if stats, err := s.upload(evaluator, infos, nil); err != nil || stats.Sent != len(infos) {
		t.Fatalf("genuine .drv closure: sent %d of %d, %v", stats.Sent, len(infos), err)
	}
	if !s.served(t, drv) {
		t.Fatal("the .drv is not served")
	}
}

// blockingCommits holds every commit until released: an upload in flight.
type blockingCommits struct {
	*cache.Dir
	arrived chan struct{}
	release chan struct{}
	once    sync.Once
}

func (b *blockingCommits) SyncAll(ws []cache.BlobWriter) error {
	b.once.Do(func() { close(b.arrived) })
	<-b.release
	return b.Dir.SyncAll(ws)
}

// Revoking an agent refuses an upload it has in flight, at its commit; a step's
// lease lost meanwhile does too.
func TestUpload_RevokedOrLeaseLostDuringAnUploadIsRefusedAtCommit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		lose func(s *scope, agent int64, st storage.ClaimedStep) error
		want string
	}{
		{"revoked", func(s *scope, agent int64, _ storage.ClaimedStep) error {
			return s.db.RevokeAgent(context.Background(), agent)
		}, "was revoked"},
		{"lease lost", func(s *scope, _ int64, st storage.ClaimedStep) error {
			return s.db.RetryStep(context.Background(), st.Lease, "lost", storage.LeaseConfig{MaxAttempts: 3})
		}, "no longer holds the lease"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var bc *blockingCommits
			s := newScope(t, func(d *cache.Dir) cache.BlobStore {
				bc = &blockingCommits{Dir: d, arrived: make(chan struct{}), release: make(chan struct{})}
				return bc
			})
			builder := s.agent(t, "builder")
			// 3 MB of random data: a blob in the store, so the commit syncs it.
			file := nixFile(t, fmt.Sprintf(`derivation { name = "big-%s"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "/usr/bin/head -c 3000000 /dev/urandom > $out" ]; }`, salt(t)))
			drv, out := run(t, "nix-instantiate", file), buildTop(t, file)
			st := s.step(t, builder, drv, out, "")
			infos, err := push.PathInfos(context.Background(), []string{out})
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			var stats push.Stats
			go func() {
				var err error
				stats, err = s.upload(builder, infos, nil)
				done <- err
			}()
			<-bc.arrived
			if err := tc.lose(s, builder, st); err != nil {
				t.Fatal(err)
			}
			close(bc.release)
			err = <-done
			if !errors.Is(err, push.ErrRejected) || len(stats.Rejections) != 1 || !strings.Contains(stats.Rejections[0], tc.want) {
				t.Fatalf("upload: %v %q; want it refused: %s", err, stats.Rejections, tc.want)
			}
			var n int
			if err := s.db.Pool().QueryRow(context.Background(), `SELECT count(*) FROM narinfos`).Scan(&n); err != nil || n != 0 {
				t.Fatalf("%d narinfos recorded (%v)", n, err)
			}
		})
	}
}

func buildTop(t *testing.T, file string) string {
	t.Helper()
	return run(t, "nix-build", file, "--no-out-link", "--option", "substituters", "")
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// fc-agent push needs the push permission: without it, it says so and exits non-zero;
// once an admin grants it, the same push goes through.
func TestPush_NeedsThePushPermission(t *testing.T) {
	t.Parallel()
	c := coordtest.Start(t, coordtest.Options{})
	dep := build(t, chain(t), "dep")
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	env := []string{"FC_COORDINATOR__URL=" + c.URL, "FC_AGENT__STATE_DIR=" + dir, "FC_AGENT__NAME=pusher",
		"FC_COORDINATOR__ENROLLMENT_TOKEN=" + c.Token(1, time.Hour)}
	code := agentcli.Main(context.Background(), agentcli.Env{Args: []string{"push", dep}, Environ: env, Stdout: &stdout, Stderr: &stderr})
	if code == 0 || !strings.Contains(stderr.String(), "may not upload "+dep) || !strings.Contains(stderr.String(), "push permission") {
		t.Fatalf("push without the permission: exit %d\n%s", code, stderr.String())
	}
	if narinfoStatus(t, c, dep) != http.StatusNotFound {
		t.Fatal("the refused path is in the cache")
	}
	var agents struct {
		Items []struct {
			ID   int64  `json:"id"`
			Name string `json:"name"`
		} `json:"items"`
	}
	c.Do("GET", "/api/v1/agents", "", nil, &agents)
	if len(agents.Items) != 1 {
		t.Fatalf("agents: %+v", agents.Items)
	}
	if code := c.Do("PUT", fmt.Sprintf("/api/v1/agents/%d", agents.Items[0].ID), c.Admin, map[string]any{"push": true}, nil); code != 200 {
		t.Fatalf("grant push: %d", code)
	}
	if out, code := agentPushAs(t, c, dir, dep); code != 0 || !strings.Contains(out, "sent "+dep) {
		t.Fatalf("push with the permission: exit %d\n%s", code, out)
	}
	if narinfoStatus(t, c, dep) != http.StatusOK {
		t.Fatal("the pushed path is not served")
	}
}
