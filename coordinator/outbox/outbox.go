// Package outbox delivers what FC tells the world of its builds: commit statuses on
// forges, e-mails, outgoing webhooks and run_command. Everything goes through one
// table in PostgreSQL (the outbox), so each is delivered at least once, retried with
// backoff, survives a restart, and is sent by one coordinator when several share the
// database.
//
// Two loops run in every coordinator. The producer turns outbox events (written by
// triggers in the transactions that change an evaluation's or a build's status, so
// the schedulers call nothing) into deliveries; one coordinator produces at a time.
// The senders claim due deliveries with FOR UPDATE SKIP LOCKED and a lease, send them
// and record the outcome. LISTEN/NOTIFY wakes both when rows are added.
package outbox

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/fc-ci/fc/coordinator/config"
	"github.com/fc-ci/fc/coordinator/logs"
	"github.com/fc-ci/fc/storage"
)

// SMTP is the mail server e-mails go through.
type SMTP struct {
	Host string // empty: no e-mail can be sent
	Port int
	From string
	// Username and Password sign in (PLAIN); Password is never logged.
	Username, Password string
	StartTLS           bool
	// TLS, when set, is used for STARTTLS (tests trust their own CA with it); nil:
	// the system's roots and the host's name.
	TLS *tls.Config
}

// Config is what the outbox needs.
type Config struct {
	// PublicURL starts the links in statuses and messages (config.PublicURL()).
	PublicURL string
	SMTP      SMTP
	// RunCommand is run by /bin/sh for every finished build (empty: none), for at
	// most RunCommandTimeout.
	RunCommand        string
	RunCommandTimeout time.Duration
	// Backoff is the wait before the second attempt, doubling up to MaxBackoff;
	// after MaxAttempts attempts a delivery fails for good.
	Backoff     time.Duration
	MaxBackoff  time.Duration
	MaxAttempts int
	// Lease is how long a claim holds a delivery: past it, a sender that died
	// mid-send is taken over. Longer than any send may take.
	Lease time.Duration
	// Keep is how long delivered and failed rows stay listed.
	Keep time.Duration
	// Senders is how many deliveries this coordinator sends at once.
	Senders int
	// Sweep is the safety net: the loops look for work this often even if nothing
	// woke them (a missed notification).
	Sweep time.Duration
	// Gather is how long a loop woken by a notification waits for more before it
	// looks: a busy queue finishes builds many times a second, and each look is a
	// transaction whatever it finds (default 100 ms).
	Gather time.Duration
	// HTTP sends statuses and webhooks; nil: a client with a 30 s timeout.
	HTTP *http.Client
	// Logs are the build logs: e-mails quote the failing step's last lines.
	Logs   logs.Store
	Logger *slog.Logger
}

// Defaults the zero values of Config take.
const (
	defaultBackoff     = 10 * time.Second
	defaultMaxBackoff  = time.Hour
	defaultMaxAttempts = 10
	defaultSenders     = 4
	defaultSweep       = 30 * time.Second
	defaultGather      = 100 * time.Millisecond
	defaultKeep        = 30 * 24 * time.Hour
	sendTimeout        = 30 * time.Second // an HTTP request, an SMTP conversation
	leaseMargin        = 30 * time.Second
	pruneEvery         = time.Hour
	eventBatch         = 500
	logTailLines       = 30
)

// FromConfig is the outbox's configuration out of the coordinator's: it reads the
// SMTP password file (an error names the key).
func FromConfig(s config.Config, store logs.Store, log *slog.Logger) (Config, error) {
	n := s.Notifications
	c := Config{PublicURL: s.PublicURL(), RunCommand: n.RunCommand, RunCommandTimeout: config.Seconds(n.RunCommandTimeout),
		Backoff: config.Seconds(n.RetryBackoff), MaxAttempts: n.MaxAttempts, Keep: config.Days(n.KeepDays), Logs: store, Logger: log,
		SMTP: SMTP{Host: n.SMTPHost, Port: n.SMTPPort, From: n.From, Username: n.Username, StartTLS: n.StartTLS}}
	if n.PasswordFile != "" {
		b, err := os.ReadFile(n.PasswordFile)
		if err != nil {
			return Config{}, fmt.Errorf("notifications.password_file: %w", err)
		}
		c.SMTP.Password = strings.TrimRight(string(b), "\r\n")
	}
	return c, nil
}

// Outbox produces and sends deliveries.
type Outbox struct {
	cfg  Config
	db   *storage.DB
	log  *slog.Logger
	http *http.Client

	mu     sync.Mutex
	wakers []chan struct{} // one per loop, each buffered by one
}

// New returns the outbox over db, filling in Config's defaults.
func New(cfg Config, db *storage.DB) *Outbox {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Backoff <= 0 {
		cfg.Backoff = defaultBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = defaultMaxBackoff
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = defaultMaxAttempts
	}
	if cfg.Senders <= 0 {
		cfg.Senders = defaultSenders
	}
	if cfg.Sweep <= 0 {
		cfg.Sweep = defaultSweep
	}
	if cfg.Keep <= 0 {
		cfg.Keep = defaultKeep
	}
	if cfg.Gather <= 0 {
		cfg.Gather = defaultGather
	}
	if cfg.RunCommandTimeout <= 0 {
		cfg.RunCommandTimeout = time.Minute
	}
	if cfg.Lease <= 0 {
		cfg.Lease = max(sendTimeout, cfg.RunCommandTimeout) + leaseMargin
	}
	cfg.PublicURL = strings.TrimRight(cfg.PublicURL, "/")
	hc := cfg.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: sendTimeout}
	}
	return &Outbox{cfg: cfg, db: db, log: cfg.Logger, http: hc}
}

// Wake makes the producer and the senders look for work now.
func (o *Outbox) Wake() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, w := range o.wakers {
		select {
		case w <- struct{}{}:
		default:
		}
	}
}

func (o *Outbox) waker() chan struct{} {
	w := make(chan struct{}, 1)
	w <- struct{}{} // look once at start: rows may have waited for a restart
	o.mu.Lock()
	o.wakers = append(o.wakers, w)
	o.mu.Unlock()
	return w
}

// Run produces and sends until ctx ends, and waits for its loops. A delivery being
// sent when ctx ends is given back, to be sent again (here, after a restart, or by
// another coordinator).
func (o *Outbox) Run(ctx context.Context) {
	var wg sync.WaitGroup
	produce := o.waker()
	senders := make([]chan struct{}, o.cfg.Senders)
	for i := range senders {
		senders[i] = o.waker()
	}
	wg.Add(2 + len(senders))
	go func() { defer wg.Done(); o.listen(ctx) }()
	go func() { defer wg.Done(); o.produceLoop(ctx, produce) }()
	for _, w := range senders {
		go func() { defer wg.Done(); o.sendLoop(ctx, w) }()
	}
	wg.Wait()
}

// listen wakes the loops on every NOTIFY of the outbox channel (rows added by any
// coordinator), and once after each (re)connect, since notifications may have been
// missed meanwhile.
func (o *Outbox) listen(ctx context.Context) {
	o.db.Follow(ctx, 5*time.Second, o.Wake, o.Wake, func(err error) {
		o.log.Warn("outbox: listening for new deliveries failed; retrying", "err", err)
	}, storage.OutboxChannel)
}

// produceLoop turns events into deliveries whenever woken, and prunes old rows.
func (o *Outbox) produceLoop(ctx context.Context, wake <-chan struct{}) {
	sweep := time.NewTicker(o.cfg.Sweep)
	defer sweep.Stop()
	var pruned time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
			o.gather(ctx, wake)
		case <-sweep.C:
		}
		for ctx.Err() == nil {
			n, err := o.db.ProcessOutboxEvents(ctx, eventBatch, o.produce)
			if err != nil {
				if ctx.Err() == nil {
					o.log.Error("outbox: producing deliveries failed", "err", err)
				}
				break
			}
			if n < eventBatch {
				break
			}
		}
		if time.Since(pruned) > pruneEvery {
			pruned = time.Now()
			if n, err := o.db.PruneDeliveries(ctx, time.Now().Add(-o.cfg.Keep)); err != nil {
				o.log.Warn("outbox: pruning old deliveries failed", "err", err)
			} else if n > 0 {
				o.log.Info("outbox: pruned old deliveries", "deleted", n)
			}
		}
	}
}
