package outbox_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/coordinator/outbox"
	"github.com/fc-ci/fc/storage"
	"github.com/fc-ci/fc/storage/storagetest"
)

// testCert makes a certificate for 127.0.0.1 signed by a new CA; it returns the
// files for the server and a pool that trusts the CA.
func testCert(t *testing.T) (certFile, keyFile string, roots *x509.CertPool) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "FC test CA"}, IsCA: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	roots = x509.NewCertPool()
	roots.AddCert(caCert)
	return certFile, keyFile, roots
}

func mailDelivery(p storage.Project, to []string, subject, body string) storage.NewDelivery {
	b, _ := json.Marshal(map[string]any{"to": to, "subject": subject, "body": body})
	return storage.NewDelivery{Kind: storage.DeliveryEmail, Target: strings.Join(to, ", "), ProjectID: p.ID, Payload: b}
}

// An e-mail goes through a real SMTP server (mailpit) that requires STARTTLS and a
// password: to its recipients, with its subject and text, and a Message-ID made of
// the delivery's id. A wrong password fails the delivery without showing it.
func TestDelivery_MailWithSTARTTLSAndPassword(t *testing.T) {
	t.Parallel()
	certFile, keyFile, roots := testCert(t)
	const password = "smtp-pa55word-SECRET"
	mp := coordtest.StartMailpit(t, coordtest.MailpitOptions{Username: "fc", Password: password, CertFile: certFile, KeyFile: keyFile})
	smtp := outbox.SMTP{Host: mp.Host, Port: mp.Port, From: "FC <ci@example.org>", Username: "fc", Password: password,
		StartTLS: true, TLS: &tls.Config{RootCAs: roots}}

	db := storagetest.New(t)
	p := project(t, db, "demo")
	body := "The build of demo:main:hello failed.\n\nBuild: http://ci.example.org/build/7 ünïcode\n" + strings.Repeat("x", 120) + "\n"
	enqueue(t, db, mailDelivery(p, []string{"dev@example.org", "ops@example.org"}, "[FC] demo:main:hello: Failed", body))
	run(t, db, outbox.Config{SMTP: smtp})
	d := waitSettled(t, db, 60*time.Second)[0]
	if d.Status != storage.DeliveryDelivered {
		t.Fatalf("delivery %+v", d)
	}
	msgs := mp.WaitMessages(t, 1, 30*time.Second)
	m := msgs[0]
	if got := m.Recipients(); !slices.Equal(got, []string{"dev@example.org", "ops@example.org"}) {
		t.Errorf("recipients %v", got)
	}
	if m.Subject != "[FC] demo:main:hello: Failed" || m.From.Address != "ci@example.org" ||
		m.MessageID != fmt.Sprintf("fc-delivery-%d@example.org", d.ID) {
		t.Errorf("message %+v", m)
	}
	if strings.TrimSpace(strings.ReplaceAll(m.Text, "\r\n", "\n")) != strings.TrimSpace(body) {
		t.Errorf("text %q, want %q", m.Text, body)
	}

	// The wrong password: refused, and said so without the password.
	db2 := storagetest.New(t)
	p2 := project(t, db2, "demo")
	enqueue(t, db2, mailDelivery(p2, []string{"dev@example.org"}, "s", "b"))
	wrong := smtp
	wrong.Password = "wrong-pa55word-SECRET"
	log := run(t, db2, outbox.Config{SMTP: wrong, MaxAttempts: 1})
	d = waitSettled(t, db2, 60*time.Second)[0]
	if d.Status != storage.DeliveryFailed || !strings.Contains(d.LastError, "sign in as fc") {
		t.Errorf("with a wrong password: %+v", d)
	}
	if strings.Contains(log.String()+d.LastError, "pa55word") {
		t.Error("a password shows up in the log or the delivery")
	}

	// STARTTLS required by the configuration but not offered by the server: refused
	// before anything is sent.
	plain := coordtest.StartMailpit(t, coordtest.MailpitOptions{})
	db3 := storagetest.New(t)
	p3 := project(t, db3, "demo")
	enqueue(t, db3, mailDelivery(p3, []string{"dev@example.org"}, "s", "b"))
	run(t, db3, outbox.Config{SMTP: outbox.SMTP{Host: plain.Host, Port: plain.Port, From: "ci@example.org", StartTLS: true}, MaxAttempts: 1})
	if d := waitSettled(t, db3, 60*time.Second)[0]; d.Status != storage.DeliveryFailed || !strings.Contains(d.LastError, "STARTTLS") {
		t.Errorf("without STARTTLS: %+v", d)
	}
	if n := len(plain.Messages(t)); n != 0 {
		t.Errorf("%d messages sent without STARTTLS", n)
	}
}
