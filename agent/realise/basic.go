// Derivations sent whole: a single step whose inputs are already valid here is built
// with wopBuildDerivation from the derivation itself, as Hydra's queue runner does.
// Nix then neither substitutes the .drv (evaluation wrote it into another store, so
// it is rarely here), nor asks the caches about the outputs, nor starts its build
// hook: on a warm daemon that is a third of the time until the builder starts.

package realise

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/derivation"
	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/narinfo"

	"github.com/fc-ci/fc/agent/nixworker"
)

// maxDrvSize bounds a .drv read from the store or fetched from the cache.
const maxDrvSize = 16 << 20

// drvFetchTimeout bounds fetching one .drv from the coordinator's cache.
const drvFetchTimeout = 10 * time.Second

// maxInputFetches is how many input .drvs a step may fetch from the cache to be sent
// whole: a derivation with many inputs built elsewhere goes through BuildPaths
// rather than wait for their .drvs one by one.
const maxInputFetches = 8

// basicFor returns the derivation of j to build with wopBuildDerivation, or why the
// batch must go through BuildPaths: upstream substituters are given (an
// output may be there to substitute rather than build), a .drv cannot be read or
// fetched, or an input is not valid here (Nix would have to substitute it).
func (b *Batcher) basicFor(ctx context.Context, j *job) (drv nixworker.BasicDerivation, why error) {
	if len(j.req.Substituters) > 0 {
		return drv, errors.New("upstream substituters may hold the outputs")
	}
	d, err := b.readDrv(ctx, j.req, j.req.DrvPath)
	if err != nil {
		return drv, err
	}
	for name, o := range d.Outputs {
		if want, given := j.outs[name], o.Path; want != "" && given != want {
			return drv, fmt.Errorf("output %s is %s in the derivation but %s in the assignment", name, given, want)
		}
	}
	// The inputs' outputs: most inputs are steps this agent built (their outputs are
	// remembered) or whose .drv is in the store; the others' .drvs are fetched, after
	// what is known already has been found valid.
	inputs := append([]string(nil), d.InputSources...)
	var unknown []string
	add := func(in string, outs map[string]string) error {
		for _, name := range d.InputDerivations[in] {
			if outs[name] == "" {
				return fmt.Errorf("%s has no output %q with a known path", in, name)
			}
			inputs = append(inputs, outs[name])
		}
		return nil
	}
	for in := range d.InputDerivations {
		outs := b.known.get(in)
		if outs == nil {
			if id, err := readStoreDrv(in); err == nil {
				outs = drvOutputs(id)
				b.known.add(in, outs)
			}
		}
		if outs == nil {
			unknown = append(unknown, in)
		} else if err := add(in, outs); err != nil {
			return drv, err
		}
	}
	if len(unknown) > maxInputFetches {
		return drv, fmt.Errorf("%d input derivations are neither in the store nor built here", len(unknown))
	}
	valid := func(paths []string) error {
		if len(paths) == 0 {
			return nil
		}
		invalid, err := b.side.invalidPaths(ctx, paths)
		if err != nil {
			return err
		}
		if len(invalid) > 0 {
			return errors.New("inputs are not valid here")
		}
		return nil
	}
	if err := valid(inputs); err != nil {
		return drv, err
	}
	checked := len(inputs)
	for _, in := range unknown {
		id, err := b.readDrv(ctx, j.req, in)
		if err != nil {
			return drv, err
		}
		if err := add(in, drvOutputs(id)); err != nil {
			return drv, err
		}
	}
	if err := valid(inputs[checked:]); err != nil {
		return drv, err
	}
	return nixworker.BasicFromDerivation(d, inputs[len(d.InputSources):]), nil
}

// knownOutputs remembers the output paths of the derivations a Batcher has read (and
// checked against their paths), for the steps that take them as inputs. It starts
// afresh when full.
type knownOutputs struct {
	mu sync.Mutex
	m  map[string]map[string]string
}

const maxKnownOutputs = 50_000

// add remembers outs as the outputs of drvPath.
func (k *knownOutputs) add(drvPath string, outs map[string]string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.m == nil || len(k.m) >= maxKnownOutputs {
		k.m = map[string]map[string]string{}
	}
	k.m[drvPath] = outs
}

func (k *knownOutputs) get(drvPath string) map[string]string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.m[drvPath]
}

// drvOutputs are d's output paths by name.
func drvOutputs(d *derivation.Derivation) map[string]string {
	outs := make(map[string]string, len(d.Outputs))
	for name, o := range d.Outputs {
		outs[name] = o.Path
	}
	return outs
}

// readDrv reads the derivation at drvPath from the store, or else fetches it from the
// coordinator's cache, checks that its contents are those its path names, and
// remembers its outputs.
func (b *Batcher) readDrv(ctx context.Context, req Request, drvPath string) (*derivation.Derivation, error) {
	d, err := readStoreDrv(drvPath)
	if errors.Is(err, fs.ErrNotExist) && req.CacheURL != "" {
		var text string
		if text, err = b.fetchDrv(ctx, req, drvPath); err == nil {
			d, err = parseDrv(drvPath, text)
		}
	}
	if err != nil {
		return nil, err
	}
	b.known.add(drvPath, drvOutputs(d))
	return d, nil
}

// readStoreDrv reads and checks the derivation at drvPath in the store.
func readStoreDrv(drvPath string) (*derivation.Derivation, error) {
	text, err := readStoreFile(drvPath)
	if err != nil {
		return nil, err
	}
	return parseDrv(drvPath, text)
}

// parseDrv parses a .drv's text and checks that it is what drvPath names: a .drv's
// path is a hash of its text and references, and a text that does not hash to it (a
// torn write, a cache serving something else) is never built from.
func parseDrv(drvPath, text string) (*derivation.Derivation, error) {
	d, err := derivation.ReadDerivation(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", drvPath, err)
	}
	if p, err := d.DrvPath(); err != nil || p != drvPath {
		return nil, fmt.Errorf("the contents of %s hash to %q (%v)", drvPath, p, err)
	}
	return d, nil
}

func readStoreFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return readDrvText(f, p)
}

// readDrvText reads a .drv's text, refusing one larger than maxDrvSize.
func readDrvText(r io.Reader, drvPath string) (string, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxDrvSize+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", drvPath, err)
	}
	if len(b) > maxDrvSize {
		return "", fmt.Errorf("%s is larger than %d bytes", drvPath, maxDrvSize)
	}
	return string(b), nil
}

// fetchDrv fetches drvPath's NAR from the cache at req.CacheURL (with the credentials
// req.NetrcFile holds for its host, as Nix would present them) and returns the file.
func (b *Batcher) fetchDrv(ctx context.Context, req Request, drvPath string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, drvFetchTimeout)
	defer cancel()
	base, err := url.Parse(strings.TrimSuffix(req.CacheURL, "/"))
	if err != nil {
		return "", fmt.Errorf("cache URL: %w", err)
	}
	login, password := netrcCredentials(req.NetrcFile, base.Hostname())
	// get fetches a URL relative to the cache's (or absolute, as a narinfo may name
	// its NAR); the body is read to its end before it is closed, so the connection
	// is kept for the next fetch.
	get := func(rel string) (io.ReadCloser, error) {
		ref, err := url.Parse(rel)
		if err != nil {
			return nil, fmt.Errorf("URL %q: %w", rel, err)
		}
		u := *base
		if ref.IsAbs() {
			u = *ref
		} else {
			u.Path = path.Join(u.Path, ref.Path)
		}
		r, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return nil, err
		}
		if (login != "" || password != "") && u.Host == base.Host {
			r.SetBasicAuth(login, password)
		}
		resp, err := b.http.Do(r)
		if err != nil {
			return nil, fmt.Errorf("fetch %s: %w", u.Redacted(), err)
		}
		body := drainingBody{resp.Body}
		if resp.StatusCode != http.StatusOK {
			body.Close()
			return nil, fmt.Errorf("fetch %s: %s", u.Redacted(), resp.Status)
		}
		return body, nil
	}
	hashPart, _, _ := strings.Cut(path.Base(drvPath), "-")
	body, err := get(hashPart + ".narinfo")
	if err != nil {
		return "", err
	}
	ni, err := narinfo.Parse(io.LimitReader(body, 1<<20))
	body.Close()
	if err != nil {
		return "", fmt.Errorf("narinfo of %s: %w", drvPath, err)
	}
	if ni.StorePath != drvPath {
		return "", fmt.Errorf("the cache's narinfo for %s names %s", drvPath, ni.StorePath)
	}
	body, err = get(ni.URL)
	if err != nil {
		return "", err
	}
	defer body.Close()
	var narStream io.Reader = body
	switch ni.Compression {
	case "", "none":
	case "zstd":
		dec, err := zstd.NewReader(body, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return "", err
		}
		defer dec.Close()
		narStream = dec
	default:
		return "", fmt.Errorf("the cache serves %s compressed with %s", drvPath, ni.Compression)
	}
	nr, err := nar.NewReader(bufio.NewReader(io.LimitReader(narStream, maxDrvSize+4096)))
	if err != nil {
		return "", fmt.Errorf("NAR of %s: %w", drvPath, err)
	}
	defer nr.Close()
	h, err := nr.Next()
	if err != nil {
		return "", fmt.Errorf("NAR of %s: %w", drvPath, err)
	}
	if h.Type != nar.TypeRegular || h.Path != "/" {
		return "", fmt.Errorf("the NAR of %s is not a single file", drvPath)
	}
	return readDrvText(nr, drvPath)
}

// drainingBody reads a little of what is left of a response before closing it: an
// HTTP/1 connection is reused only when its last body was read to the end.
type drainingBody struct{ io.ReadCloser }

func (d drainingBody) Close() error {
	_, _ = io.Copy(io.Discard, io.LimitReader(d.ReadCloser, 64<<10))
	return d.ReadCloser.Close()
}

// netrcCredentials returns the login and password a netrc file holds for host, or
// those of its "default" entry; empty when there are none or no file.
func netrcCredentials(file, host string) (login, password string) {
	if file == "" {
		return "", ""
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", ""
	}
	type entry struct{ login, password string }
	var machine, def *entry
	var cur *entry
	f := strings.Fields(string(b))
	for i := 0; i < len(f); i++ {
		switch f[i] {
		case "machine":
			cur = nil
			if i+1 < len(f) {
				i++
				if f[i] == host && machine == nil {
					machine = &entry{}
					cur = machine
				}
			}
		case "default":
			cur = nil
			if def == nil {
				def = &entry{}
				cur = def
			}
		case "login", "password", "account":
			if i+1 < len(f) {
				i++
				if cur != nil && f[i-1] == "login" {
					cur.login = f[i]
				} else if cur != nil && f[i-1] == "password" {
					cur.password = f[i]
				}
			}
		}
	}
	if machine == nil {
		machine = def
	}
	if machine == nil {
		return "", ""
	}
	return machine.login, machine.password
}
