package outbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fc-ci/fc/storage"
)

// Environment of run_command.
const (
	// EnvBuildJSON names the file that holds the finished build's JSON (also on the
	// command's standard input).
	EnvBuildJSON = "FC_BUILD_JSON"
	// EnvDeliveryID is the delivery's id, the same on every attempt.
	EnvDeliveryID = "FC_DELIVERY_ID"
)

// maxCommandOutput bounds what is kept of the command's output for the error.
const maxCommandOutput = 4 << 10

// runCommand runs run_command with the build's JSON on its standard input and in a
// file named by $FC_BUILD_JSON, killing it (and what it started) past the timeout.
// A non-zero exit fails the attempt, with the end of what it printed.
func (o *Outbox) runCommand(ctx context.Context, d storage.Delivery) error {
	if o.cfg.RunCommand == "" {
		return fmt.Errorf("notifications.run_command is no longer set: %w", errPermanent)
	}
	f, err := os.CreateTemp("", "fc-build-*.json")
	if err != nil {
		return fmt.Errorf("run_command: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(d.Payload); err != nil {
		f.Close()
		return fmt.Errorf("run_command: write %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("run_command: write %s: %w", f.Name(), err)
	}
	ctx, cancel := context.WithTimeout(ctx, o.cfg.RunCommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", o.cfg.RunCommand)
	cmd.Stdin = bytes.NewReader(d.Payload)
	cmd.Env = append(os.Environ(), EnvBuildJSON+"="+f.Name(), EnvDeliveryID+"="+strconv.FormatInt(d.ID, 10))
	out := &tailBuffer{max: maxCommandOutput}
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so the timeout kills whatever the shell started too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	switch {
	case err == nil:
		return nil
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("run_command: killed after %v%s", o.cfg.RunCommandTimeout, out.last())
	}
	return fmt.Errorf("run_command: %w%s", err, out.last())
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

// last is ": " and the last line printed, or "" when nothing was.
func (t *tailBuffer) last() string {
	s := strings.TrimSpace(string(t.b))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if s == "" {
		return ""
	}
	return ": " + truncate(s, 300)
}

// truncate cuts s to at most n bytes on a character boundary, ending in … when cut.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && (s[n]&0xC0) == 0x80 {
		n--
	}
	return s[:n] + "…"
}
