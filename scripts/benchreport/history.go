package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Run is one bench-all run: a line of the history file.
type Run struct {
	Date    string         `json:"date"` // UTC, RFC 3339
	Commit  string         `json:"commit"`
	Dirty   bool           `json:"dirty,omitempty"` // the work tree had uncommitted changes
	Quick   bool           `json:"quick,omitempty"`
	NProc   int            `json:"nproc"`
	Load    [3]float64     `json:"load"` // /proc/loadavg when the report was made
	Scripts []ScriptResult `json:"scripts"`
	Figures []Figure       `json:"figures"`
}

// ScriptResult is how one bench script ran.
type ScriptResult struct {
	Name       string      `json:"name"`
	Status     int         `json:"status"`                // its exit status
	LoadBefore *[3]float64 `json:"load_before,omitempty"` // the load average it printed first
	LoadAfter  *[3]float64 `json:"load_after,omitempty"`  // and last
	Figures    int         `json:"figures"`
}

// ReadHistory reads the runs of a history file (none when it does not exist).
// A line that does not parse is an error: the file is meant to be kept.
func ReadHistory(file string) ([]Run, error) {
	f, err := os.Open(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("history: %w", err)
	}
	defer f.Close()
	var runs []Run
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for n := 1; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var r Run
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("history %s line %d: %w", file, n, err)
		}
		runs = append(runs, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("history %s: %w", file, err)
	}
	return runs, nil
}

// AppendHistory adds run as one line at the end of file (created with its folder).
func AppendHistory(file string, run Run) error {
	line, err := json.Marshal(run)
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return fmt.Errorf("history: %w", err)
	}
	f, err := os.OpenFile(file, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("history: %w", err)
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("history: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("history: %w", err)
	}
	return nil
}
