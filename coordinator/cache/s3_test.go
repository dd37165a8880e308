package cache_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/fc-ci/fc/agent/push"
	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/coordinator/objstore/objstoretest"
	"github.com/fc-ci/fc/storage"
)

// s3Coordinator runs a coordinator whose cache and logs are in the bucket of srv,
// under prefix; redirect sets cache.redirect.
func s3Coordinator(t *testing.T, srv *objstoretest.Server, prefix string, redirect bool, db *storage.DB) *coordtest.Coordinator {
	t.Helper()
	return coordtest.Start(t, coordtest.Options{DB: db, Config: func(cfg *config.Config) {
		srv.Configure(cfg, prefix)
		cfg.Cache.Redirect = redirect
	}})
}

// narURL is the blob URL (nar/<file>) of a path's narinfo, and whether it is kept in
// PostgreSQL rather than the blob store.
func narURL(t *testing.T, c *coordtest.Coordinator, storePath string) (url string, small bool) {
	t.Helper()
	if err := c.DB.Pool().QueryRow(context.Background(), `SELECT n.url, EXISTS (SELECT 1 FROM small_blobs b WHERE 'nar/' || b.name = n.url)
		FROM narinfos n WHERE n.store_path = $1`, storePath).Scan(&url, &small); err != nil {
		t.Fatalf("narinfo of %s: %v", storePath, err)
	}
	return url, small
}

// NARs pushed to a coordinator whose cache is in S3 are stored as objects (none left
// under tmp/), substituted by real Nix clients into empty stores both streamed through
// the coordinator and by redirect to presigned URLs, and deleted by retention.
func TestS3_PushServeStreamedAndRedirectedThenRetentionDeletesTheObjects(t *testing.T) {
	t.Parallel()
	srv := objstoretest.Start(t)
	c := s3Coordinator(t, srv, "fc/", false, nil)
	file := chain(t)
	top, dep := build(t, file, "top"), build(t, file, "dep")
	if out, code := agentPush(t, c, t.TempDir(), top); code != 0 {
		t.Fatalf("push exit %d:\n%s", code, out)
	}
	// dep (3 MB) is an object; top (a line) lives in PostgreSQL with its narinfo.
	url, small := narURL(t, c, dep)
	if small {
		t.Fatalf("dep's blob %s is in PostgreSQL, want S3", url)
	}
	if keys := srv.Keys(t, "fc/"); len(keys) != 1 || keys[0] != "fc/"+url {
		t.Fatalf("bucket after the push: %q, want only fc/%s (nothing left under fc/tmp/)", keys, url)
	}
	key := c.Cache.PublicKey()

	// Streamed: the coordinator answers the NAR itself.
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(c.URL + "/nix-cache/" + url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength < 3000000 {
		t.Fatalf("streamed NAR: %d, %d bytes", resp.StatusCode, resp.ContentLength)
	}
	got, err := emptyStore(t, fmt.Sprintf("nix-store --realise %s %s && wc -c < %s/zeros && cat %s", top, substituteFlags(c, key), dep, top))
	if err != nil || !strings.Contains(got, "3000000") || !strings.Contains(got, dep) {
		t.Fatalf("nix-store --realise from the streaming coordinator: %v\n%s", err, got)
	}

	// Redirected: a second coordinator on the same database and bucket answers 302 to
	// a presigned URL on the S3 server, which Nix follows.
	r := s3Coordinator(t, srv, "fc/", true, c.DB)
	resp, err = noFollow.Get(r.URL + "/nix-cache/" + url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusFound || !strings.HasPrefix(loc, "http://"+srv.Endpoint+"/"+srv.Bucket+"/fc/"+url+"?") ||
		!strings.Contains(loc, "X-Amz-Signature=") {
		t.Fatalf("redirecting coordinator: %d, Location %q", resp.StatusCode, loc)
	}
	// The small blob has no object: it is served, not redirected.
	smallURL, _ := narURL(t, c, top)
	if resp, err = noFollow.Get(r.URL + "/nix-cache/" + smallURL); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("small blob from the redirecting coordinator: %d, want 200", resp.StatusCode)
	}
	got, err = emptyStore(t, fmt.Sprintf("nix --extra-experimental-features nix-command copy --from %s/nix-cache --option trusted-public-keys '%s' %s && wc -c < %s/zeros",
		r.URL, key, top, dep))
	if err != nil || !strings.Contains(got, "3000000") {
		t.Fatalf("nix copy --from the redirecting coordinator: %v\n%s", err, got)
	}
	got, err = emptyStore(t, fmt.Sprintf("nix-store --realise %s %s && wc -c < %s/zeros", top,
		strings.Replace(substituteFlags(c, key), c.URL, r.URL, 1), dep))
	if err != nil || !strings.Contains(got, "3000000") {
		t.Fatalf("nix-store --realise from the redirecting coordinator: %v\n%s", err, got)
	}

	// Retention: both paths expire; the object goes, and so do the narinfos.
	ctx := context.Background()
	if _, err := c.DB.Pool().Exec(ctx, `UPDATE narinfos SET created_at = now() - interval '40 days'`); err != nil {
		t.Fatal(err)
	}
	rep, err := c.Cache.GC(ctx, 30*24*time.Hour, false)
	if err != nil || len(rep.Paths) != 2 || rep.Blobs != 2 {
		t.Fatalf("retention: %+v %v; want both paths and both blobs", rep, err)
	}
	if keys := srv.Keys(t, "fc/"); len(keys) != 0 {
		t.Fatalf("bucket after retention: %q, want empty", keys)
	}
	if code := narinfoStatus(t, c, dep); code != http.StatusNotFound {
		t.Fatalf("narinfo after retention: %d", code)
	}
	if resp, err = noFollow.Get(r.URL + "/nix-cache/" + url); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("NAR after retention from the redirecting coordinator: %d, want 404", resp.StatusCode)
	}
}

// A corrupted upload never reaches nar/: rejected, its temporary object deleted, and
// nothing served; the genuine upload then works.
func TestS3_CorruptedUploadIsRejectedAndNeverServed(t *testing.T) {
	t.Parallel()
	srv := objstoretest.Start(t)
	c := s3Coordinator(t, srv, "", false, nil)
	dep := build(t, chain(t), "dep")
	infos, err := push.PathInfos(context.Background(), []string{dep})
	if err != nil {
		t.Fatal(err)
	}
	conn := dialPush(t, c)
	flipped := false
	bad := &tamper{conn: conn, apply: func(off int64, p []byte) []byte {
		if !flipped && off > 200_000 && len(p) > 100 {
			p[len(p)/2] ^= 0x10
			flipped = true
		}
		return p
	}}
	st, err := push.Upload(context.Background(), bad, infos, push.Options{})
	if err == nil || st.Sent != 0 || !strings.Contains(err.Error(), "NAR hash is sha256:") {
		t.Fatalf("corrupted upload: %+v %v; want it rejected for its hash", st, err)
	}
	if code := narinfoStatus(t, c, dep); code != http.StatusNotFound {
		t.Fatalf("narinfo of the corrupted upload: %d", code)
	}
	coordtest.Eventually(t, 10*time.Second, "no object left of the corrupted upload", func() bool {
		return len(srv.Keys(t, "")) == 0
	})
	if st, err := push.Upload(context.Background(), dialPush(t, c), infos, push.Options{}); err != nil || st.Sent != 1 {
		t.Fatalf("genuine upload after the corrupted one: %+v %v", st, err)
	}
	url, _ := narURL(t, c, dep)
	if keys := srv.Keys(t, ""); len(keys) != 1 || keys[0] != url {
		t.Fatalf("bucket after the genuine upload: %q, want [%s]", keys, url)
	}
}

// The S3 server killed in the middle of an upload: the upload is refused with an
// error naming the object, no narinfo exists without its blob at any time (a
// watcher checks throughout), and once the server is back the same upload succeeds.
func TestS3_ServerRestartedDuringAnUploadRefusesItThenItSucceeds(t *testing.T) {
	t.Parallel()
	srv := objstoretest.Start(t)
	c := s3Coordinator(t, srv, "", false, nil)
	dep := build(t, chain(t), "dep")
	infos, err := push.PathInfos(context.Background(), []string{dep})
	if err != nil {
		t.Fatal(err)
	}
	hash := strings.TrimPrefix(dep, "/nix/store/")[:32]

	// The watcher: whenever dep has a narinfo, its object is in the bucket.
	ctx, stop := context.WithCancel(context.Background())
	var checks, violations atomic.Int64
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for ctx.Err() == nil {
			var url string
			err := c.DB.Pool().QueryRow(ctx, `SELECT url FROM narinfos WHERE hash_part = $1`, hash).Scan(&url)
			if err == nil {
				checks.Add(1)
				if _, err := srv.Client(t).StatObject(ctx, srv.Bucket, url, minio.StatObjectOptions{}); err != nil && ctx.Err() == nil {
					violations.Add(1)
					t.Errorf("narinfo of %s exists but its object %s does not: %v", dep, url, err)
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { stop(); <-watched })

	// Kill the server once a few hundred kB of the NAR have gone out.
	killed := false
	cut := &tamper{conn: dialPush(t, c), apply: func(off int64, p []byte) []byte {
		if !killed && off > 300_000 {
			srv.Kill()
			killed = true
		}
		return p
	}}
	st, err := push.Upload(context.Background(), cut, infos, push.Options{})
	if !killed {
		t.Fatal("the upload ended before the server was killed")
	}
	if err == nil || st.Sent != 0 || !strings.Contains(err.Error(), "s3://"+srv.Bucket+"/tmp/upload-") {
		t.Fatalf("upload while the server is down: %+v %v; want it refused, naming the object", st, err)
	}
	if code := narinfoStatus(t, c, dep); code != http.StatusNotFound {
		t.Fatalf("narinfo after the refused upload: %d, want 404", code)
	}
	// Refused again while the server stays down (no narinfo either).
	if st, err := push.Upload(context.Background(), dialPush(t, c), infos, push.Options{}); err == nil || st.Sent != 0 {
		t.Fatalf("upload with the server down: %+v %v", st, err)
	}

	srv.Restart()
	if st, err := push.Upload(context.Background(), dialPush(t, c), infos, push.Options{}); err != nil || st.Sent != 1 {
		t.Fatalf("upload after the restart: %+v %v", st, err)
	}
	coordtest.Eventually(t, 10*time.Second, "the watcher sees the narinfo with its object", func() bool { return checks.Load() > 0 })
	if violations.Load() != 0 {
		t.Fatalf("%d checks found a narinfo without its object", violations.Load())
	}
	got, err := emptyStore(t, fmt.Sprintf("nix-store --realise %s %s && wc -c < %s/zeros", dep, substituteFlags(c, c.Cache.PublicKey()), dep))
	if err != nil || !strings.Contains(got, "3000000") {
		t.Fatalf("substitute after the restart: %v\n%s", err, got)
	}
}
