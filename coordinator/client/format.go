package client

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// field is one member of a JSON object, in the order the API sent it.
type field struct {
	Key   string
	Value json.RawMessage
}

// fieldsOf reads a JSON object's members in order (a map would lose it).
func fieldsOf(raw []byte) ([]field, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, fmt.Errorf("decode answer: not a JSON object: %.80q", raw)
	}
	var out []field
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("decode answer: %w", err)
		}
		key, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("decode answer: %w", err)
		}
		out = append(out, field{Key: key, Value: v})
	}
	return out, nil
}

func lookup(fs []field, key string) json.RawMessage {
	for _, f := range fs {
		if f.Key == key {
			return f.Value
		}
	}
	return nil
}

// text renders a JSON value for a person: null as "-", a list of scalars joined by
// commas, an object or a list of objects as compact JSON.
func text(raw json.RawMessage) string {
	if len(raw) == 0 {
		return "-"
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return string(raw)
	}
	switch v := v.(type) {
	case nil:
		return "-"
	case string:
		return v
	case json.Number:
		return v.String()
	case bool:
		return fmt.Sprint(v)
	case []any:
		parts := make([]string, 0, len(v))
		for _, e := range v {
			switch e.(type) {
			case map[string]any, []any:
				var b bytes.Buffer
				_ = json.Compact(&b, raw)
				return b.String()
			}
			parts = append(parts, fmt.Sprint(e))
		}
		return strings.Join(parts, ",")
	case map[string]any:
		return compactObject(v)
	}
	return string(raw)
}

// compactObject renders a flat object as k=v pairs sorted by key (counts by status).
func compactObject(m map[string]any) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		switch m[k].(type) {
		case map[string]any, []any:
			b, _ := json.Marshal(m)
			return string(b)
		}
		parts = append(parts, fmt.Sprintf("%s=%v", k, m[k]))
	}
	return strings.Join(parts, " ")
}

// column is one column of a table: the JSON key and how to show it.
type column struct {
	Key    string
	Header string
	Format func(string) string // nil: as text renders it
}

// cell is a table cell: empty values as "-", times to the second.
func (c column) cell(raw json.RawMessage) string {
	s := text(raw)
	if c.Format != nil {
		s = c.Format(s)
	}
	if s == "" {
		return "-"
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC().Format("2006-01-02 15:04:05")
	}
	return s
}

func short(n int) func(string) string {
	return func(s string) string {
		if len(s) > n {
			return s[:n]
		}
		return s
	}
}

// storeName drops /nix/store/ and the hash from a store path.
func storeName(s string) string {
	base := strings.TrimPrefix(s, "/nix/store/")
	if i := strings.IndexByte(base, '-'); i == 32 {
		return base[i+1:]
	}
	return base
}

// writeTable prints items as an aligned table under cols' headers.
func writeTable(w io.Writer, cols []column, items []json.RawMessage) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	heads := make([]string, len(cols))
	for i, c := range cols {
		heads[i] = c.Header
	}
	fmt.Fprintln(tw, strings.Join(heads, "\t"))
	for _, it := range items {
		fs, err := fieldsOf(it)
		if err != nil {
			return err
		}
		cells := make([]string, len(cols))
		for i, c := range cols {
			cells[i] = strings.ReplaceAll(c.cell(lookup(fs, c.Key)), "\t", " ")
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// writeShow prints one object as "key: value" lines in the API's order. Lists of
// objects named in sections follow as tables of their own.
func writeShow(w io.Writer, raw []byte, sections map[string][]column) error {
	fs, err := fieldsOf(raw)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)
	var later []field
	for _, f := range fs {
		if _, ok := sections[f.Key]; ok {
			later = append(later, f)
			continue
		}
		v := strings.ReplaceAll(text(f.Value), "\n", " ")
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(tw, "%s:\t%s\n", f.Key, v)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, f := range later {
		var items []json.RawMessage
		if err := json.Unmarshal(f.Value, &items); err != nil || len(items) == 0 {
			fmt.Fprintf(w, "\n%s: none\n", f.Key)
			continue
		}
		fmt.Fprintf(w, "\n%s:\n", f.Key)
		if err := writeTable(&indent{w: w}, sections[f.Key], items); err != nil {
			return err
		}
	}
	return nil
}

// indent prefixes every line with two spaces.
type indent struct {
	w   io.Writer
	mid bool
}

func (in *indent) Write(p []byte) (int, error) {
	var b bytes.Buffer
	for _, c := range p {
		if !in.mid {
			b.WriteString("  ")
		}
		b.WriteByte(c)
		in.mid = c != '\n'
	}
	if _, err := in.w.Write(b.Bytes()); err != nil {
		return 0, err
	}
	return len(p), nil
}

// writeJSON prints an answer indented, as the API sent it otherwise.
func writeJSON(w io.Writer, raw []byte) error {
	var b bytes.Buffer
	if err := json.Indent(&b, raw, "", "  "); err != nil {
		return fmt.Errorf("answer is not JSON: %w", err)
	}
	b.WriteByte('\n')
	_, err := w.Write(b.Bytes())
	return err
}
