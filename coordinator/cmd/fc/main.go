// Command fc is FC's command-line client: it talks to a coordinator's REST API.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/fc-ci/fc/coordinator/client"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := client.Main(ctx, client.Env{Args: os.Args[1:], Getenv: os.Getenv, Stdin: os.Stdin,
		Stdout: os.Stdout, Stderr: os.Stderr})
	stop()
	os.Exit(code)
}
