package coordtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/fc-ci/fc/internal/scriptbin"
)

// Mailpit is a real SMTP server run for a test (mailpit), with its HTTP API to read
// what it received.
type Mailpit struct {
	Host string // 127.0.0.1
	Port int    // SMTP
	API  string // http://127.0.0.1:PORT
}

// MailpitOptions configure the server.
type MailpitOptions struct {
	// Username and Password, when set, are the only credentials it accepts (PLAIN;
	// without TLS when no certificate is set).
	Username, Password string
	// CertFile and KeyFile, when set, offer STARTTLS with them, and require it.
	CertFile, KeyFile string
}

// MailpitBinary is the mailpit binary, installed by scripts/mailpit (go install from
// the module proxy into a cache kept between runs) when missing. A test that needs
// it fails, never skips, when it cannot be had.
func MailpitBinary(t testing.TB) string {
	t.Helper()
	return scriptbin.Path(t, "mailpit", "mailpit (the tests' SMTP server)")
}

// StartMailpit runs mailpit on loopback ports until the test ends.
func StartMailpit(t testing.TB, opts MailpitOptions) *Mailpit {
	t.Helper()
	bin := MailpitBinary(t)
	smtpPort, apiPort := freePort(t), freePort(t)
	dir := t.TempDir()
	args := []string{"--smtp", "127.0.0.1:" + strconv.Itoa(smtpPort), "--listen", "127.0.0.1:" + strconv.Itoa(apiPort),
		"--database", filepath.Join(dir, "mailpit.db"), "--disable-version-check", "--smtp-disable-rdns"}
	if opts.Username != "" {
		hash, err := bcrypt.GenerateFromPassword([]byte(opts.Password), bcrypt.MinCost)
		if err != nil {
			t.Fatal(err)
		}
		auth := filepath.Join(dir, "smtp-auth")
		if err := os.WriteFile(auth, []byte(opts.Username+":"+string(hash)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--smtp-auth-file", auth)
		if opts.CertFile == "" {
			args = append(args, "--smtp-auth-allow-insecure")
		}
	}
	if opts.CertFile != "" {
		args = append(args, "--smtp-tls-cert", opts.CertFile, "--smtp-tls-key", opts.KeyFile, "--smtp-require-starttls")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, args...)
	logs := &LogBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start mailpit: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cancel(); <-exited })
	m := &Mailpit{Host: "127.0.0.1", Port: smtpPort, API: "http://127.0.0.1:" + strconv.Itoa(apiPort)}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(m.API + "/api/v1/messages")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return m
			}
		}
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			t.Fatalf("mailpit exited (%v):\n%s", err, logs.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("mailpit did not answer on %s within 60 s:\n%s", m.API, logs.String())
		}
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// MailAddress is an address as mailpit shows it.
type MailAddress struct {
	Name    string `json:"Name"`
	Address string `json:"Address"`
}

// Mail is a message mailpit received.
type Mail struct {
	ID        string        `json:"ID"`
	MessageID string        `json:"MessageID"`
	From      MailAddress   `json:"From"`
	To        []MailAddress `json:"To"`
	Subject   string        `json:"Subject"`
	Text      string        `json:"Text"`
}

// Recipients are the addresses the message went to.
func (m Mail) Recipients() []string {
	var out []string
	for _, a := range m.To {
		out = append(out, a.Address)
	}
	return out
}

// Messages lists the messages received, newest first, with their text.
func (m *Mailpit) Messages(t testing.TB) []Mail {
	t.Helper()
	var list struct {
		Messages []Mail `json:"messages"`
	}
	m.get(t, "/api/v1/messages", &list)
	for i := range list.Messages {
		var full Mail
		m.get(t, "/api/v1/message/"+list.Messages[i].ID, &full)
		list.Messages[i] = full
	}
	return list.Messages
}

// WaitMessages waits until at least n messages were received and returns them.
func (m *Mailpit) WaitMessages(t testing.TB, n int, within time.Duration) []Mail {
	t.Helper()
	var got []Mail
	Eventually(t, within, fmt.Sprintf("%d e-mails at mailpit", n), func() bool {
		got = m.Messages(t)
		return len(got) >= n
	})
	return got
}

func (m *Mailpit) get(t testing.TB, path string, out any) {
	t.Helper()
	resp, err := http.Get(m.API + path)
	if err != nil {
		t.Fatalf("mailpit GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("mailpit GET %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("mailpit GET %s: %v", path, err)
	}
}
