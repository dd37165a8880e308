package buildapi_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fc-ci/fc/coordinator/coordtest"
	"github.com/fc-ci/fc/storage/storagetest"
)

// The end-to-end helpers of these tests and benchmarks are the same as buildqueue's
// (a test package cannot import another's).

func TestMain(m *testing.M) { storagetest.Main(m) }

func salt(t *testing.T) string {
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	return strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()) + "-" + hex.EncodeToString(b)
}

func benchSalt(tb testing.TB) string {
	p := make([]byte, 6)
	_, _ = rand.Read(p)
	return strings.NewReplacer("/", "-", "_", "-", " ", "-").Replace(tb.Name()) + "-" + hex.EncodeToString(p)
}

// mkLet is the preamble of every test jobset: mk name attrs makes a /bin/sh
// derivation whose name carries the test's salt, so nothing is already built.
func mkLet(s string) string {
	return fmt.Sprintf(`mk = name: attrs: derivation ({ name = "${name}-%s"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo ${name} > $out" ]; } // attrs);
  sh = script: [ "-c" ("export PATH=/bin:/usr/bin; " + script) ];`, s)
}

type product struct {
	Nr          int    `json:"nr"`
	Name        string `json:"name"`
	Path        string `json:"path"`
	DownloadURL string `json:"download_url"`
}

type build struct {
	ID       int64     `json:"id"`
	Job      string    `json:"job"`
	DrvPath  string    `json:"drv_path"`
	Status   string    `json:"status"`
	Products []product `json:"products"`
}

func finished(b build) bool { return b.Status != "queued" && b.Status != "running" }

// evaluated waits for the jobset's newest evaluation to succeed and returns its id.
func evaluated(t *testing.T, c *coordtest.Coordinator, jobsetID int64, after int64) int64 {
	t.Helper()
	var id int64
	coordtest.Eventually(t, 120*time.Second, "the evaluation succeeds", func() bool {
		var l struct {
			Items []struct {
				ID     int64  `json:"id"`
				Status string `json:"status"`
				Error  string `json:"error"`
			}
		}
		c.Do("GET", fmt.Sprintf("/api/v1/evaluations?jobset_id=%d", jobsetID), "", nil, &l)
		if len(l.Items) == 0 || l.Items[0].ID <= after {
			return false
		}
		if l.Items[0].Status == "failed" {
			t.Fatalf("evaluation failed: %s\n%s", l.Items[0].Error, c.Log)
		}
		id = l.Items[0].ID
		return l.Items[0].Status == "succeeded"
	})
	return id
}

func buildsOf(t *testing.T, c *coordtest.Coordinator, evalID int64) map[string]build {
	t.Helper()
	var l struct{ Items []build }
	if code := c.Do("GET", fmt.Sprintf("/api/v1/builds?evaluation_id=%d&limit=500", evalID), "", nil, &l); code != 200 {
		t.Fatalf("list builds: %d", code)
	}
	out := map[string]build{}
	for _, b := range l.Items {
		out[b.Job] = b
	}
	return out
}

func getBuild(t *testing.T, c *coordtest.Coordinator, id int64) build {
	t.Helper()
	var b build
	if code := c.Do("GET", fmt.Sprintf("/api/v1/builds/%d", id), "", nil, &b); code != 200 {
		t.Fatalf("get build %d: %d", id, code)
	}
	return b
}

// waitBuild waits until build id's status satisfies ok.
func waitBuild(t *testing.T, c *coordtest.Coordinator, id int64, within time.Duration, what string, ok func(build) bool) build {
	t.Helper()
	var b build
	coordtest.Eventually(t, within, fmt.Sprintf("build %d: %s", id, what), func() bool {
		b = getBuild(t, c, id)
		return ok(b)
	})
	return b
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func stderrOf(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return ": " + tail(string(ee.Stderr), 2000)
	}
	return ""
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// pct is the p-th percentile (nearest rank) of ds; 0 for none.
func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	k := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(k, 0), len(s)-1)]
}

func msf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func ms(d time.Duration) string { return strconv.FormatFloat(msf(d), 'f', 1, 64) + "ms" }

// cpuUse is CPU time spent, split by who spent it, and the machine's busy and total
// CPU time (all cores) from /proc/stat.
type cpuUse struct {
	self, children, postgres, busy, total time.Duration
}

// cpuNow reads the CPU time of this process (the coordinator, the in-process agents,
// the benchmark), of its waited-for children (nix, git), of the test's PostgreSQL
// (its postmaster, the backends it reaped and the live ones) and of the machine.
func cpuNow(b *testing.B, c *coordtest.Coordinator) cpuUse {
	b.Helper()
	var u cpuUse
	var ru syscall.Rusage
	tv := func(t syscall.Timeval) time.Duration { return time.Duration(t.Nano()) }
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		u.self = tv(ru.Utime) + tv(ru.Stime)
	}
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err == nil {
		u.children = tv(ru.Utime) + tv(ru.Stime)
	}
	var backend int
	if err := c.DB.Pool().QueryRow(context.Background(), `SELECT pg_backend_pid()`).Scan(&backend); err != nil {
		b.Fatal(err)
	}
	if f := procStat(backend); f != nil {
		postmaster, _ := strconv.Atoi(f[1])
		if pf := procStat(postmaster); pf != nil {
			u.postgres = ticks(pf[11:15]...) // utime, stime, cutime, cstime
		}
		dirs, _ := os.ReadDir("/proc")
		for _, d := range dirs {
			pid, err := strconv.Atoi(d.Name())
			if err != nil {
				continue
			}
			if cf := procStat(pid); cf != nil && cf[1] == strconv.Itoa(postmaster) {
				u.postgres += ticks(cf[11:13]...)
			}
		}
	}
	if raw, err := os.ReadFile("/proc/stat"); err == nil {
		fields := strings.Fields(strings.SplitN(string(raw), "\n", 2)[0])[1:] // user nice system idle iowait irq softirq steal
		for i, f := range fields[:min(len(fields), 8)] {
			v := ticks(f)
			u.total += v
			if i != 3 && i != 4 {
				u.busy += v
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

func (u cpuUse) since(v cpuUse) cpuUse {
	return cpuUse{self: u.self - v.self, children: u.children - v.children, postgres: u.postgres - v.postgres,
		busy: u.busy - v.busy, total: u.total - v.total}
}

func (u cpuUse) String() string {
	pctOf := 0.0
	if u.total > 0 {
		pctOf = 100 * u.busy.Seconds() / u.total.Seconds()
	}
	return fmt.Sprintf("CPU during the FC run: machine %.0f%% busy (%.1f s of %.1f s); this process (coordinator, agents, "+
		"benchmark) %.1f s, its child processes (nix, git) %.1f s, PostgreSQL %.1f s", pctOf, u.busy.Seconds(), u.total.Seconds(),
		u.self.Seconds(), u.children.Seconds(), u.postgres.Seconds())
}
