package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"sync"

	"github.com/fc-ci/fc/agent/config"
	"github.com/fc-ci/fc/internal/sdnotify"
	"github.com/fc-ci/fc/protocol"
)

// parseLevel reads log_level ("debug", "info", "warn", "error"; info otherwise, as
// config.Validate allows only those).
func parseLevel(s string) slog.Level {
	var l slog.Level
	_ = l.UnmarshalText([]byte(s))
	return l
}

// notifyWelcome wraps the daemon's OnWelcome (next may be nil): the first session
// makes the unit ready (READY=1), and every session says where it is connected.
func notifyWelcome(n *sdnotify.Notifier, url func() string, next func(protocol.Welcome)) func(protocol.Welcome) {
	var once sync.Once
	return func(w protocol.Welcome) {
		if next != nil {
			next(w)
		}
		status := fmt.Sprintf("connected to %s (%s) as agent %d %q", url(), w.Coordinator, w.AgentID, w.Name)
		ready := false
		once.Do(func() { ready = true; n.Ready(status) })
		if !ready {
			n.Status(status)
		}
	}
}

// live is what a reload can change in the running agent.
type live struct {
	level       *slog.LevelVar
	minFreeDisk func(bytes int64) // the daemon's SetMinFreeDisk
}

// reloadOnSignal reloads the configuration on each signal until ctx ends.
func reloadOnSignal(ctx context.Context, sigs <-chan os.Signal, cfg config.Config, load func() (config.Config, error),
	l live, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-sigs:
		}
		cfg = reload(cfg, load, l, log)
	}
}

// reload reads the configuration again (SIGHUP). log_level and agent.min_free_disk
// change a running agent; everything else shapes its identity, its session or its
// executors, so a change is reported as waiting for a restart. A configuration that
// no longer loads changes nothing. It returns the configuration now in effect.
func reload(old config.Config, load func() (config.Config, error), l live, log *slog.Logger) config.Config {
	cfg, err := load()
	if err != nil {
		log.Error("SIGHUP: the configuration does not load; nothing changed", "err", err)
		return old
	}
	// At the new level, before the summary, so the summary is the last line of a reload.
	l.level.Set(parseLevel(cfg.LogLevel))
	log.Debug("SIGHUP: debug logging is on")
	var applied []string
	if from, to := parseLevel(old.LogLevel), parseLevel(cfg.LogLevel); from != to {
		applied = append(applied, fmt.Sprintf("log_level %s -> %s", from, to))
	}
	old.LogLevel = cfg.LogLevel
	if from, to := old.Agent.MinFreeDisk, cfg.Agent.MinFreeDisk; from != to {
		l.minFreeDisk(to)
		applied = append(applied, fmt.Sprintf("agent.min_free_disk %d -> %d", from, to))
		old.Agent.MinFreeDisk = to
	}
	// What needs a restart keeps its running value; a later reload compares with it.
	pending := changedSettings("coordinator", old.Coordinator, cfg.Coordinator)
	pending = append(pending, changedSettings("agent", old.Agent, cfg.Agent)...)
	if len(applied) == 0 {
		applied = []string{"nothing changed"}
	}
	// Said at the new level at least: a reload is never silent.
	at := max(slog.LevelInfo, l.level.Level())
	if len(pending) > 0 {
		log.Log(context.Background(), max(slog.LevelWarn, at), "SIGHUP: reloaded the configuration", "applied", applied,
			"need_restart", pending)
	} else {
		log.Log(context.Background(), at, "SIGHUP: reloaded the configuration", "applied", applied)
	}
	return old
}

// changedSettings names the fields (section.key, as in agent.toml) that differ.
func changedSettings(section string, old, cur any) []string {
	var out []string
	ov, cv := reflect.ValueOf(old), reflect.ValueOf(cur)
	for i := range ov.NumField() {
		f := ov.Type().Field(i)
		key := f.Tag.Get("toml")
		if key == "" || key == "-" {
			continue
		}
		if !reflect.DeepEqual(ov.Field(i).Interface(), cv.Field(i).Interface()) {
			out = append(out, section+"."+key)
		}
	}
	return out
}
