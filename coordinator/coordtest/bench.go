package coordtest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Figures for the benchmarks that run a whole coordinator.

// Pct is the p-th percentile (nearest rank) of ds; 0 for none.
func Pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	k := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(k, 0), len(s)-1)]
}

// Msf is d in milliseconds, to the microsecond.
func Msf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Ms is d in milliseconds with one decimal, for logs.
func Ms(d time.Duration) string { return strconv.FormatFloat(Msf(d), 'f', 1, 64) + "ms" }

// StderrOf is ": " and the last 2000 bytes of a failed command's stderr, or "".
func StderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return ": " + Tail(string(ee.Stderr), 2000)
	}
	return ""
}

// Tail is the last n bytes of s.
func Tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// CPUUse is CPU time spent, split by who spent it, and the machine's busy and total
// CPU time (all cores) from /proc/stat.
type CPUUse struct {
	Self, Children, Postgres, Busy, Total time.Duration
}

// CPUNow reads the CPU time of this process (the coordinator, the in-process agents,
// the benchmark), of its waited-for children (nix, git), of the test's PostgreSQL
// (its postmaster, the backends it reaped and the live ones) and of the machine.
func CPUNow(tb testing.TB, c *Coordinator) CPUUse {
	tb.Helper()
	var u CPUUse
	var ru syscall.Rusage
	tv := func(t syscall.Timeval) time.Duration { return time.Duration(t.Nano()) }
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		u.Self = tv(ru.Utime) + tv(ru.Stime)
	}
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err == nil {
		u.Children = tv(ru.Utime) + tv(ru.Stime)
	}
	var backend int
	if err := c.DB.Pool().QueryRow(context.Background(), `SELECT pg_backend_pid()`).Scan(&backend); err != nil {
		tb.Fatal(err)
	}
	if f := procStat(backend); f != nil {
		postmaster, _ := strconv.Atoi(f[1])
		if pf := procStat(postmaster); pf != nil {
			u.Postgres = ticks(pf[11:15]...) // utime, stime, cutime, cstime
		}
		dirs, _ := os.ReadDir("/proc")
		for _, d := range dirs {
			pid, err := strconv.Atoi(d.Name())
			if err != nil {
				continue
			}
			if cf := procStat(pid); cf != nil && cf[1] == strconv.Itoa(postmaster) {
				u.Postgres += ticks(cf[11:13]...)
			}
		}
	}
	if raw, err := os.ReadFile("/proc/stat"); err == nil {
		fields := strings.Fields(strings.SplitN(string(raw), "\n", 2)[0])[1:] // user nice system idle iowait irq softirq steal
		for i, f := range fields[:min(len(fields), 8)] {
			v := ticks(f)
			u.Total += v
			if i != 3 && i != 4 {
				u.Busy += v
			}
		}
	}
	return u
}

// procStat is /proc/PID/stat's fields after the command: state, ppid, ...
func procStat(pid int) []string {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := strings.LastIndexByte(string(raw), ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(raw[i+1:]))
}

// ticks sums clock ticks (USER_HZ, 100 on Linux) as a duration.
func ticks(fields ...string) time.Duration {
	var t time.Duration
	for _, f := range fields {
		n, _ := strconv.ParseInt(f, 10, 64)
		t += time.Duration(n) * 10 * time.Millisecond
	}
	return t
}

// Since is the CPU time spent between v and u.
func (u CPUUse) Since(v CPUUse) CPUUse {
	return CPUUse{Self: u.Self - v.Self, Children: u.Children - v.Children, Postgres: u.Postgres - v.Postgres,
		Busy: u.Busy - v.Busy, Total: u.Total - v.Total}
}

// String is the summary line a benchmark logs.
func (u CPUUse) String() string {
	pctOf := 0.0
	if u.Total > 0 {
		pctOf = 100 * u.Busy.Seconds() / u.Total.Seconds()
	}
	return fmt.Sprintf("CPU during the FC run: machine %.0f%% busy (%.1f s of %.1f s); this process (coordinator, agents, "+
		"benchmark) %.1f s, its child processes (nix, git) %.1f s, PostgreSQL %.1f s", pctOf, u.Busy.Seconds(), u.Total.Seconds(),
		u.Self.Seconds(), u.Children.Seconds(), u.Postgres.Seconds())
}

// ProcessCPU is a live process's user + system CPU time; false if it cannot be read.
func ProcessCPU(pid int) (time.Duration, bool) {
	f := procStat(pid)
	if f == nil {
		return 0, false
	}
	return ticks(f[11:13]...), true
}

// PctMs is Ms of Pct: the p-th percentile of ds in milliseconds, for logs.
func PctMs(ds []time.Duration, p float64) string { return Ms(Pct(ds, p)) }
