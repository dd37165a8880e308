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
		cl, err := push.ReadDrvClosure(context.Background(), drvs, map[string]bool{})
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
