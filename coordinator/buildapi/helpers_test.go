package buildapi_test

import (
	"testing"

	"github.com/fc-ci/fc/storage/storagetest"
)

// The end-to-end helpers these tests and benchmarks share with buildqueue's are in
// coordinator/coordtest.

func TestMain(m *testing.M) { storagetest.Main(m) }
