// The operations: options, builds, path infos.

package nixworker

import (
	"fmt"
	"strconv"
	"time"

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
		uint64(max(o.BuildCores, 0)), true)
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
		r, err := c.readBuildResult()
		if err != nil {
			return nil, c.fail(fmt.Errorf("read the build results: %w", err))
		}
		out = append(out, r)
	}
	return out, nil
}

func (c *Conn) readBuildResult() (BuildResult, error) {
	var r BuildResult
	var err error
	if r.Path, err = wire.ReadString(c.r, maxString); err != nil {
		return r, err
	}
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
