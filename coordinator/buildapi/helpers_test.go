package buildapi_test

import (
	"os"
	"testing"

	"github.com/fc-ci/fc/storage/storagetest"
)

// The end-to-end helpers these tests and benchmarks share with buildqueue's are in
// coordinator/coordtest.

func TestMain(m *testing.M) {
	if os.Getenv(lbTailersEnv) != "" { // BenchmarkLogThroughput100's tailers process
		os.Exit(lbTailersMain())
	}
	storagetest.Main(m)
}
