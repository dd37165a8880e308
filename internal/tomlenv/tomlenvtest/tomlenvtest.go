// Package tomlenvtest checks a program's configuration loader (built on tomlenv)
// against arbitrary files and environments: the properties the fuzz tests of the
// coordinator's and the agent's configuration share.
package tomlenvtest

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// Loader loads a program's configuration from the file at path and the environment
// environ, as the program does (defaults first, Validate last).
type Loader func(path string, environ []string) (any, error)

// Keys lists the dotted TOML keys of a settings struct: its tables and their keys.
func Keys(t reflect.Type) []string {
	var out []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			tag := strings.Split(sf.Tag.Get("toml"), ",")[0]
			if tag == "" || tag == "-" || !sf.IsExported() {
				continue
			}
			out = append(out, prefix+tag)
			if sf.Type.Kind() == reflect.Struct {
				walk(sf.Type, prefix+tag+".")
			}
		}
	}
	walk(t, "")
	return out
}

var lineRE = regexp.MustCompile(`\bline (-?\d+)\b`)

// Check loads data (written to a file in dir) with environ and checks that:
//   - a refusal says where the fault is: a line of the file that exists, a key of the
//     settings (dotted, or "section: key"), or the environment variable;
//   - what loads has only finite numbers (NaN and infinities pass every "> 0" check
//     and then break whatever uses them);
//   - what loads survives the trip back: written as TOML with BurntSushi's encoder and
//     loaded again (without the environment), it gives the same settings.
func Check(t testing.TB, dir string, data []byte, environ []string, load Loader) {
	t.Helper()
	path := filepath.Join(dir, "fuzz.toml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := load(path, environ)
	if err != nil {
		checkError(t, err.Error(), data, reflect.TypeOf(cfg))
		return
	}
	if f := nonFinite(reflect.ValueOf(cfg), ""); f != "" {
		t.Fatalf("loaded with %s not a finite number", f)
	}
	var enc bytes.Buffer
	if err := toml.NewEncoder(&enc).Encode(cfg); err != nil {
		t.Fatalf("loaded settings do not encode as TOML: %v", err)
	}
	again := filepath.Join(dir, "again.toml")
	if err := os.WriteFile(again, enc.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg2, err := load(again, nil)
	if err != nil {
		t.Fatalf("loaded settings, written back, do not load: %v\n%s", err, enc.Bytes())
	}
	if !reflect.DeepEqual(cfg, cfg2) {
		t.Fatalf("loaded settings, written back and loaded again, differ:\n%#v\n%#v\n%s", cfg, cfg2, enc.Bytes())
	}
}

func checkError(t testing.TB, msg string, data []byte, typ reflect.Type) {
	t.Helper()
	lines := bytes.Count(data, []byte("\n")) + 1
	named := false
	for _, m := range lineRE.FindAllStringSubmatch(msg, -1) {
		n, _ := strconv.Atoi(m[1])
		if n < 1 || n > lines {
			t.Fatalf("error %q names line %d of a %d-line file", msg, n, lines)
		}
		named = true
	}
	// tomlenv quotes a key it refuses, known or not: `unknown key "server.prot"`.
	if strings.Contains(msg, "environment variable FC_") || strings.Contains(msg, `key "`) {
		named = true
	}
	if typ != nil && typ.Kind() == reflect.Struct {
		for _, k := range Keys(typ) {
			section, leaf, dotted := strings.Cut(k, ".")
			if containsWord(msg, k) || (dotted && strings.Contains(msg, section+": ") && containsWord(msg, leaf)) {
				named = true
			}
		}
	}
	if !named {
		t.Fatalf("error %q names no line, key or variable", msg)
	}
}

// containsWord says whether msg holds k not as part of a longer key.
func containsWord(msg, k string) bool {
	for i := 0; ; {
		j := strings.Index(msg[i:], k)
		if j < 0 {
			return false
		}
		j += i
		before, after := byte(' '), byte(' ')
		if j > 0 {
			before = msg[j-1]
		}
		if e := j + len(k); e < len(msg) {
			after = msg[e]
		}
		if !keyByte(before) && !keyByte(after) {
			return true
		}
		i = j + 1
	}
}

func keyByte(b byte) bool {
	return b == '_' || b == '.' || b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9'
}

// nonFinite names the first float field holding NaN or an infinity.
func nonFinite(v reflect.Value, name string) string {
	switch v.Kind() {
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			tag := strings.Split(v.Type().Field(i).Tag.Get("toml"), ",")[0]
			if f := nonFinite(v.Field(i), strings.TrimPrefix(name+"."+tag, ".")); f != "" {
				return f
			}
		}
	case reflect.Float32, reflect.Float64:
		if f := v.Float(); math.IsNaN(f) || math.IsInf(f, 0) {
			return name + " = " + strconv.FormatFloat(f, 'g', -1, 64) + ","
		}
	}
	return ""
}

// Seeds are fuzz seeds made from a program's documented example file: as it is
// (every key commented out), with every "# key = value" line uncommented, and a few
// malformed variants of that.
func Seeds(example []byte) [][]byte {
	uncommented := regexp.MustCompile(`(?m)^# ([a-z_]+ = .*)$`).ReplaceAll(example, []byte("$1"))
	return [][]byte{
		example,
		uncommented,
		bytes.Replace(uncommented, []byte(" = "), []byte(" == "), 1),
		bytes.Replace(uncommented, []byte("\n["), []byte("\n[["), 1),
		append(append([]byte{}, uncommented...), "\nunknown_key = 1\n"...),
	}
}
