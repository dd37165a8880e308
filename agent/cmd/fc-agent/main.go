// Command fc-agent runs on a builder: it keeps one session to the coordinator,
// evaluates and builds what it is given, streams logs and pushes outputs.
package main

import (
	"os"

	"github.com/fc-ci/fc/agent/cli"
)

func main() { os.Exit(cli.Run()) }
