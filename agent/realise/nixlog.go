// The parser of Nix's internal-json log (--log-format internal-json): it splits a
// batch's log per derivation by activity id, keeps build lines and error messages,
// tells which derivation failed how, and passes on Nix's count of finished builds.

package realise

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/fc-ci/fc/protocol"
)

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

// Nix's activity types and results that the demultiplexer follows.
const (
	actBuilds   = 104 // all the builds of the process; its progress counts them
	actBuild    = 105 // one derivation's build
	resProgress = 105 // [done, expected, running, failed] of an activity
)

// drvInMsg finds the derivations a message names.
var drvInMsg = regexp.MustCompile(`/nix/store/[0-9a-z]{32}-[^'"\s]+\.drv`)

// demux splits a batch's internal-json log per derivation.
type demux struct {
	jobs  []*job
	byDrv map[string]*job
	byAct map[uint64]*job
	// early hands on derivations finished while the batch runs (nil: none is).
	early  *earlyFinisher
	builds uint64 // the activity counting the builds (type actBuilds)
}

func newDemux(jobs []*job) *demux {
	d := &demux{jobs: jobs, byDrv: map[string]*job{}, byAct: map[uint64]*job{}}
	for _, j := range jobs {
		d.byDrv[j.req.DrvPath] = j
	}
	return d
}

// parse reads nix's stderr until EOF or a read error and returns the error messages
// that named no derivation of the batch. It keeps draining after the logs have
// stopped taking bytes, so Nix never blocks on a full pipe.
func (d *demux) parse(r io.Reader) []string {
	var general []string
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			if msg, ok := d.line(line); ok {
				general = append(general, msg)
			}
		}
		if err != nil {
			return general
		}
	}
}

// all writes p to every job's log (not to those already handed on: their logs are
// complete).
func (d *demux) all(p []byte) {
	for _, j := range d.jobs {
		j.write(p)
	}
}

// progress passes on Nix's count of builds done ([done, expected, running, failed]).
func (d *demux) progress(fields []json.RawMessage) {
	var done int64
	if d.early == nil || len(fields) < 1 || json.Unmarshal(fields[0], &done) != nil {
		return
	}
	d.early.progress(done)
}

func (d *demux) line(line []byte) (general string, isGeneral bool) {
	body, ok := bytes.CutPrefix(line, []byte("@nix "))
	if !ok {
		d.all(line)
		return "", false
	}
	var rec record
	if err := json.Unmarshal(bytes.TrimSpace(body), &rec); err != nil {
		d.all(line)
		return "", false
	}
	return d.record(rec)
}

// logLine appends a line of the build activity id to its job's log.
func (d *demux) logLine(id uint64, text string) {
	j := d.byAct[id]
	if j == nil && len(d.jobs) == 1 {
		j = d.jobs[0]
	}
	if j != nil {
		j.write(append([]byte(text), '\n'))
	}
}

// record follows one of Nix's log records (from nix-store's internal-json log or
// the daemon's messages, see daemonLog).
func (d *demux) record(rec record) (general string, isGeneral bool) {
	switch {
	case rec.Action == "start" && rec.Type == actBuild && len(rec.Fields) > 0:
		var drv string
		if json.Unmarshal(rec.Fields[0], &drv) == nil {
			if j := d.byDrv[drv]; j != nil {
				d.byAct[rec.ID] = j
				j.mu.Lock()
				if j.started.IsZero() {
					j.started = time.Now().UTC()
				}
				j.mu.Unlock()
			}
		}
	case rec.Action == "start" && rec.Type == actBuilds:
		d.builds = rec.ID
	case rec.Action == "result" && rec.Type == resProgress && rec.ID == d.builds && d.builds != 0:
		d.progress(rec.Fields) // [done, expected, running, failed] of the builds
	case rec.Action == "result" && (rec.Type == resBuildLogLine || rec.Type == resPostBuildLogLine) && len(rec.Fields) > 0:
		var text string
		if json.Unmarshal(rec.Fields[0], &text) != nil {
			return "", false
		}
		d.logLine(rec.ID, text)
	case rec.Action == "msg" && rec.Level <= lvlError:
		text := ansi.ReplaceAllString(rec.Msg, "")
		short := strings.TrimPrefix(text, "error: ")
		var named []*job
		for _, drv := range drvInMsg.FindAllString(text, -1) {
			if j := d.byDrv[drv]; j != nil && !slices.Contains(named, j) {
				named = append(named, j)
			}
		}
		switch len(named) {
		case 0:
			d.all(append([]byte(text), '\n'))
			return short, true
		case 1:
			j := named[0]
			j.mu.Lock()
			defer j.mu.Unlock()
			if j.handed {
				return "", false
			}
			j.errors = append(j.errors, short)
			j.lw.write(append([]byte(text), '\n'))
			switch {
			case strings.Contains(short, "timed out"):
				j.status, j.exit = protocol.StepTimedOut, 101
			case strings.Contains(short, "hash mismatch in fixed-output derivation"):
				j.status, j.exit = protocol.StepFailed, 102
			case strings.Contains(short, "may not be deterministic"):
				j.status, j.exit = protocol.StepFailed, 104
			case strings.HasPrefix(short, "builder for ") && strings.Contains(short, " failed with exit code "):
				if j.status == "" {
					j.status, j.exit = protocol.StepFailed, 100
				}
			}
		default:
			// A summary naming several steps ("build of 'a', 'b' failed"): each has
			// its own message already.
		}
	}
	return "", false
}
