package sdnotify

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// socket binds a notify socket, points NOTIFY_SOCKET at it and returns its messages.
func socket(t *testing.T) <-chan string {
	dir, err := os.MkdirTemp("", "sdn-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	msgs := make(chan string, 100)
	go func() {
		buf := make([]byte, 1024)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			msgs <- string(buf[:n])
		}
	}()
	return msgs
}

func next(t *testing.T, msgs <-chan string) string {
	t.Helper()
	select {
	case m := <-msgs:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no notification")
		return ""
	}
}

func TestNotifier_StateAndOneStatusLinePerDatagram(t *testing.T) {
	msgs := socket(t)
	n := New(nil)
	n.Ready("serving\non 127.0.0.1:1")
	if m := next(t, msgs); m != "READY=1\nSTATUS=serving on 127.0.0.1:1" {
		t.Errorf("ready: %q", m)
	}
	n.Status("draining")
	if m := next(t, msgs); m != "STATUS=draining" {
		t.Errorf("status: %q", m)
	}
	n.Stopping("")
	if m := next(t, msgs); m != "STOPPING=1" {
		t.Errorf("stopping: %q", m)
	}
}

func TestWatchdog_PingsAtHalfTheIntervalOnlyForItsOwnPID(t *testing.T) {
	msgs := socket(t)
	t.Setenv("WATCHDOG_USEC", "100000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()+1))
	done := make(chan struct{})
	go func() { New(nil).Watchdog(context.Background()); close(done) }()
	select {
	case <-done: // another process's watchdog: nothing to do
	case <-time.After(5 * time.Second):
		t.Fatal("Watchdog kept running for another PID's watchdog")
	}
	select {
	case m := <-msgs:
		t.Fatalf("pinged another process's watchdog: %q", m)
	default:
	}

	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	ctx, cancel := context.WithCancel(context.Background())
	done = make(chan struct{})
	go func() { New(nil).Watchdog(ctx); close(done) }()
	start := time.Now()
	for range 3 {
		if m := next(t, msgs); m != "WATCHDOG=1" {
			t.Fatalf("ping: %q", m)
		}
	}
	// The first ping is at once, the next two 50 ms apart.
	if d := time.Since(start); d < 90*time.Millisecond || d > 2*time.Second {
		t.Errorf("three pings took %v, want about 100 ms", d)
	}
	cancel()
	<-done
}
