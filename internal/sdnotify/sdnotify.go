// Package sdnotify tells systemd how a daemon is doing, for units of Type=notify:
// READY=1 once it serves, STATUS= lines, STOPPING=1 while it drains, and WATCHDOG=1
// pings at half of WATCHDOG_USEC when the unit sets WatchdogSec. The protocol is
// github.com/coreos/go-systemd's; without NOTIFY_SOCKET (not started by systemd, or
// not Type=notify) every call does nothing.
package sdnotify

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends the notifications.
type Notifier struct {
	log *slog.Logger
}

// New returns a notifier that logs failures to send on log.
func New(log *slog.Logger) *Notifier {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Notifier{log: log}
}

// Ready says the daemon is up (READY=1) and what it does (STATUS=).
func (n *Notifier) Ready(status string) { n.send(daemon.SdNotifyReady, status) }

// Status updates the one-line status systemctl status shows.
func (n *Notifier) Status(status string) { n.send("", status) }

// Stopping says the daemon is shutting down (STOPPING=1) and what it waits for.
func (n *Notifier) Stopping(status string) { n.send(daemon.SdNotifyStopping, status) }

// send writes state and a STATUS= line in one datagram, as systemd reads it.
func (n *Notifier) send(state, status string) {
	var lines []string
	if state != "" {
		lines = append(lines, state)
	}
	if status != "" {
		// One line: a newline would start another assignment.
		lines = append(lines, "STATUS="+strings.ReplaceAll(status, "\n", " "))
	}
	if _, err := daemon.SdNotify(false, strings.Join(lines, "\n")); err != nil {
		n.log.Warn("systemd notification not sent", "state", strings.Join(lines, " "), "err", err)
	}
}

// Watchdog pings systemd's watchdog at half of WATCHDOG_USEC until ctx ends; it
// returns at once when the unit has no watchdog (or it is another process's).
func (n *Notifier) Watchdog(ctx context.Context) {
	every, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		n.log.Warn("systemd watchdog: ignoring WATCHDOG_USEC", "err", err)
		return
	}
	if every <= 0 {
		return
	}
	n.log.Info("pinging the systemd watchdog", "every", every/2)
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		n.send(daemon.SdNotifyWatchdog, "")
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
