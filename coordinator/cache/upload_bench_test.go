package cache_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/agent/push"
	"github.com/fc-ci/fc/coordinator/coordtest"
)

// BenchmarkUploadDrvs10k uploads the .drv files of 10,000 trivial derivations (what
// an evaluation of issue 5's benchmark uploads) over one agent session into a fresh
// coordinator: path infos and contents from the files, then push.Upload. Each iteration has new
// derivations.
func BenchmarkUploadDrvs10k(b *testing.B) {
	c := coordtest.Start(b, coordtest.Options{})
	conn := dialPush(b, c)
	const n = 10000
	var infosTime, uploadTime time.Duration
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		file := nixFile(b, fmt.Sprintf(`builtins.genList (i: derivation { name = "up-${toString i}"; salt = "%s-%d";
  system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo ${toString i} > $out" ]; }) %d`, salt(b), i, n))
		drvs := strings.Fields(run(b, "nix-instantiate", file, "--option", "substituters", ""))
		b.StartTimer()
		start := time.Now()
		cl, err := push.ReadDrvClosure(context.Background(), "", drvs, map[string]bool{})
		if err != nil {
			b.Fatal(err)
		}
		infosTime += time.Since(start)
		start = time.Now()
		st, err := push.Upload(context.Background(), conn, cl.Infos, push.Options{Dump: cl.Dump})
		if err != nil || st.Sent != n {
			b.Fatalf("sent %d of %d: %v", st.Sent, n, err)
		}
		uploadTime += time.Since(start)
	}
	b.ReportMetric(infosTime.Seconds()/float64(b.N), "infos-s/op")
	b.ReportMetric(uploadTime.Seconds()/float64(b.N), "upload-s/op")
}

// BenchmarkUpload200MB uploads one 200 MB path (issue 4's push goal compares
// fc-agent push of such a closure with nix copy; see scripts/bench-cache) over one
// agent session into a fresh coordinator each iteration: random data (sent as a plain
// NAR), and bytes of the files under /usr/lib (compressible: sent as zstd).
func BenchmarkUpload200MB(b *testing.B) {
	b.Run("random", func(b *testing.B) {
		benchmarkUpload(b, "/usr/bin/head -c 200000000 /dev/urandom > $out")
	})
	b.Run("lib", func(b *testing.B) {
		benchmarkUpload(b, "/usr/bin/find /usr/lib -type f -size +8k -print0 | /usr/bin/sort -z | /usr/bin/xargs -0 /bin/cat 2>/dev/null | "+
			"/usr/bin/head -c 200000000 > $out")
	})
}

func benchmarkUpload(b *testing.B, script string) {
	file := nixFile(b, fmt.Sprintf(`derivation { name = "big-%s"; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" %q ]; }`, salt(b), script))
	p := run(b, "nix-build", file, "--no-out-link", "--option", "substituters", "")
	infos, err := push.PathInfos(context.Background(), []string{p})
	if err != nil {
		b.Fatal(err)
	}
	var total time.Duration
	for b.Loop() {
		b.StopTimer()
		c := coordtest.Start(b, coordtest.Options{})
		conn := dialPush(b, c)
		b.StartTimer()
		start := time.Now()
		if st, err := push.Upload(context.Background(), conn, infos, push.Options{}); err != nil || st.Sent != 1 {
			b.Fatalf("sent %d: %v", st.Sent, err)
		}
		total += time.Since(start)
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "upload-s/op")
	b.ReportMetric(200/(total.Seconds()/float64(b.N)), "MB/s")
}
