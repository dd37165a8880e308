// The operations: options, builds, path infos.

package nixworker

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nix-community/go-nix/pkg/derivation"
	"github.com/nix-community/go-nix/pkg/wire"
)

// Options are what wopSetOptions sets for the connection's next operations; they
// stay in force on the daemon until set again.
type Options struct {
	KeepGoing bool
	// Verbosity is Nix's level for messages sent (0 = errors only); activities and
	// their results (build log lines) are sent whatever it is.
	Verbosity  uint64
	MaxJobs    int
	MaxSilent  time.Duration // 0: none
	BuildCores int           // 0: all
	// NoSubstitutes stops Nix from asking substituters for what it is to build
	// (useSubstitutes false): for a build whose inputs are all here already.
	NoSubstitutes bool
	// Overrides are more settings by name, in order (a trusted connection may set
	// any, e.g. substituters, timeout, system-features).
	Overrides [][2]string
}

// SetOptions sends wopSetOptions.
func (c *Conn) SetOptions(o Options, log Logger) error {
	overrides := make([]string, 0, 2*len(o.Overrides))
	for _, kv := range o.Overrides {
		overrides = append(overrides, kv[0], kv[1])
	}
	err := c.send(opSetOptions,
		false, o.KeepGoing, false, o.Verbosity, uint64(max(o.MaxJobs, 1)),
		uint64(o.MaxSilent/time.Second),
		true,                 // obsolete useBuildHook
		uint64(0),            // verboseBuild: lvlError, so builds' lines are results
		uint64(0), uint64(0), // obsolete log type, print build trace
		uint64(max(o.BuildCores, 0)), !o.NoSubstitutes)
	if err != nil {
		return err
	}
	// The overrides are a count of pairs, not of strings.
	if err := wire.WriteUint64(c.w, uint64(len(o.Overrides))); err != nil {
		return c.fail(err)
	}
	for _, s := range overrides {
		if err := wire.WriteString(c.w, s); err != nil {
			return c.fail(err)
		}
	}
	if err := c.w.Flush(); err != nil {
		return c.fail(err)
	}
	return c.processStderr(log)
}

// BuildStatus is Nix's BuildResult::Status.
type BuildStatus uint64

// The statuses of Nix 2.8's build-result.hh.
const (
	Built BuildStatus = iota
	Substituted
	AlreadyValid
	PermanentFailure
	InputRejected
	OutputRejected
	TransientFailure
	CachedFailure
	TimedOut
	MiscFailure
	DependencyFailed
	LogLimitExceeded
	NotDeterministic
	ResolvesToAlreadyValid
	NoSubstituters
)

var statusNames = [...]string{"Built", "Substituted", "AlreadyValid", "PermanentFailure", "InputRejected",
	"OutputRejected", "TransientFailure", "CachedFailure", "TimedOut", "MiscFailure", "DependencyFailed",
	"LogLimitExceeded", "NotDeterministic", "ResolvesToAlreadyValid", "NoSubstituters"}

func (s BuildStatus) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return "BuildStatus(" + strconv.FormatUint(uint64(s), 10) + ")"
}

// Success says whether the outputs are valid after a build with this status.
func (s BuildStatus) Success() bool {
	return s == Built || s == Substituted || s == AlreadyValid || s == ResolvesToAlreadyValid
}

// BuildResult is one derived path's result.
type BuildResult struct {
	Path               string // as sent: drv!out1,out2
	Status             BuildStatus
	ErrorMsg           string
	TimesBuilt         uint64
	IsNonDeterministic bool
	StartTime          time.Time // zero: not built
	StopTime           time.Time
}

// BuildPaths realises derived paths ("/nix/store/…drv!out,dev") with
// wopBuildPathsWithResults, one result per path in the order given. A failed build
// is a result, not an error.
func (c *Conn) BuildPaths(paths []string, log Logger) ([]BuildResult, error) {
	if err := c.send(opBuildPathsWithResults, paths, uint64(0)); err != nil {
		return nil, err
	}
	if err := c.processStderr(log); err != nil {
		return nil, err
	}
	n, err := c.count()
	if err != nil {
		return nil, c.fail(err)
	}
	out := make([]BuildResult, 0, n)
	for range n {
		// Each result here is keyed by its derived path.
		path, err := wire.ReadString(c.r, maxString)
		var r BuildResult
		if err == nil {
			r, err = c.readBuildResult()
		}
		if err != nil {
			return nil, c.fail(fmt.Errorf("read the build results: %w", err))
		}
		r.Path = path
		out = append(out, r)
	}
	return out, nil
}

// BasicDerivation is what wopBuildDerivation sends: a derivation whose inputs are
// store paths (InputSrcs holds the inputs' outputs too), so the daemon needs no
// .drv file.
type BasicDerivation struct {
	Outputs   []DerivationOutput // sorted by name
	InputSrcs []string           // sorted
	Platform  string
	Builder   string
	Args      []string
	Env       [][2]string // sorted by key
}

// DerivationOutput is one output as in the .drv's ATerm: HashAlgo and Hash are
// empty for an input-addressed output.
type DerivationOutput struct{ Name, Path, HashAlgo, Hash string }

// BasicFromDerivation makes d's BasicDerivation: inputOutputs are the output paths
// of d's input derivations that its build uses (the daemon sees no inputDrvs).
//
// go-nix's parser leaves the ATerm's escapes (\n, \", …) in every string but the env
// values (its encoder writes them back as they are, so DrvPath still matches): they
// are undone here, or the builder would get "\n" where the .drv has a newline.
func BasicFromDerivation(d *derivation.Derivation, inputOutputs []string) BasicDerivation {
	b := BasicDerivation{Platform: unescapeATerm(d.Platform), Builder: unescapeATerm(d.Builder)}
	for _, a := range d.Arguments {
		b.Args = append(b.Args, unescapeATerm(a))
	}
	for _, name := range slices.Sorted(maps.Keys(d.Outputs)) {
		o := d.Outputs[name]
		b.Outputs = append(b.Outputs, DerivationOutput{Name: name, Path: o.Path, HashAlgo: o.HashAlgorithm, Hash: o.Hash})
	}
	b.InputSrcs = slices.Compact(slices.Sorted(slices.Values(slices.Concat(d.InputSources, inputOutputs))))
	for _, k := range slices.Sorted(maps.Keys(d.Env)) {
		b.Env = append(b.Env, [2]string{unescapeATerm(k), d.Env[k]})
	}
	return b
}

// atermUnescaper undoes the escapes Nix writes into a .drv's strings (a Replacer is
// safe for concurrent use and never changes).
var atermUnescaper = strings.NewReplacer(`\\`, `\`, `\"`, `"`, `\n`, "\n", `\r`, "\r", `\t`, "\t")

func unescapeATerm(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	return atermUnescaper.Replace(s)
}

// BuildDerivation builds drvPath from drv with wopBuildDerivation (buildMode
// normal). A failed build is a result, not an error. The result's Path is
// drvPath+"!"+the output names joined by ",". The daemon builds what it is sent:
// the inputs must be valid already, and only a trusted connection may build an
// input-addressed derivation.
func (c *Conn) BuildDerivation(drvPath string, drv BasicDerivation, log Logger) (BuildResult, error) {
	// Outputs and env are counts of tuples, not of strings: sent flat after their count.
	args := []any{drvPath, uint64(len(drv.Outputs))}
	names := make([]string, 0, len(drv.Outputs))
	for _, o := range drv.Outputs {
		args = append(args, o.Name, o.Path, o.HashAlgo, o.Hash)
		names = append(names, o.Name)
	}
	args = append(args, drv.InputSrcs, drv.Platform, drv.Builder, drv.Args, uint64(len(drv.Env)))
	for _, kv := range drv.Env {
		args = append(args, kv[0], kv[1])
	}
	args = append(args, uint64(0)) // bmNormal
	if err := c.send(opBuildDerivation, args...); err != nil {
		return BuildResult{}, err
	}
	if err := c.processStderr(log); err != nil {
		return BuildResult{}, err
	}
	r, err := c.readBuildResult()
	if err != nil {
		return BuildResult{}, c.fail(fmt.Errorf("read the build result of %s: %w", drvPath, err))
	}
	r.Path = drvPath + "!" + strings.Join(names, ",")
	return r, nil
}

// readBuildResult reads a BuildResult as both build operations send it, without
// the path wopBuildPathsWithResults puts before it.
func (c *Conn) readBuildResult() (BuildResult, error) {
	var r BuildResult
	status, err := wire.ReadUint64(c.r)
	if err != nil {
		return r, err
	}
	r.Status = BuildStatus(status)
	if r.ErrorMsg, err = wire.ReadString(c.r, maxString); err != nil {
		return r, err
	}
	if r.TimesBuilt, err = wire.ReadUint64(c.r); err != nil {
		return r, err
	}
	if r.IsNonDeterministic, err = wire.ReadBool(c.r); err != nil {
		return r, err
	}
	var times [2]uint64
	for i := range times {
		if times[i], err = wire.ReadUint64(c.r); err != nil {
			return r, err
		}
	}
	if times[0] != 0 {
		r.StartTime, r.StopTime = time.Unix(int64(times[0]), 0), time.Unix(int64(times[1]), 0)
	}
	// builtOutputs: DrvOutput → Realisation (JSON), unused: outputs are known.
	n, err := c.count()
	if err != nil {
		return r, err
	}
	for range 2 * n {
		if _, err := wire.ReadString(c.r, maxString); err != nil {
			return r, err
		}
	}
	return r, nil
}

// PathInfo is a valid path's entry in Nix's database.
type PathInfo struct {
	Path       string
	Deriver    string
	NarHash    string // base16, sha256 (as the protocol sends it)
	References []string
	NarSize    uint64
	CA         string
}

// QueryPathInfo reads one path's info; nil when the path is not valid.
func (c *Conn) QueryPathInfo(path string) (*PathInfo, error) {
	if err := c.send(opQueryPathInfo, path); err != nil {
		return nil, err
	}
	if err := c.processStderr(nil); err != nil {
		return nil, err
	}
	valid, err := wire.ReadBool(c.r)
	if err != nil {
		return nil, c.fail(err)
	}
	if !valid {
		return nil, nil
	}
	info, err := c.readPathInfo(path)
	if err != nil {
		return nil, c.fail(fmt.Errorf("read the path info of %s: %w", path, err))
	}
	return info, nil
}

func (c *Conn) readPathInfo(path string) (*PathInfo, error) {
	info := &PathInfo{Path: path}
	var err error
	if info.Deriver, err = wire.ReadString(c.r, maxString); err != nil {
		return nil, err
	}
	if info.NarHash, err = wire.ReadString(c.r, maxString); err != nil {
		return nil, err
	}
	if info.References, err = c.readStrings(); err != nil {
		return nil, err
	}
	if _, err = wire.ReadUint64(c.r); err != nil { // registration time
		return nil, err
	}
	if info.NarSize, err = wire.ReadUint64(c.r); err != nil {
		return nil, err
	}
	if _, err = wire.ReadBool(c.r); err != nil { // ultimate
		return nil, err
	}
	if _, err = c.readStrings(); err != nil { // signatures
		return nil, err
	}
	if info.CA, err = wire.ReadString(c.r, maxString); err != nil {
		return nil, err
	}
	return info, nil
}

// QueryValidPaths returns which of paths are valid, without substituting.
func (c *Conn) QueryValidPaths(paths []string) (map[string]bool, error) {
	if err := c.send(opQueryValidPaths, paths, false); err != nil {
		return nil, err
	}
	if err := c.processStderr(nil); err != nil {
		return nil, err
	}
	valid, err := c.readStrings()
	if err != nil {
		return nil, c.fail(err)
	}
	out := make(map[string]bool, len(valid))
	for _, p := range valid {
		out[p] = true
	}
	return out, nil
}
