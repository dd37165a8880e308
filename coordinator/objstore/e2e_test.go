package objstore_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/coordinator/objstore/objstoretest"
	"github.com/fc-ci/fc/storage/storagetest"
)

func TestMain(m *testing.M) { storagetest.Main(m) }

// A real build on a coordinator whose cache and logs are in S3: the S3 server is
// killed while the step builds, so the agent's upload of its output is refused (the
// step is retried, as after any infrastructure failure); once the server is back the
// retry stores the output. No narinfo exists without its object at any time, the
// finished log is an object in the bucket, and both log endpoints serve it.
func TestS3_BuildWhileTheServerIsDownIsRetriedAndItsLogLandsInTheBucket(t *testing.T) {
	t.Parallel()
	srv := objstoretest.Start(t)
	c := coordtest.Start(t, coordtest.Options{Config: func(cfg *config.Config) {
		srv.Configure(cfg, "")
		cfg.Queue.SweepInterval = 1
		cfg.Queue.MaxAttempts = 10 // the retries while the server restarts must not abort the step
	}})
	// The builder (a build user) waits for this file, readable by all.
	gate, err := os.MkdirTemp("", "fc-s3-gate-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(gate) })
	if err := os.Chmod(gate, 0o755); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(gate, "go")
	repo := coordtest.NewRepo(t)
	repo.Commit(map[string]string{"release.nix": fmt.Sprintf(`let
  %s
in {
  big = mk "big" { args = sh "echo building the big one; while [ ! -e %s ]; do sleep 0.1; done; head -c 3000000 /dev/urandom > $out; echo done building"; };
}
`, coordtest.MkLet(coordtest.Salt(t)), marker)})
	_, js := c.Project("s3", repo.Dir, nil)
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "evaluator", Roles: []string{"eval"}})
	coordtest.StartAgent(t, c, coordtest.AgentOptions{Name: "builder"})
	c.Trigger(js, false)
	b := coordtest.BuildsOf(t, c, coordtest.Evaluated(t, c, js, 0))["big"]
	logURL := fmt.Sprintf("%s/api/v1/builds/%d/log", c.URL, b.ID)
	coordtest.Eventually(t, 60*time.Second, "the builder runs", func() bool {
		_, body := coordtest.Get(t, logURL)
		return strings.Contains(body, "building the big one")
	})

	// The watcher: whenever a narinfo names an object, the object is there.
	ctx, stop := context.WithCancel(context.Background())
	var checks atomic.Int64
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for ctx.Err() == nil {
			rows, err := c.DB.Pool().Query(ctx, `SELECT url FROM narinfos n WHERE NOT EXISTS (SELECT 1 FROM small_blobs b WHERE 'nar/' || b.name = n.url)`)
			if err == nil {
				var urls []string
				for rows.Next() {
					var u string
					if rows.Scan(&u) == nil {
						urls = append(urls, u)
					}
				}
				rows.Close()
				for _, u := range urls {
					checks.Add(1)
					if _, err := srv.Client(t).StatObject(ctx, srv.Bucket, u, minio.StatObjectOptions{}); err != nil && ctx.Err() == nil {
						t.Errorf("a narinfo names %s, which is not in the bucket: %v", u, err)
					}
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { stop(); <-watched })

	srv.Kill()
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c.Log.WaitFor(t, 90*time.Second, "upload rejected", "s3://"+srv.Bucket+"/tmp/upload-")
	srv.Restart()
	final := coordtest.WaitBuild(t, c, b.ID, 180*time.Second, "finished", coordtest.Build.Finished)
	if final.Status != "succeeded" {
		t.Fatalf("build %s, want succeeded", final.Status)
	}
	detail := coordtest.GetBuild(t, c, b.ID)
	// The refused upload is sent again by the agent (a storage failure is retryable)
	// or, should S3 stay down longer than those retries, by a later attempt.
	if len(detail.Steps) != 1 || detail.Steps[0].Attempts < 1 {
		t.Fatalf("steps %+v, want one step", detail.Steps)
	}
	out := final.Outputs["out"]
	if code, _ := coordtest.Get(t, c.URL+"/nix-cache/"+strings.TrimPrefix(out, "/nix/store/")[:32]+".narinfo"); code != 200 {
		t.Fatalf("narinfo of the output: %d", code)
	}
	coordtest.Eventually(t, 10*time.Second, "the watcher checked the output's object", func() bool { return checks.Load() > 0 })

	// The succeeded attempt's log is in the bucket, and served from there by both routes.
	prefix := fmt.Sprintf("logs/%d/", detail.Steps[0].ID)
	coordtest.Eventually(t, 60*time.Second, "the finished log in the bucket", func() bool {
		for _, k := range srv.Keys(t, prefix) {
			if strings.HasSuffix(k, ".log.zst") {
				return true
			}
		}
		return false
	})
	// The retry found the output already built, so its log is empty; the API serves it
	// (from the bucket: the local file is gone).
	if matches, _ := filepath.Glob(filepath.Join(c.Cfg.LogDir(), fmt.Sprint(detail.Steps[0].ID), "*.log")); len(matches) > 1 {
		t.Errorf("finished logs still local: %q", matches)
	}
	if code, _ := coordtest.Get(t, logURL); code != 200 {
		t.Errorf("%s: %d", logURL, code)
	}
}
