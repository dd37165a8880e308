// Package channels serves Hydra's channels: a channel follows a jobset and advances
// by itself to the newest evaluation whose builds all succeeded (or whose named
// aggregate job did); it is managed under /api/v1/channels and served to nix-channel
// at /channel/{name}/ (nixexprs.tar.xz, binary-cache-url, store-paths.xz).
package channels

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/fc-ci/fc/coordinator/auth"
	"github.com/fc-ci/fc/storage"
)

// Config configures the channels.
type Config struct {
	// GitDir is where the coordinator keeps git state; the channels' mirrors of
	// projects' repositories live in its channels/ subdirectory.
	GitDir string
	// CacheURL is the coordinator's binary cache as clients reach it (…/nix-cache).
	CacheURL string
	// GitTimeout bounds one git fetch or archive.
	GitTimeout time.Duration
	// Interval is how often channels are checked when no step result wakes them
	// (default one minute).
	Interval time.Duration
	// ReadKeys, when set (cache.private), makes /channel/ need an API key too.
	ReadKeys auth.KeyStore
	Logger   *slog.Logger
}

// Channels is the API, the /channel/ handler and the loop that advances channels.
type Channels struct {
	cfg Config
	db  *storage.DB
	log *slog.Logger
	// archiving makes one tarball at a time (git and xz are heavy on a small machine).
	archiving sync.Mutex
}

// New returns the channels over db.
func New(cfg Config, db *storage.DB) *Channels {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Minute
	}
	if cfg.GitTimeout <= 0 {
		cfg.GitTimeout = 5 * time.Minute
	}
	return &Channels{cfg: cfg, db: db, log: cfg.Logger}
}

// Run advances the channels after step results (the steps NOTIFY, debounced) and
// every Interval, until ctx ends. It runs apart from the schedulers: one query per
// wake-up, never inside their transactions.
func (c *Channels) Run(ctx context.Context) {
	wake := make(chan struct{}, 1)
	go c.listen(ctx, wake)
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		if n, err := c.db.AdvanceChannels(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("advance channels", "err", err)
		} else if n > 0 {
			c.log.Info("channels advanced", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-wake:
			// Let a burst of step results settle into one check.
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
}

// listen signals wake on every notification on storage.StepsChannel (sent when a
// step's result is stored), listening again when the connection drops.
func (c *Channels) listen(ctx context.Context, wake chan<- struct{}) {
	c.db.Follow(ctx, time.Second, nil, func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}, func(err error) { c.log.Warn("listen for step results; retrying", "err", err) }, storage.StepsChannel)
}
