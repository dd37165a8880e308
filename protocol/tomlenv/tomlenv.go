// Package tomlenv loads a program's settings the same way for every FC program:
// compiled defaults, then TOML files in order, then FC_<SECTION>__<KEY> environment
// variables. It lives beside the protocol because both the coordinator and the agent
// use it and it depends on neither.
//
// Settings structs use `toml:"name"` tags; a nested struct is a TOML table and an
// environment section. Supported leaf kinds: string, bool, ints, floats, []string.
package tomlenv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
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
		k := und[0].String()
		return fmt.Errorf("config %s line %d: unknown key %q", path, keyLine(data, und[0]), k)
	}
	return nil
}

// keyLine finds the line that defines key (a dotted TOML key) in a document made of
// [tables] and key = value lines, which is the shape of every FC config file.
// BurntSushi/toml does not expose the position of keys it did not decode.
func keyLine(data []byte, key toml.Key) int {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	var table []string
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		if strings.HasPrefix(s, "[") && !strings.HasPrefix(s, "[[") {
			name := strings.Trim(strings.SplitN(s, "#", 2)[0], " []")
			table = splitKey(name)
			if equalKey(table, key) {
				return line
			}
			continue
		}
		eq := strings.Index(s, "=")
		if eq < 0 {
			continue
		}
		full := append(append([]string{}, table...), splitKey(s[:eq])...)
		if equalKey(full, key) {
			return line
		}
	}
	return 0
}

func splitKey(s string) []string {
	parts := strings.Split(strings.TrimSpace(s), ".")
	for i, p := range parts {
		parts[i] = strings.Trim(strings.TrimSpace(p), `"'`)
	}
	return parts
}

func equalKey(a []string, k toml.Key) bool {
	if len(a) != len(k) {
		return false
	}
	for i := range a {
		if a[i] != k[i] {
			return false
		}
	}
	return true
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
		if err != nil {
			return fmt.Errorf("%q is not a number", s)
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
