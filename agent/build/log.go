package build

import (
	"bufio"
	"bytes"
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
	Type   int               `json:"type"`
	Level  int               `json:"level"`
	Msg    string            `json:"msg"`
	Fields []json.RawMessage `json:"fields"`
}

type parseResult struct {
	errors []string // Nix's error messages, without colours
}

var ansi = regexp.MustCompile("\x1b\\[[0-9;]*[A-Za-z]")

// parseLog reads nix's stderr (--log-format internal-json) until EOF or a read error,
// writing the builder's lines and Nix's errors to w; progress is dropped, and lines
// that are not "@nix {...}" go through as they are. It keeps draining after w has
// stopped taking bytes, so Nix never blocks on a full pipe.
func parseLog(r io.Reader, w *limitWriter) parseResult {
	var res parseResult
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			handleLine(line, w, &res)
		}
		if err != nil {
			return res
		}
	}
}

func handleLine(line []byte, w *limitWriter, res *parseResult) {
	body, ok := bytes.CutPrefix(line, []byte("@nix "))
	if !ok {
		w.write(line)
		return
	}
	var rec record
	if err := json.Unmarshal(bytes.TrimSpace(body), &rec); err != nil {
		w.write(line)
		return
	}
	switch {
	case rec.Action == "result" && (rec.Type == resBuildLogLine || rec.Type == resPostBuildLogLine) && len(rec.Fields) > 0:
		var text string
		if json.Unmarshal(rec.Fields[0], &text) != nil {
			return
		}
		w.write(append([]byte(text), '\n'))
	case rec.Action == "msg" && rec.Level <= lvlError:
		text := ansi.ReplaceAllString(rec.Msg, "")
		res.errors = append(res.errors, strings.TrimPrefix(text, "error: "))
		w.write(append([]byte(text), '\n'))
	}
}

// derivationOutputs reads a derivation's outputs (name → store path).
func derivationOutputs(ctx context.Context, drv string) (map[string]string, error) {
	out, err := exec.CommandContext(ctx, "nix", "--extra-experimental-features", "nix-command", "show-derivation",
		"--option", "substituters", "", drv).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, fmt.Errorf("nix show-derivation %s: %w", drv, err)
	}
	var drvs map[string]struct {
		Outputs map[string]struct {
			Path string `json:"path"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal(out, &drvs); err != nil {
		return nil, fmt.Errorf("parse nix show-derivation %s: %w", drv, err)
	}
	outs := map[string]string{}
	for _, d := range drvs {
		for name, o := range d.Outputs {
			outs[name] = o.Path
		}
	}
	if len(outs) == 0 {
		return nil, fmt.Errorf("nix show-derivation %s: no outputs", drv)
	}
	return outs, nil
}
