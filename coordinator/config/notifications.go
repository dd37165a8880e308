package config

import (
	"fmt"
	"net/mail"
	"path/filepath"
	"strings"
)

// Notifications is the [notifications] section: the SMTP server that sends
// projects' e-mails, the command run for every finished build, and how deliveries
// (commit statuses, e-mails, webhooks, the command) are retried.
type Notifications struct {
	// SMTPHost is the mail server; empty: no e-mail is sent (deliveries of e-mail
	// fail saying so).
	SMTPHost string `toml:"smtp_host"`
	SMTPPort int    `toml:"smtp_port"`
	// From is the sender's address (FC <ci@example.org>).
	From string `toml:"from"`
	// Username and the file holding the password sign in to the server (PLAIN);
	// both or neither.
	Username     string `toml:"username"`
	PasswordFile string `toml:"password_file"`
	// StartTLS upgrades the connection with STARTTLS before anything else is sent,
	// and refuses a server that cannot.
	StartTLS bool `toml:"starttls"`
	// RunCommand is run by /bin/sh for every finished build, like Hydra's
	// RunCommand: the build's JSON on its standard input and in the file
	// $FC_BUILD_JSON names. Empty: none.
	RunCommand string `toml:"run_command"`
	// RunCommandTimeout is seconds the command may run before it is killed.
	RunCommandTimeout int `toml:"run_command_timeout"`
	// RetryBackoff is seconds before a failed delivery is tried again, doubling with
	// each attempt up to an hour; after MaxAttempts attempts it fails for good.
	RetryBackoff int `toml:"retry_backoff"`
	MaxAttempts  int `toml:"max_attempts"`
	// KeepDays is how long delivered and failed deliveries stay listed.
	KeepDays int `toml:"keep_days"`
}

// notificationDefaults are [notifications]'s compiled defaults.
func notificationDefaults() Notifications {
	return Notifications{SMTPPort: 587, StartTLS: true, RunCommandTimeout: 60, RetryBackoff: 10, MaxAttempts: 10, KeepDays: 30}
}

// validate checks [notifications]; each error names its key.
func (n Notifications) validate() error {
	switch {
	case n.SMTPPort < 1 || n.SMTPPort > 65535:
		return fmt.Errorf("notifications.smtp_port %d is not a TCP port", n.SMTPPort)
	case strings.ContainsAny(n.SMTPHost, " \t\r\n/:") && !strings.HasPrefix(n.SMTPHost, "["):
		return fmt.Errorf("notifications.smtp_host %q must be a host name or address, without a port (set smtp_port)", n.SMTPHost)
	case n.SMTPHost != "" && n.From == "":
		return fmt.Errorf("notifications.from is required with smtp_host (the sender's address)")
	case (n.Username == "") != (n.PasswordFile == ""):
		return fmt.Errorf("notifications.username and notifications.password_file go together: set both or neither")
	case n.PasswordFile != "" && !filepath.IsAbs(n.PasswordFile):
		return fmt.Errorf("notifications.password_file %q must be an absolute path", n.PasswordFile)
	case n.RunCommandTimeout < 1:
		return fmt.Errorf("notifications.run_command_timeout must be >= 1 second")
	case n.RetryBackoff < 1:
		return fmt.Errorf("notifications.retry_backoff must be >= 1 second")
	case n.MaxAttempts < 1:
		return fmt.Errorf("notifications.max_attempts must be >= 1")
	case n.KeepDays < 1:
		return fmt.Errorf("notifications.keep_days must be >= 1")
	}
	if n.From != "" {
		if _, err := mail.ParseAddress(n.From); err != nil {
			return fmt.Errorf("notifications.from %q is not an e-mail address: %w", n.From, err)
		}
	}
	return nil
}
