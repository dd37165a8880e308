package realise

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strings"
)

// limitWriter passes bytes on until the limit, cuts the log exactly there, and closes
// stop when the limit is passed or the writer fails. One goroutine writes to it;
// its fields are read after that goroutine has ended.
type limitWriter struct {
	w        io.Writer
	max      int64 // 0: no limit
	n        int64
	exceeded bool
	err      error
	stop     chan struct{}
	onStop   func() // called once with stop closed, if set
}

func newLimitWriter(w io.Writer, max int64) *limitWriter {
	return &limitWriter{w: w, max: max, stop: make(chan struct{})}
}

func (l *limitWriter) write(p []byte) {
	if l.exceeded || l.err != nil {
		return
	}
	if l.max > 0 && l.n+int64(len(p)) > l.max {
		p = p[:l.max-l.n]
		l.exceeded = true
	}
	if len(p) > 0 {
		n, err := l.w.Write(p)
		l.n += int64(n)
		if err == nil && n < len(p) {
			err = io.ErrShortWrite
		}
		l.err = err
	}
	if l.exceeded || l.err != nil {
		close(l.stop)
		if l.onStop != nil {
			l.onStop()
		}
	}
}

// Nix's internal-json records the log keeps: build log lines (resBuildLogLine,
// resPostBuildLogLine) and error messages.
const (
	resBuildLogLine     = 101
	resPostBuildLogLine = 107
	lvlError            = 0
)

type record struct {
	Action string            `json:"action"`
	ID     uint64            `json:"id"`
	Type   int               `json:"type"`
	Level  int               `json:"level"`
	Msg    string            `json:"msg"`
	Fields []json.RawMessage `json:"fields"`
}

var ansi = regexp.MustCompile("\x1b\\[[0-9;]*[A-Za-z]")

// derivationOutputs reads derivations' outputs (drv → output name → store path).
func derivationOutputs(ctx context.Context, drvs ...string) (map[string]map[string]string, error) {
	drv := strings.Join(drvs, " ")
	out, err := exec.CommandContext(ctx, "nix", append([]string{"--extra-experimental-features", "nix-command", "show-derivation",
		"--option", "substituters", ""}, drvs...)...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, fmt.Errorf("nix show-derivation %s: %w", drv, err)
	}
	var parsed map[string]struct {
		Outputs map[string]struct {
			Path string `json:"path"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(out, &parsed); err != nil {
		return nil, fmt.Errorf("parse nix show-derivation %s: %w", drv, err)
	}
	all := map[string]map[string]string{}
	for p, d := range parsed {
		outs := map[string]string{}
		for name, o := range d.Outputs {
			outs[name] = o.Path
		}
		if len(outs) == 0 {
			return nil, fmt.Errorf("nix show-derivation %s: no outputs", p)
		}
		all[p] = outs
	}
	return all, nil
}
