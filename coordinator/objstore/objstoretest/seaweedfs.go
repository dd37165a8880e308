// Package objstoretest runs a real S3 server for tests: SeaweedFS (`weed server
// -s3`), on free loopback ports and a temporary directory, with credentials and a
// bucket.
package objstoretest

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/internal/scriptbin"
)

// Server is a SeaweedFS server answering S3 at Endpoint, with one bucket.
type Server struct {
	Endpoint             string // 127.0.0.1:PORT
	Bucket               string
	AccessKey, SecretKey string
	KeyDir               string // access_key and secret_key files

	t    testing.TB
	bin  string
	args []string
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	logs *logBuffer
}

// Binary is the weed binary, built by scripts/seaweedfs (from the Go module proxy
// into a cache kept between runs, several minutes the first time) when missing. A
// test that needs it fails, never skips, when it cannot be had.
func Binary(t testing.TB) string {
	t.Helper()
	return scriptbin.Path(t, "seaweedfs", "SeaweedFS (the S3 server of these tests)")
}

// freePorts are n distinct TCP ports free on loopback now, each below 55000 (SeaweedFS
// derives gRPC ports by adding 10000 where a flag does not set one).
func freePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for len(ports) < n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		if p := ln.Addr().(*net.TCPAddr).Port; p < 55000 {
			ports = append(ports, p)
		}
	}
	return ports
}

// Start runs SeaweedFS until the test ends, and makes the bucket "fc-test".
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, bin: Binary(t), Bucket: "fc-test", AccessKey: "fc-test-access", SecretKey: "fc-test-secret-" + strconv.Itoa(os.Getpid()),
		KeyDir: t.TempDir(), logs: &logBuffer{}}
	dir := t.TempDir()
	identities := `{"identities":[{"name":"fc","credentials":[{"accessKey":"` + s.AccessKey + `","secretKey":"` + s.SecretKey +
		`"}],"actions":["Admin","Read","Write","List","Tagging"]}]}`
	for name, v := range map[string]string{"access_key": s.AccessKey, "secret_key": s.SecretKey, "s3.json": identities} {
		if err := os.WriteFile(filepath.Join(s.KeyDir, name), []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p := freePorts(t, 8)
	s.Endpoint = "127.0.0.1:" + strconv.Itoa(p[0])
	s.args = []string{"server", "-dir=" + dir, "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
		"-master.port=" + strconv.Itoa(p[1]), "-master.port.grpc=" + strconv.Itoa(p[2]),
		"-volume.port=" + strconv.Itoa(p[3]), "-volume.port.grpc=" + strconv.Itoa(p[4]),
		"-filer.port=" + strconv.Itoa(p[5]), "-filer.port.grpc=" + strconv.Itoa(p[6]),
		"-s3", "-s3.port=" + strconv.Itoa(p[0]), "-s3.port.grpc=" + strconv.Itoa(p[7]),
		"-s3.config=" + filepath.Join(s.KeyDir, "s3.json"), "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64", "-volume.max=20"}
	s.start()
	t.Cleanup(func() {
		s.Kill()
		if t.Failed() {
			t.Logf("SeaweedFS output (tail):\n%s", s.logs.tail(4000))
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		err := s.Client(t).MakeBucket(ctx, s.Bucket, minio.MakeBucketOptions{})
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("SeaweedFS did not make bucket %s at %s: %v\n%s", s.Bucket, s.Endpoint, err, s.logs.tail(4000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	return s
}

func (s *Server) start() {
	s.mu.Lock()
	defer s.mu.Unlock()
	cmd := exec.Command(s.bin, s.args...)
	cmd.Stdout, cmd.Stderr = s.logs, s.logs
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start SeaweedFS: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done
}

// Kill stops the server at once (SIGKILL) and waits for it to exit.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Restart starts the killed server again on the same ports and data, and waits until
// it answers S3 with the bucket.
func (s *Server) Restart() {
	s.t.Helper()
	s.start()
	s.WaitReady()
}

// readyProbe is the object WaitReady writes and removes.
const readyProbe = ".fc-ready-probe"

// WaitReady waits until the server lists the bucket and stores an object in it.
func (s *Server) WaitReady() {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for {
		_, err := s.Client(s.t).BucketExists(ctx, s.Bucket)
		if err == nil {
			// The filer can answer before the volume server has re-registered.
			if err = s.Client(s.t).MakeBucket(ctx, s.Bucket, minio.MakeBucketOptions{}); err != nil {
				if r := minio.ToErrorResponse(err); r.Code == "BucketAlreadyOwnedByYou" || r.Code == "BucketAlreadyExists" {
					err = nil
				}
			}
		}
		if err == nil {
			// After a restart the master may still be electing itself leader (a busy
			// machine took seconds): listing works, writes fail until it has.
			_, err = s.Client(s.t).PutObject(ctx, s.Bucket, readyProbe, bytes.NewReader([]byte("ok")), 2, minio.PutObjectOptions{})
			if err == nil {
				err = s.Client(s.t).RemoveObject(ctx, s.Bucket, readyProbe, minio.RemoveObjectOptions{})
			}
		}
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			s.t.Fatalf("SeaweedFS at %s did not come back: %v\n%s", s.Endpoint, err, s.logs.tail(4000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Client is a minio-go client with the server's credentials, retrying nothing.
func (s *Server) Client(t testing.TB) *minio.Client {
	c, err := minio.New(s.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(s.AccessKey, s.SecretKey, ""), Region: "us-east-1", MaxRetries: 1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Keys lists the bucket's keys that begin with prefix, sorted.
func (s *Server) Keys(t testing.TB, prefix string) []string {
	t.Helper()
	var keys []string
	for o := range s.Client(t).ListObjects(context.Background(), s.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			t.Fatalf("list s3://%s/%s: %v", s.Bucket, prefix, o.Err)
		}
		keys = append(keys, o.Key)
	}
	sort.Strings(keys)
	return keys
}

// Configure points a coordinator's cache and logs at the server's bucket, under prefix.
func (s *Server) Configure(cfg *config.Config, prefix string) {
	cfg.Cache.Store, cfg.Logs.Store = config.StoreS3, config.StoreS3
	cfg.S3 = config.S3{Endpoint: s.Endpoint, Bucket: s.Bucket, Region: "us-east-1", Prefix: prefix,
		AccessKeyFile: filepath.Join(s.KeyDir, "access_key"), SecretKeyFile: filepath.Join(s.KeyDir, "secret_key")}
}

// logBuffer keeps the server's output for a failing test.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.String()
	return s[max(0, len(s)-n):]
}
