package outbox

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"mime"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/smtp"
	"net/textproto"
	"os"
	"strconv"
	"strings"
	"time"
)

// email is an e-mail as the outbox keeps it (its payload).
type email struct {
	To      []string `json:"to"`
	Subject string   `json:"subject"`
	Body    string   `json:"body"`
}

// sendMail sends m through the configured SMTP server: STARTTLS first when set (a
// server without it is refused), then PLAIN sign-in when a username is set (net/smtp
// refuses to send a password unencrypted except to localhost), then the message.
// Its Message-ID is made of the delivery's id, the same on every attempt.
func (o *Outbox) sendMail(ctx context.Context, id int64, m email) error {
	s := o.cfg.SMTP
	if s.Host == "" {
		return fmt.Errorf("no SMTP server: set notifications.smtp_host: %w", errPermanent)
	}
	from, err := mail.ParseAddress(s.From)
	if err != nil {
		return fmt.Errorf("notifications.from %q: %w: %w", s.From, err, errPermanent)
	}
	addr := net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
	d := net.Dialer{Timeout: sendTimeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("SMTP %s: %w", addr, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * sendTimeout))
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	c, err := smtp.NewClient(conn, s.Host)
	if err != nil {
		return fmt.Errorf("SMTP %s: %w", addr, err)
	}
	defer c.Close()
	if err := o.smtpConverse(c, s, from.Address, id, m); err != nil {
		return fmt.Errorf("SMTP %s: %w", addr, smtpError(err))
	}
	return nil
}

func (o *Outbox) smtpConverse(c *smtp.Client, s SMTP, from string, id int64, m email) error {
	if host, err := os.Hostname(); err == nil {
		if err := c.Hello(host); err != nil {
			return err
		}
	}
	if s.StartTLS {
		if ok, _ := c.Extension("STARTTLS"); !ok {
			return errors.New("the server does not offer STARTTLS (notifications.starttls is on)")
		}
		cfg := &tls.Config{ServerName: s.Host, MinVersion: tls.VersionTLS12}
		if s.TLS != nil {
			cfg = s.TLS.Clone()
			if cfg.ServerName == "" {
				cfg.ServerName = s.Host
			}
		}
		if err := c.StartTLS(cfg); err != nil {
			return fmt.Errorf("STARTTLS: %w", err)
		}
	}
	if s.Username != "" {
		if err := c.Auth(smtp.PlainAuth("", s.Username, s.Password, s.Host)); err != nil {
			return fmt.Errorf("sign in as %s: %w", s.Username, err)
		}
	}
	if err := c.Mail(from); err != nil {
		return err
	}
	for _, to := range m.To {
		if err := c.Rcpt(to); err != nil {
			return fmt.Errorf("recipient %s: %w", to, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(o.message(s.From, id, m)); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// smtpError marks a 5xx answer permanent: the server refused for good.
func smtpError(err error) error {
	var te *textproto.Error
	if errors.As(err, &te) && te.Code >= 500 && te.Code != 530 && te.Code != 535 {
		return fmt.Errorf("%w: %w", err, errPermanent)
	}
	return err
}

// message is m as RFC 5322 text: UTF-8 plain text, quoted-printable.
func (o *Outbox) message(from string, id int64, m email) []byte {
	var b bytes.Buffer
	host := "fc"
	if a, err := mail.ParseAddress(from); err == nil {
		if _, domain, ok := strings.Cut(a.Address, "@"); ok {
			host = domain
		}
	}
	header := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, v) }
	header("From", from)
	header("To", strings.Join(m.To, ", "))
	header("Subject", mime.QEncoding.Encode("utf-8", m.Subject))
	header("Date", time.Now().UTC().Format(time.RFC1123Z))
	header("Message-ID", fmt.Sprintf("<fc-delivery-%d@%s>", id, host))
	header("Auto-Submitted", "auto-generated")
	header("MIME-Version", "1.0")
	header("Content-Type", "text/plain; charset=utf-8")
	header("Content-Transfer-Encoding", "quoted-printable")
	b.WriteString("\r\n")
	qp := quotedprintable.NewWriter(&b)
	_, _ = qp.Write([]byte(strings.ReplaceAll(m.Body, "\n", "\r\n")))
	_ = qp.Close()
	return b.Bytes()
}
