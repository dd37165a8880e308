package cache

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/fc-ci/fc/agent/push"
	"github.com/fc-ci/fc/protocol"
	"github.com/fc-ci/fc/storage"
)

// Fuzz targets for what agents and upstream caches send the cache: upload requests
// (path infos and content addresses), NARs checked against content addresses, and
// upstream narinfos. Run one longer with
// go test -run '^$' -fuzz '^FuzzUploadRequest$' -fuzztime 60s ./coordinator/cache/

// realPathInfo is `nix path-info --json` (Nix 2.8) of real paths, as fc-agent push
// reads it: a source added recursively, a flat fixed output, a fixed output hashed
// recursively with sha1, two .drv files (one with a reference), an input-addressed
// output with its deriver.
const realPathInfo = `[
{"path":"/nix/store/n3jmh93x8x2pgccx63jjy2lxvghy8rmy-src","narHash":"sha256-ibvz5x5s93PqzGIkQ8u0Fn+JQtsMpsju7h+yzMFmbB0=","narSize":296,"references":[],"ca":"fixed:r:sha256:07bccv0wrchzxvpci9hcvd18jzqnnk5l6932rkm77xvc3vkz7fw9","registrationTime":1796572624},
{"path":"/nix/store/iz0r53jksqm6z32fiddsr9y6cbi4n1rx-flat.txt","narHash":"sha256-0GXz2IhSybmbIaIlEyGjX6GHM0THlHucM9b675lq5HY=","narSize":128,"references":[],"ca":"fixed:sha256:0p10sg6rl8bjcwnvnz2iaglfh3hjvzqwlfh5dnwkfg03gpq0q71b","registrationTime":1796572624},
{"path":"/nix/store/ra8rlhw7z11p4icgcsrp904yafdljw5y-flat.txt","narHash":"sha256-0GXz2IhSybmbIaIlEyGjX6GHM0THlHucM9b675lq5HY=","narSize":128,"references":[],"ca":"fixed:r:sha1:xgm3dnadfa2271c4gp09xbcx4vmyy55b","registrationTime":1796572625},
{"path":"/nix/store/00d416lx5wbqzjzfmhgjk1s401dmlnwd-diamond-right.drv","narHash":"sha256-sCF6eRmGoSHbl4l3hPa5ffjF7KatCgJcYCUSxNmo3HQ=","narSize":616,"references":["/nix/store/vpc6diryy9mysv56jzsqf4k7l6h9vp18-diamond-base.drv"],"ca":"text:sha256:1krvmzb0s30xngyb21fl8si3a58720b48cyd4z2s9j5x0przxdkx","registrationTime":1796570248},
{"path":"/nix/store/0012955xiz86mh68q6b3lmbay3064xl9-small-1774.drv","narHash":"sha256-khwjJ2Sk2rdmZ9x6OsK9F5OSkeKxD+btUePYm4HSkQA=","narSize":464,"references":[],"ca":"text:sha256:0vmvhwmvv3iz5af5kx9wnf1q77f1vhg1dz5v4zjhybj16jys1qpr","registrationTime":1796542112},
{"path":"/nix/store/00hyh9mjjyy6iz9q9iwxzdyqiwlw3scb-j127-TestBuilds-TwoCoordinatorsOneDatabase-24d339b8f4","narHash":"sha256-2PNF8sp6JG1nf+S+xUt53bVOl8AqrJ5Fpp7GmMcXdFw=","narSize":120,"references":["/nix/store/00hyh9mjjyy6iz9q9iwxzdyqiwlw3scb-j127-TestBuilds-TwoCoordinatorsOneDatabase-24d339b8f4"],"deriver":"/nix/store/0xbzyfix2syqvagvpiwrsyzma4q5dk1y-j127-TestBuilds-TwoCoordinatorsOneDatabase-24d339b8f4.drv","registrationTime":1796543478,"ultimate":true}
]`

func realInfos(tb testing.TB) []protocol.PathInfo {
	infos, err := push.ParsePathInfo([]byte(realPathInfo))
	if err != nil {
		tb.Fatal(err)
	}
	return infos
}

// storePathRE is Nix's rule for a store path in /nix/store, written out independently
// of the code under test: 32 nixbase32 characters, a dash, and a name of at most 211
// characters from Nix's set that does not begin with a period.
var storePathRE = regexp.MustCompile(`^/nix/store/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-_?=][A-Za-z0-9+\-_?=.]{0,210}$`)

// FuzzUploadRequest decodes arbitrary upload requests as the coordinator does and
// checks every path info checkInfo accepts: its store path, references and deriver are
// store paths by Nix's rules (they become narinfo lines and file names); its hash part
// and NAR hash are what the rest of the upload relies on; admitPath keeps every path
// inside the scope it was given (a content address, when one applies, recomputes the
// path exactly); and the narinfo the cache would serve for it parses back, field for
// field, with a signature that verifies as Nix verifies it.
func FuzzUploadRequest(f *testing.F) {
	infos := realInfos(f)
	for _, pi := range infos {
		refs := strings.Join(pi.References, "\n")
		f.Add(pi.StorePath, pi.NarHash, pi.NarSize, refs, pi.Deriver, pi.CA, pi.CA)
		f.Add(pi.StorePath, pi.NarHash, pi.NarSize, refs, pi.Deriver, "", "")
	}
	sk, pk, err := signature.GenerateKeypair("fuzz-1", nil)
	if err != nil {
		f.Fatal(err)
	}
	c := &Cache{key: sk}
	f.Fuzz(func(t *testing.T, storePath, narHash string, narSize int64, refs, deriver, ca, stepCA string) {
		in := protocol.PathInfo{StorePath: storePath, NarHash: narHash, NarSize: narSize, Deriver: deriver, CA: ca}
		if refs != "" {
			in.References = strings.Split(refs, "\n")
		}
		// As the agent sends it and HandleUpload reads it.
		var frame bytes.Buffer
		if err := protocol.WriteFrame(&frame, protocol.UploadRequest{Paths: []protocol.PathInfo{in}}); err != nil {
			t.Fatal(err)
		}
		var req protocol.UploadRequest
		if err := protocol.ReadFrame(&frame, &req); err != nil || len(req.Paths) != 1 {
			t.Fatalf("an upload request does not read back: %v", err)
		}
		checkParseCA(t, stepCA)
		checkParseCA(t, req.Paths[0].CA)
		checkUploadInfo(t, c, pk, req.Paths[0], stepCA)
	})
}

// checkParseCA: an address parseCA accepts writes as one it accepts again, the same.
func checkParseCA(t *testing.T, s string) {
	t.Helper()
	ca, err := parseCA(s)
	if err != nil {
		return
	}
	again, err := parseCA(ca.String())
	if err != nil || again.String() != ca.String() || !bytes.Equal(again.hash.Digest(), ca.hash.Digest()) {
		t.Fatalf("content address %q reads as %q, which reads back as %v (%v)", s, ca, again, err)
	}
}

func checkUploadInfo(t *testing.T, c *Cache, pk signature.PublicKey, pi protocol.PathInfo, stepCA string) {
	t.Helper()
	h, err := checkInfo(pi)
	if err != nil {
		return // refused before admitPath is asked
	}
	for what, p := range map[string]string{"store path": pi.StorePath, "deriver": pi.Deriver} {
		if (p != "" || what == "store path") && !storePathRE.MatchString(p) {
			t.Fatalf("checkInfo accepted %s %q", what, p)
		}
	}
	for _, r := range pi.References {
		if !storePathRE.MatchString(r) {
			t.Fatalf("checkInfo accepted reference %q", r)
		}
		if hashPart(r) != r[11:43] {
			t.Fatalf("hash part of reference %q is %q", r, hashPart(r))
		}
	}
	if hashPart(pi.StorePath) != pi.StorePath[11:43] || basename(pi.StorePath) != pi.StorePath[11:] {
		t.Fatalf("hash part %q, basename %q of %q", hashPart(pi.StorePath), basename(pi.StorePath), pi.StorePath)
	}
	if pi.NarSize <= 0 || h.Algo() != nixhash.SHA256 || len(h.Digest()) != sha256.Size {
		t.Fatalf("checkInfo accepted nar size %d, nar hash %q", pi.NarSize, pi.NarHash)
	}

	// Scopes: nothing outside the scope, content addresses recompute the path.
	if _, err := admitPath(storage.UploadScope{}, pi); err == nil {
		t.Fatal("admitPath took a path with no scope at all")
	}
	checkAdmitted := func(a admission) {
		t.Helper()
		if a.ca != nil {
			if err := checkCAPath(pi.StorePath, *a.ca, pi.References); err != nil {
				t.Fatalf("admitted with content address %s that does not make the path: %v", a.ca, err)
			}
		}
	}
	if a, err := admitPath(storage.UploadScope{Evaluating: true}, pi); err == nil {
		if a.ca == nil || a.push || a.pendingStep != 0 {
			t.Fatalf("an evaluation uploaded %s with %+v: only content-addressed paths", pi.StorePath, a)
		}
		checkAdmitted(a)
	}
	step := storage.UploadScope{Outputs: map[string]storage.ScopedOutput{pi.StorePath: {StepID: 7, CA: stepCA}}}
	if a, err := admitPath(step, pi); err == nil {
		if a.pendingStep != 7 || a.push {
			t.Fatalf("a step's output admitted as %+v", a)
		}
		if stepCA != "" {
			want, err := parseCA(stepCA)
			if err != nil || a.ca == nil || a.ca.String() != want.String() {
				t.Fatalf("a fixed output (%q) admitted with content address %v", stepCA, a.ca)
			}
		} else if a.ca != nil {
			t.Fatalf("an input-addressed output admitted with content address %s", a.ca)
		}
		checkAdmitted(a)
	}
	other := storage.UploadScope{Evaluating: false, Outputs: map[string]storage.ScopedOutput{pi.StorePath + "x": {StepID: 7}}}
	if _, err := admitPath(other, pi); err == nil {
		t.Fatal("admitPath took a path that is not the step's output")
	}
	a, err := admitPath(storage.UploadScope{Push: true}, pi)
	if err != nil {
		return // a content address that is malformed or does not make the path
	}
	checkAdmitted(a)

	// The narinfo served for it.
	narDigest := h.Digest()
	for _, fileDigest := range [][]byte{nil, bytes.Repeat([]byte{0x5a}, sha256.Size)} {
		fileSize := int64(1234)
		if fileDigest == nil {
			fileSize = pi.NarSize // a plain NAR is its own file
		}
		n := newNarinfo(pi, a, narDigest, fileDigest, fileSize)
		sig, err := c.sign(n)
		if err != nil {
			t.Fatal(err)
		}
		n.Sigs = []string{sig}
		text, err := Render(n)
		if err != nil {
			t.Fatalf("Render: %v", err)
		}
		ni, err := narinfo.Parse(strings.NewReader(text))
		if err != nil {
			t.Fatalf("the narinfo served for %q does not parse: %v\n%s", pi.StorePath, err, text)
		}
		if err := ni.Check(); err != nil {
			t.Fatalf("the narinfo served for %q does not check: %v\n%s", pi.StorePath, err, text)
		}
		refs := make([]string, len(pi.References))
		for i, r := range pi.References {
			refs[i] = basename(r)
		}
		if ni.StorePath != pi.StorePath || ni.Deriver != basename(pi.Deriver) || !slices.Equal(ni.References, refs) ||
			ni.CA != n.CA || ni.NarSize != uint64(pi.NarSize) || !bytes.Equal(ni.NarHash.Digest(), narDigest) {
			t.Fatalf("the narinfo served for %+v reads as %+v\n%s", pi, ni, text)
		}
		if !strings.HasPrefix(ni.URL, "nar/") || strings.ContainsAny(ni.URL[4:], "/\\") || len(ni.Signatures) != 1 {
			t.Fatalf("narinfo URL %q, %d signatures", ni.URL, len(ni.Signatures))
		}
		// Nix: the fingerprint from what it read, full reference paths, sorted.
		full := make([]string, len(ni.References))
		for i, r := range ni.References {
			full[i] = "/nix/store/" + r
		}
		slices.Sort(full)
		fp := "1;" + ni.StorePath + ";" + ni.NarHash.Format(nixhash.NixBase32, true) + ";" +
			strconv.FormatUint(ni.NarSize, 10) + ";" + strings.Join(full, ",")
		if !pk.Verify(fp, ni.Signatures[0]) {
			t.Fatalf("the signature of the narinfo served for %q does not verify over %q", pi.StorePath, fp)
		}
	}
}

// narString and the helpers below write NARs the way Nix does, independently of the
// code under test.
func narString(b *bytes.Buffer, s string) {
	_ = binary.Write(b, binary.LittleEndian, uint64(len(s)))
	b.WriteString(s)
	b.Write(make([]byte, (8-len(s)%8)%8))
}

func narFile(contents string, executable bool) []byte {
	var b bytes.Buffer
	for _, s := range []string{"nix-archive-1", "(", "type", "regular"} {
		narString(&b, s)
	}
	if executable {
		narString(&b, "executable")
		narString(&b, "")
	}
	narString(&b, "contents")
	narString(&b, contents)
	narString(&b, ")")
	return b.Bytes()
}

func narDir(name, contents string) []byte {
	var b bytes.Buffer
	for _, s := range []string{"nix-archive-1", "(", "type", "directory", "entry", "(", "name", name, "node", "(", "type", "regular", "contents", contents, ")", ")", ")"} {
		narString(&b, s)
	}
	return b.Bytes()
}

func mustSRI(tb testing.TB, s string) []byte {
	h, err := nixhash.ParseAny(s, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return h.Digest()
}

// fileContents is the contents of the one regular file a NAR holds, read by the
// format, with whether it is executable; ok says the NAR is exactly what Nix writes
// for such a file.
func fileContents(nar []byte) (contents []byte, executable, ok bool) {
	for _, executable := range []bool{false, true} {
		head := narFile("", executable)
		head = head[:len(head)-3*8] // up to the contents' length: "", ")" and the length itself
		if len(nar) < len(head)+8 || !bytes.Equal(nar[:len(head)], head) {
			continue
		}
		n := binary.LittleEndian.Uint64(nar[len(head):])
		contents := nar[len(head)+8:]
		contents = contents[:min(n, uint64(len(contents)))]
		return contents, executable, bytes.Equal(narFile(string(contents), executable), nar)
	}
	return nil, false, false
}

// FuzzCACheck runs the streaming content-address check over arbitrary NARs, split into
// writes where the input says, and checks its verdict independently: a recursive
// address is the hash of the NAR itself; a flat or text address the hash of the one
// regular file the NAR holds, the NAR being exactly what Nix writes for that file.
// (Found by it: go-nix's NAR reader, used before, took a NAR cut short after the
// file's length for a whole one, and left a goroutine behind for every NAR that was
// not one regular file.) It must accept exactly those, never hang, and Abort must end it at
// any point.
func FuzzCACheck(f *testing.F) {
	flat := narFile("flat seed\n", false)
	// narFile writes what Nix does: the NAR hash nix path-info gave for flat.txt.
	if got, want := sha256.Sum256(flat), nixhash.MustParseNixBase32("sha256:"+nixbase32.EncodeToString(mustSRI(f, "sha256-0GXz2IhSybmbIaIlEyGjX6GHM0THlHucM9b675lq5HY="))); !bytes.Equal(got[:], want.Digest()) {
		f.Fatal("narFile does not write NARs as Nix does")
	}
	for _, pi := range realInfos(f) {
		f.Add(flat, pi.CA, uint16(13))
	}
	f.Add(narFile("hello fuzz seed\n", true), "fixed:sha256:0p10sg6rl8bjcwnvnz2iaglfh3hjvzqwlfh5dnwkfg03gpq0q71b", uint16(0))
	f.Add(narDir("a.txt", "hello fuzz seed\n"), "fixed:r:sha256:07bccv0wrchzxvpci9hcvd18jzqnnk5l6932rkm77xvc3vkz7fw9", uint16(64))
	f.Add(narDir("a.txt", "hello fuzz seed\n"), "text:sha256:0vmvhwmvv3iz5af5kx9wnf1q77f1vhg1dz5v4zjhybj16jys1qpr", uint16(64))
	f.Add(flat[:50], "fixed:md5:"+strings.Repeat("0", 32), uint16(7))
	f.Fuzz(func(t *testing.T, nar []byte, caStr string, split uint16) {
		ca, err := parseCA(caStr)
		if err != nil {
			return
		}
		// Every goroutine a check starts ends with it: one left behind per upload
		// would add up.
		before := runtime.NumGoroutine()
		defer func() {
			for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > before; {
				if time.Now().After(deadline) {
					t.Fatalf("%d goroutines left behind", runtime.NumGoroutine()-before)
				}
				runtime.Gosched()
			}
		}()
		// What the address says about this NAR: the hash of the NAR, or of the
		// contents of its one regular file. (Executable or not: Nix's builds refuse an
		// executable flat output, but nix-store --add-fixed makes one.)
		hashed, valid := nar, true
		if ca.method != caRecursive {
			hashed, _, valid = fileContents(nar)
		}
		h := ca.hash.Algo().Func().New()
		h.Write(hashed)
		want := h.Sum(nil)
		matches := valid && bytes.Equal(want, ca.hash.Digest())
		// The address of what this NAR holds, when it holds something.
		var own *contentAddress
		if hashed != nil {
			own = &contentAddress{method: ca.method, hash: nixhash.MustNewHash(ca.hash.Algo(), want)}
		}
		narDigest := sha256.Sum256(nar)
		for _, addr := range []*contentAddress{&ca, own} {
			if addr == nil {
				continue
			}
			for _, abortAt := range []int{-1, int(split) % (len(nar) + 1)} {
				check := newCACheck(*addr)
				if split%2 == 1 {
					check.buffer = int(split) % (len(nar) + 1) // parse as it streams
				}
				k := int(split)%64 + 1
				for i := 0; i < len(nar); i += k {
					if i >= abortAt && abortAt >= 0 {
						break
					}
					if n, err := check.Write(nar[i:min(i+k, len(nar))]); err != nil || n != min(k, len(nar)-i) {
						t.Fatalf("Write: %d, %v", n, err)
					}
				}
				if abortAt >= 0 {
					check.Abort()
					continue
				}
				err := check.Finish(narDigest[:])
				should := matches
				if addr == own {
					should = valid
				}
				if (err == nil) != should {
					t.Fatalf("content address %s over a %d-byte NAR: Finish says %v, the NAR %s", addr, len(nar), err,
						map[bool]string{true: "matches", false: "does not"}[should])
				}
				check.Abort() // after Finish: nothing to do, must not block
			}
		}
	})
}

// FuzzUpstreamNarinfo reads arbitrary answers of an upstream cache for a hash part:
// it must never panic (a malformed answer from an upstream must not take the
// coordinator down), and it may say the upstream serves the path only when the
// narinfo is well formed, is that path's, and, with keys, is signed by one of them.
func FuzzUpstreamNarinfo(f *testing.F) {
	sk, pk, err := signature.GenerateKeypair("upstream-1", nil)
	if err != nil {
		f.Fatal(err)
	}
	c := &Cache{key: sk}
	for _, pi := range realInfos(f) {
		pi := pi
		h, _ := checkInfo(pi)
		a, _ := admitPath(storage.UploadScope{Push: true}, pi)
		n := newNarinfo(pi, a, h.Digest(), bytes.Repeat([]byte{1}, 32), 99)
		sig, _ := c.sign(n)
		n.Sigs = []string{sig}
		text, err := Render(n)
		if err != nil {
			f.Fatal(err)
		}
		f.Add([]byte(text), hashPart(pi.StorePath), true)
		f.Add([]byte(text), hashPart(pi.StorePath), false)
	}
	f.Fuzz(func(t *testing.T, body []byte, hp string, withKeys bool) {
		var keys []signature.PublicKey
		if withKeys {
			keys = []signature.PublicKey{pk}
		}
		if !upstreamServes(bytes.NewReader(body), hp, keys) {
			return
		}
		ni, err := narinfo.Parse(bytes.NewReader(body))
		if err != nil {
			t.Fatalf("served, but the narinfo does not parse: %v", err)
		}
		if !storePathRE.MatchString(ni.StorePath) || hashPart(ni.StorePath) != hp {
			t.Fatalf("an answer for %q describing %q counted as serving it", hp, ni.StorePath)
		}
		if err := ni.Check(); err != nil || ni.NarHash == nil || ni.NarHash.Algo() != nixhash.SHA256 || ni.NarSize == 0 {
			t.Fatalf("an answer that is no usable narinfo counted (%v): %+v", err, ni)
		}
		if withKeys {
			refs := append([]string(nil), ni.References...)
			fp := Fingerprint(ni.StorePath, ni.NarHash.Format(nixhash.NixBase32, true), int64(ni.NarSize), refs)
			if !signature.VerifyFirst(fp, ni.Signatures, keys) {
				t.Fatal("an answer without a valid signature counted")
			}
		}
	})
}

// FuzzCacheFileNames checks the hand-written checks of narinfo and NAR file names
// against the regular expressions they replaced: the same names get through.
func FuzzCacheFileNames(f *testing.F) {
	narinfoRE := regexp.MustCompile(`^[0-9a-df-np-sv-z]{32}\.narinfo$`)
	narRE := regexp.MustCompile(`^[0-9a-df-np-sv-z]{52}\.nar(\.zst)?$`)
	for _, s := range []string{"0c5ph2nwh1ambhm9w1h8zzb0h8lffpc1.narinfo", "0c5ph2nwh1ambhm9w1h8zzb0h8lffpce.narinfo",
		"0c5ph2nwh1ambhm9w1h8zzb0h8lffpc.narinfo", "0C5PH2NWH1AMBHM9W1H8ZZB0H8LFFPC1.narinfo", "nix-cache-info",
		strings.Repeat("1", 52) + ".nar", strings.Repeat("z", 52) + ".nar.zst", strings.Repeat("u", 52) + ".nar.zst",
		strings.Repeat("1", 52) + ".nar.xz", strings.Repeat("1", 51) + ".nar", "/" + strings.Repeat("1", 31) + ".narinfo"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		h, ok := narinfoHash(name)
		if ok != narinfoRE.MatchString(name) {
			t.Fatalf("narinfoHash(%q) = %v, the regexp says %v", name, ok, !ok)
		}
		if ok && h+".narinfo" != name {
			t.Fatalf("narinfoHash(%q) = %q", name, h)
		}
		if validNARName(name) != narRE.MatchString(name) {
			t.Fatalf("validNARName(%q) = %v, the regexp says %v", name, !narRE.MatchString(name), narRE.MatchString(name))
		}
	})
}
