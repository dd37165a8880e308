package realise

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/nix-community/go-nix/pkg/derivation"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/fc-ci/fc/protocol"
)

// drvCache serves .drv files as a binary cache does (narinfo, then an uncompressed
// NAR) to a client presenting the netrc's credentials, and records what was asked.
type drvCache struct {
	srv      *httptest.Server
	netrc    string
	mu       sync.Mutex
	requests []string
}

func serveDrv(t *testing.T, drvPath string, text []byte) *drvCache {
	return serveDrvs(t, map[string][]byte{drvPath: text}, false)
}

// serveDrvs serves drvs; with absolute, each narinfo names its NAR by a whole URL.
func serveDrvs(t *testing.T, drvs map[string][]byte, absolute bool) *drvCache {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{} // URL path → body
	for drvPath, text := range drvs {
		file := filepath.Join(dir, filepath.Base(drvPath))
		if err := os.WriteFile(file, text, 0o644); err != nil {
			t.Fatal(err)
		}
		narBytes, err := exec.Command("nix-store", "--dump", file).Output()
		if err != nil {
			t.Fatalf("nix-store --dump: %v", err)
		}
		sum := sha256.Sum256(narBytes)
		hashPart := strings.SplitN(filepath.Base(drvPath), "-", 2)[0]
		narURL := "nar/" + hashPart + ".nar"
		if absolute {
			narURL = "{base}/cache/" + narURL
		}
		files["/cache/"+hashPart+".narinfo"] = fmt.Sprintf("StorePath: %s\nURL: %s\nCompression: none\nNarHash: sha256:%s\nNarSize: %d\n",
			drvPath, narURL, nixbase32.EncodeToString(sum[:]), len(narBytes))
		files["/cache/nar/"+hashPart+".nar"] = string(narBytes)
	}
	files["/cache/nix-cache-info"] = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n"
	c := &drvCache{netrc: filepath.Join(dir, "netrc")}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.requests = append(c.requests, r.URL.Path)
		c.mu.Unlock()
		if u, p, ok := r.BasicAuth(); !ok || u != "fc-agent" || p != "s3cret" {
			http.Error(w, "who are you?", http.StatusUnauthorized)
			return
		}
		body, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, strings.ReplaceAll(body, "{base}", "http://"+r.Host))
	}))
	t.Cleanup(c.srv.Close)
	host := strings.Split(strings.TrimPrefix(c.srv.URL, "http://"), ":")[0]
	netrc := fmt.Sprintf("machine other.example login someone password else\nmachine %s login fc-agent password s3cret\n", host)
	if err := os.WriteFile(c.netrc, []byte(netrc), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// fetches are the narinfos the cache was asked for (each followed by its NAR; Nix
// opening the cache, nix-cache-info, aside), as hash parts in order; the record is
// then emptied.
func (c *drvCache) fetches(t *testing.T) []string {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	var got []string
	for i, p := range c.requests {
		if p == "/cache/nix-cache-info" {
			continue
		}
		if nar, ok := strings.CutPrefix(p, "/cache/nar/"); ok {
			if len(got) == 0 || got[len(got)-1]+".nar" != nar {
				t.Errorf("request %d: %s not after its narinfo", i, p)
			}
			continue
		}
		got = append(got, strings.TrimSuffix(strings.TrimPrefix(p, "/cache/"), ".narinfo"))
	}
	c.requests = nil
	return got
}

func (c *drvCache) asked() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.requests...)
}

// instantiateElsewhere writes a derivation depending on an input derivation: the input
// into Nix's store (where the test builds it), the derivation itself only into a
// store of its own, as an evaluating agent does. It returns both .drv paths and the
// derivation's text.
func instantiateElsewhere(t *testing.T, script string) (input, drv string, text []byte) {
	t.Helper()
	s := salt(t)
	expr := fmt.Sprintf(`rec {
  input = derivation { name = "fc-input-%s"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo input > $out" ]; };
  drv = derivation { name = "fc-whole-%s"; system = builtins.currentSystem; builder = "/bin/sh"; inherit input;
    args = [ "-c" ''
      export PATH=/bin:/usr/bin
      %s
    '' ]; };
}
`, s, s, script)
	file := filepath.Join(t.TempDir(), "drv.nix")
	if err := os.WriteFile(file, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	inst := func(args ...string) string {
		var stderr strings.Builder
		cmd := exec.Command("nix-instantiate", append([]string{"--option", "substituters", ""}, args...)...)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("nix-instantiate %v: %v: %s", args, err, stderr.String())
		}
		return strings.TrimSpace(string(out))
	}
	input = inst(file, "-A", "input")
	other := t.TempDir()
	drv = inst("--store", other, file, "-A", "drv")
	text, err := os.ReadFile(filepath.Join(other, drv))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(drv); err == nil {
		t.Fatalf("%s is in Nix's store already", drv)
	}
	return input, drv, text
}

// outputsOf names the outputs of a .drv's text, as an assignment does.
func outputsOf(t *testing.T, text []byte) map[string]string {
	t.Helper()
	d, err := derivation.ReadDerivation(bytes.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	outs := map[string]string{}
	for name, o := range d.Outputs {
		outs[name] = o.Path
	}
	return outs
}

func valid(path string) bool {
	return exec.Command("nix-store", "--check-validity", path).Run() == nil
}

// TestDaemon_ADerivationWhoseInputsAreHereIsSentWhole: a step whose .drv is only in
// the coordinator's cache and whose inputs are valid here is built from the
// derivation itself. The agent fetches the .drv with the netrc's credentials and
// Nix never substitutes it (it is still not in the store afterwards). A .drv whose
// contents do not hash to its path is never built from.
func TestDaemon_ADerivationWhoseInputsAreHereIsSentWhole(t *testing.T) {
	t.Parallel()
	b := daemonBatcher(t, 1)
	input, drv, text := instantiateElsewhere(t, `cat "$input"; echo built whole; echo ok > $out`)
	// The input is built first: its .drv is in the store, so it is sent whole too.
	if res := realise(t, b.Realise, request(t, input, newLogBuffer())); res.Status != protocol.StepSucceeded {
		t.Fatalf("input: %+v", res)
	}
	if n := b.BasicBuilds(); n != 1 {
		t.Fatalf("BasicBuilds after the input = %d, want 1", n)
	}

	t.Run("corrupted", func(t *testing.T) {
		bad := bytes.Replace(text, []byte("built whole"), []byte("built wrong"), 1)
		c := serveDrv(t, drv, bad)
		log := newLogBuffer()
		req := request(t, drv, log)
		req.CacheURL, req.NetrcFile, req.Outputs = c.srv.URL+"/cache", c.netrc, outputsOf(t, text)
		before := b.BasicBuilds()
		res, err := b.Realise(context.Background(), req)
		if b.BasicBuilds() != before {
			t.Errorf("a .drv that does not hash to its path was sent whole")
		}
		if strings.Contains(log.String(), "built wrong") {
			t.Errorf("built from the corrupted text:\n%s", log)
		}
		// BuildPaths then asks Nix, which will not take the unsigned NAR either (this runs
		// before the derivation is built, so Nix has no output to find valid).
		if err == nil && res.Status == protocol.StepSucceeded {
			t.Errorf("result %+v from a cache serving a corrupted .drv", res)
		}
	})

	t.Run("fetched", func(t *testing.T) {
		c := serveDrv(t, drv, text)
		log := newLogBuffer()
		req := request(t, drv, log)
		req.CacheURL, req.NetrcFile, req.Outputs = c.srv.URL+"/cache", c.netrc, outputsOf(t, text)
		res := realise(t, b.Realise, req)
		if res.Status != protocol.StepSucceeded || len(res.Outputs) != 1 || !valid(res.Outputs[0].StorePath) || res.Outputs[0].Deriver != drv {
			t.Fatalf("result %+v\nlog:\n%s", res, log)
		}
		if !strings.Contains(log.String(), "input\nbuilt whole\n") {
			t.Errorf("log:\n%s", log)
		}
		if n := b.BasicBuilds(); n != 2 {
			t.Errorf("BasicBuilds = %d, want 2", n)
		}
		// Nix opens the cache (nix-cache-info) but asks nothing of it: not the .drv, not
		// the output. The agent asked for the .drv's narinfo and NAR.
		hashPart := strings.SplitN(filepath.Base(drv), "-", 2)[0]
		var asked []string
		for _, p := range c.asked() {
			if p != "/cache/nix-cache-info" {
				asked = append(asked, p)
			}
		}
		if got, want := strings.Join(asked, " "), "/cache/"+hashPart+".narinfo /cache/nar/"+hashPart+".nar"; got != want {
			t.Errorf("the cache was asked %s, want %s", got, want)
		}
		if valid(drv) {
			t.Errorf("%s was substituted into the store", drv)
		}
	})
}

func TestNetrcCredentials_FirstEntryForTheHostElseDefault(t *testing.T) {
	file := filepath.Join(t.TempDir(), "netrc")
	text := "default login dl password dp\nmachine a.example login a1 password p1\nmachine a.example login a2 password p2\n" +
		"machine b.example\n  login b1\n  password p3\n"
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]string{"a.example": "a1:p1", "b.example": "b1:p3", "c.example": "dl:dp"} {
		if l, p := netrcCredentials(file, host); l+":"+p != want {
			t.Errorf("%s: %s:%s, want %s", host, l, p, want)
		}
	}
	if l, p := netrcCredentials("", "a.example"); l != "" || p != "" {
		t.Errorf("no file: %q %q", l, p)
	}
}

// TestDaemon_InputsBuiltHereAreKnownOthersAreFetched: in a chain built on one agent,
// each step fetches its own .drv only (its input's outputs are remembered from when
// the agent built it); another agent, where the input was not built, fetches the
// input's .drv too. No .drv ever lands in the store.
func TestDaemon_InputsBuiltHereAreKnownOthersAreFetched(t *testing.T) {
	t.Parallel()
	s := salt(t)
	expr := fmt.Sprintf(`rec {
  a = derivation { name = "fc-chain-a-%[1]s"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo a > $out" ]; };
  b = derivation { name = "fc-chain-b-%[1]s"; system = builtins.currentSystem; builder = "/bin/sh"; inherit a; args = [ "-c" "read x < $a; echo b$x > $out" ]; };
  c = derivation { name = "fc-chain-c-%[1]s"; system = builtins.currentSystem; builder = "/bin/sh"; inherit a; args = [ "-c" "read x < $a; echo c$x > $out" ]; };
}
`, s)
	file := filepath.Join(t.TempDir(), "chain.nix")
	if err := os.WriteFile(file, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	texts := map[string][]byte{}
	drvs := map[string]string{}
	for _, attr := range []string{"a", "b", "c"} {
		out, err := exec.Command("nix-instantiate", "--option", "substituters", "", "--store", other, file, "-A", attr).Output()
		if err != nil {
			t.Fatalf("nix-instantiate -A %s: %v", attr, err)
		}
		drv := strings.TrimSpace(string(out))
		if texts[drv], err = os.ReadFile(filepath.Join(other, drv)); err != nil {
			t.Fatal(err)
		}
		drvs[attr] = drv
	}
	cache := serveDrvs(t, texts, true) // as a cache with its NARs elsewhere names them
	hash := func(attr string) string { return strings.SplitN(filepath.Base(drvs[attr]), "-", 2)[0] }
	build := func(b *Batcher, attr string) {
		t.Helper()
		log := newLogBuffer()
		req := request(t, drvs[attr], log)
		req.CacheURL, req.NetrcFile, req.Outputs = cache.srv.URL+"/cache", cache.netrc, outputsOf(t, texts[drvs[attr]])
		if res := realise(t, b.Realise, req); res.Status != protocol.StepSucceeded {
			t.Fatalf("%s: %+v\nlog:\n%s", attr, res, log)
		}
	}
	here := daemonBatcher(t, 1)
	build(here, "a")
	if got := cache.fetches(t); !slices.Equal(got, []string{hash("a")}) {
		t.Errorf("building a fetched %v", got)
	}
	build(here, "b")
	if got := cache.fetches(t); !slices.Equal(got, []string{hash("b")}) {
		t.Errorf("building b after a fetched %v, want b's .drv only", got)
	}
	elsewhere := daemonBatcher(t, 1)
	build(elsewhere, "c")
	if got := cache.fetches(t); !slices.Equal(got, []string{hash("c"), hash("a")}) {
		t.Errorf("building c on another agent fetched %v, want c's .drv, then a's", got)
	}
	if here.BasicBuilds() != 2 || elsewhere.BasicBuilds() != 1 {
		t.Errorf("sent whole: %d and %d, want 2 and 1", here.BasicBuilds(), elsewhere.BasicBuilds())
	}
	for attr, drv := range drvs {
		if valid(drv) {
			t.Errorf("%s's .drv was substituted into the store", attr)
		}
	}
}
