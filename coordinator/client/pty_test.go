package client_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/fc-ci/fc/coordinator/client"
	"github.com/fc-ci/fc/coordinator/coordtest"
)

// openPTY opens a pseudo-terminal: fc reads the key from term, the test types on ctl.
func openPTY(t *testing.T) (ctl, term *os.File) {
	t.Helper()
	ctl, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	t.Cleanup(func() { ctl.Close() })
	if err := unix.IoctlSetPointerInt(int(ctl.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock the pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(ctl.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	term, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open the pty: %v", err)
	}
	t.Cleanup(func() { term.Close() })
	return ctl, term
}

// testLoginTerminal: on a terminal fc login asks for the key and does not echo it,
// and leaves the terminal echoing again.
func testLoginTerminal(t *testing.T, c *coordtest.Coordinator) {
	ctl, term := openPTY(t)
	home := t.TempDir()
	stdout, stderr := newLines(), newLines()
	done := make(chan int, 1)
	go func() {
		done <- client.Main(context.Background(), client.Env{Args: []string{"login", c.URL},
			Getenv: func(k string) string { return map[string]string{"XDG_CONFIG_HOME": home}[k] },
			Stdin:  term, Stdout: stdout, Stderr: stderr})
	}()
	stderr.waitFor(t, "API key for "+c.URL+": ")
	if _, err := ctl.WriteString(c.Admin + "\n"); err != nil {
		t.Fatal(err)
	}
	if code := <-done; code != 0 {
		t.Fatalf("fc login on a terminal: exit %d, %s", code, stderr.String())
	}
	// Whatever the terminal echoed would be readable on ctl by now.
	fds := []unix.PollFd{{Fd: int32(ctl.Fd()), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, 500); n != 0 || err != nil {
		echoed := make([]byte, 256)
		k, _ := ctl.Read(echoed)
		t.Errorf("the terminal showed %q (%v): the key was echoed", echoed[:k], err)
	}
	if !strings.HasPrefix(stdout.String(), "logged in to "+c.URL) {
		t.Errorf("fc login on a terminal: %q", stdout.String())
	}
	tio, err := unix.IoctlGetTermios(int(term.Fd()), unix.TCGETS)
	if err != nil || tio.Lflag&unix.ECHO == 0 {
		t.Errorf("the terminal does not echo again after fc login: %v", err)
	}
}
