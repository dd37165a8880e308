// Package tomlenv loads a program's settings the same way for every FC program:
// compiled defaults, then TOML files in order, then FC_<SECTION>__<KEY> environment
// variables. It is internal, not part of the wire protocol: both the coordinator
// (coordinator/config) and the agent (agent/config) use it and it depends on neither.
//
// Settings structs use `toml:"name"` tags; a nested struct is a TOML table and an
// environment section. Supported leaf kinds: string, bool, ints, floats, []string.
package tomlenv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Source tells where a file comes from, for messages.
type Source struct {
	Path     string
	Optional bool // a missing optional file is skipped silently
}

// Files is the usual list of configuration files, lowest precedence first: defaultName
// in the working directory when present, then the file named by the --config flag or,
// without it, by FC_CONFIG_FILE in environ (required to exist). A named file that is
// the working directory's one is read once.
func Files(defaultName, flagValue string, environ []string) []Source {
	files := []Source{{Path: defaultName, Optional: true}}
	named := flagValue
	if named == "" {
		for _, kv := range environ {
			if v, ok := strings.CutPrefix(kv, "FC_CONFIG_FILE="); ok {
				named = v
			}
		}
	}
	if named == "" {
		return files
	}
	if a, err := filepath.Abs(named); err == nil {
		if b, err := filepath.Abs(defaultName); err == nil && a == b {
			files = nil
		}
	}
	return append(files, Source{Path: named})
}

// Load fills dst (a pointer to a struct already holding the defaults) from files
// in order, then from environ (KEY=VALUE strings, usually os.Environ()).
// prefix is the environment prefix, e.g. "FC_".
func Load(dst any, files []Source, prefix string, environ []string) error {
	for _, f := range files {
		data, err := os.ReadFile(f.Path)
		if err != nil {
			if f.Optional && errors.Is(err, os.ErrNotExist) {
				continue
			}
			return fmt.Errorf("read config %s: %w", f.Path, err)
		}
		if err := DecodeFile(dst, f.Path, data); err != nil {
			return err
		}
	}
	return ApplyEnv(dst, prefix, environ)
}

// DecodeFile decodes one TOML document into dst. Unknown keys and wrong types are
// errors naming the file, the line and the key.
func DecodeFile(dst any, path string, data []byte) error {
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(dst)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			msg := pe.Message
			if pe.LastKey != "" {
				msg = fmt.Sprintf("key %q: %s", pe.LastKey, pe.Message)
			}
			return fmt.Errorf("config %s line %d: %s", path, pe.Position.Line, msg)
		}
		return fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return fmt.Errorf("config %s%s: unknown key %q", path, atLine(data, und[0]), und[0].String())
	}
	if k, x := nonFinite(reflect.ValueOf(dst).Elem(), ""); k != "" {
		return fmt.Errorf("config %s%s: key %q: %v is not a finite number", path, atLine(data, strings.Split(k, ".")), k, x)
	}
	return nil
}

// atLine is " line N" for the line that defines key, or "" when it cannot be found.
func atLine(data []byte, key toml.Key) string {
	if n := keyLine(data, key); n > 0 {
		return fmt.Sprintf(" line %d", n)
	}
	return ""
}

// keyLine finds the line that defines key (a dotted TOML key), or else the nearest
// line defining a table or key it lies in (an inline table, an array of tables), in a
// document of [tables], [[arrays]] and key = value lines, which is the shape of every
// FC config file; 0 when none does. BurntSushi/toml does not expose the position of
// keys it did not decode.
func keyLine(data []byte, key toml.Key) int {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	var table []string
	line, best, bestLen := 0, 0, 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		var full []string
		if strings.HasPrefix(s, "[") {
			name := strings.TrimPrefix(strings.TrimPrefix(s, "["), "[")
			parts, rest := splitKey(name)
			if !strings.HasPrefix(rest, "]") {
				continue
			}
			table, full = parts, parts
		} else {
			parts, rest := splitKey(s)
			if !strings.HasPrefix(rest, "=") {
				continue
			}
			full = append(append([]string{}, table...), parts...)
		}
		if n := len(full); n > bestLen && n <= len(key) && slices.Equal(full, key[:n]) {
			if n == len(key) {
				return line
			}
			best, bestLen = line, n
		}
	}
	return best
}

// splitKey reads a dotted TOML key (bare or quoted parts) from the start of s and
// returns its parts and what follows it, spaces trimmed.
func splitKey(s string) (parts []string, rest string) {
	for {
		s = strings.TrimLeft(s, " \t")
		var part string
		switch {
		case strings.HasPrefix(s, `"`), strings.HasPrefix(s, "'"):
			end := strings.IndexByte(s[1:], s[0])
			if end < 0 {
				return parts, s
			}
			part, s = s[1:1+end], s[2+end:]
			if q, err := strconv.Unquote(`"` + part + `"`); err == nil && !strings.HasPrefix(s, "'") {
				part = q
			}
		default:
			end := strings.IndexFunc(s, func(r rune) bool {
				return !(r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
			})
			if end < 0 {
				end = len(s)
			}
			if end == 0 {
				return parts, s
			}
			part, s = s[:end], s[end:]
		}
		parts = append(parts, part)
		s = strings.TrimLeft(s, " \t")
		if !strings.HasPrefix(s, ".") {
			return parts, s
		}
		s = s[1:]
	}
}

// nonFinite names the first float setting holding NaN or an infinity: they pass every
// "> 0" check and then break whatever computes with them.
func nonFinite(v reflect.Value, prefix string) (key string, value float64) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		tag := strings.Split(sf.Tag.Get("toml"), ",")[0]
		if tag == "" || tag == "-" || !sf.IsExported() {
			continue
		}
		f := v.Field(i)
		switch f.Kind() {
		case reflect.Struct:
			if k, x := nonFinite(f, prefix+tag+"."); k != "" {
				return k, x
			}
		case reflect.Float32, reflect.Float64:
			if x := f.Float(); math.IsNaN(x) || math.IsInf(x, 0) {
				return prefix + tag, x
			}
		}
	}
	return "", 0
}

// ApplyEnv sets fields from PREFIX<SECTION>__<KEY> variables (top-level keys:
// PREFIX<KEY>). Variables naming no field are ignored: programs share the prefix.
func ApplyEnv(dst any, prefix string, environ []string) error {
	env := make(map[string]string)
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.HasPrefix(k, prefix) {
			env[k] = v
		}
	}
	if len(env) == 0 {
		return nil
	}
	return walk(reflect.ValueOf(dst).Elem(), prefix, func(name string, f reflect.Value) error {
		v, ok := env[name]
		if !ok {
			return nil
		}
		if err := setFromString(f, v); err != nil {
			return fmt.Errorf("environment variable %s: %w", name, err)
		}
		return nil
	})
}

// EnvNames lists every environment variable dst understands, for documentation tests.
func EnvNames(dst any, prefix string) []string {
	var names []string
	_ = walk(reflect.ValueOf(dst).Elem(), prefix, func(name string, _ reflect.Value) error {
		names = append(names, name)
		return nil
	})
	return names
}

func walk(v reflect.Value, prefix string, fn func(name string, f reflect.Value) error) error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		tag := strings.Split(sf.Tag.Get("toml"), ",")[0]
		if tag == "" || tag == "-" || !sf.IsExported() {
			continue
		}
		name := prefix + strings.ToUpper(tag)
		f := v.Field(i)
		if f.Kind() == reflect.Struct {
			if err := walk(f, name+"__", fn); err != nil {
				return err
			}
			continue
		}
		if err := fn(name, f); err != nil {
			return err
		}
	}
	return nil
}

func setFromString(f reflect.Value, s string) error {
	switch f.Kind() {
	case reflect.String:
		f.SetString(s)
	case reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return fmt.Errorf("%q is not a boolean (use true or false)", s)
		}
		f.SetBool(b)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, f.Type().Bits())
		if err != nil {
			return fmt.Errorf("%q is not an integer", s)
		}
		f.SetInt(n)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, err := strconv.ParseUint(strings.TrimSpace(s), 10, f.Type().Bits())
		if err != nil {
			return fmt.Errorf("%q is not a non-negative integer", s)
		}
		f.SetUint(n)
	case reflect.Float32, reflect.Float64:
		n, err := strconv.ParseFloat(strings.TrimSpace(s), f.Type().Bits())
		if err != nil || math.IsNaN(n) || math.IsInf(n, 0) {
			return fmt.Errorf("%q is not a finite number", s)
		}
		f.SetFloat(n)
	case reflect.Slice:
		if f.Type().Elem().Kind() != reflect.String {
			return fmt.Errorf("unsupported list type %s", f.Type())
		}
		var items []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				items = append(items, p)
			}
		}
		f.Set(reflect.ValueOf(items))
	default:
		return fmt.Errorf("unsupported type %s", f.Type())
	}
	return nil
}
