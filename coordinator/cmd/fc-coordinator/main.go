// Command fc-coordinator runs FC's coordinator: REST API, dashboard, evaluation and
// build scheduling, and the binary cache.
package main

import (
	"os"

	"github.com/fc-ci/fc/coordinator/cli"
)

func main() { os.Exit(cli.Run()) }
